"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def save_tiny_model(model_name: str, folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of `model_name` with its processor, as pretrain.py would."""
    from syncmask_hf.training import build_processor, model_classes, resolve_config_path

    torch.manual_seed(seed)
    config_cls, model_cls, _ = model_classes(model_name)
    config = config_cls.from_json_file(str(resolve_config_path(model_name)))
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    build_processor(model_name, config).save_pretrained(folder)
    return Path(folder)
