"""Evaluation results as JSON and as a Markdown table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy / torch scalars to Python numbers, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def format_results_markdown(results: Mapping[str, Any], digits: int = 2, title: str | None = None) -> str:
    """Render results as a Markdown table.

    * A flat dict (``{"i2t_R@1": 61.2, ...}``) gives a two-column ``metric | value`` table.
    * A dict of dicts (``{"full": {...}, "sample100": {...}}``, e.g. :class:`RetrievalEvaluator` output) gives one
      row per top-level key and one column per metric (union in first-seen order; blank where a row lacks it);
      deeper levels are flattened into ``a/b`` column names. Top-level scalars go in a ``metric | value`` table
      below it.

    Floats are printed with ``digits`` decimals, ints as they are.
    """
    plain = _plain(dict(results))
    sections = {k: _flatten(v) for k, v in plain.items() if isinstance(v, Mapping)}
    scalars = {k: v for k, v in plain.items() if not isinstance(v, Mapping)}
    lines: list[str] = []
    if title:
        lines += [f"### {title}", ""]
    if sections:
        columns = list(dict.fromkeys(c for row in sections.values() for c in row))
        lines.append("| | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for name, row in sections.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c), digits) for c in columns) + " |")
    if scalars:
        if sections:
            lines.append("")
        lines.append("| metric | value |")
        lines.append("|---|---:|")
        for k, v in scalars.items():
            lines.append(f"| {k} | {_fmt(v, digits)} |")
    return "\n".join(lines) + "\n"


def save_results(results: Mapping[str, Any], path: str | Path, digits: int = 2, title: str | None = None) -> Path:
    """Write ``results`` to ``path`` as JSON (``.json`` added if missing) and a Markdown table beside it (``.md``).

    Returns the JSON path. Parent folders are created.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(dict(results)), indent=2, allow_nan=False) + "\n")
    path.with_suffix(".md").write_text(format_results_markdown(results, digits=digits, title=title))
    return path
