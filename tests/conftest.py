"""Shared fixtures. Tests that read the real catalogue data in ../shared/data use the `shared_data` fixture and
carry `@pytest.mark.shared_data`; they skip with a reason when the folder is absent (e.g. on a user's machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$SYNCMASK_SHARED_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("SYNCMASK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real catalogue data not found at {root} (set SYNCMASK_SHARED_DATA to its folder)")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
