"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def save_tiny_model(model_name: str, folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of `model_name` with its processor, as pretrain.py would."""
    from syncmask_hf.training import save_random_model

    return save_random_model(model_name, folder, seed=seed)
