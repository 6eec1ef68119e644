"""Named model sizes shipped with the package: one folder with a `config.json` per preset (package data, so an
installed wheel resolves `--config syncmask-tiny` outside the repository).

`list_presets()` names them; `preset_path(name)` is the folder, which `XConfig.from_pretrained` reads. The tiny
presets are for tests, the small ones learn something in a few CPU minutes, the base ones are the papers' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent


def list_presets(model_type: str | None = None) -> list[str]:
    """Names of the shipped presets, optionally only those of one `model_type` ("syncmask", "e2", "fashionfae")."""
    names = []
    for folder in sorted(PRESETS_DIR.iterdir()):
        config = folder / "config.json"
        if config.is_file() and (model_type is None or json.loads(config.read_text())["model_type"] == model_type):
            names.append(folder.name)
    return names


def preset_path(name: str) -> Path:
    """The folder of preset `name` (it holds `config.json`)."""
    folder = PRESETS_DIR / name
    if name not in list_presets():
        raise KeyError(f"no preset named {name!r}; the presets are {list_presets()}")
    return folder


__all__ = ["PRESETS_DIR", "list_presets", "preset_path"]
