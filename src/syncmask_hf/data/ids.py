"""Stable ids shared by the data layer and the collator.

Python's ``hash`` is salted per process, so it cannot be used for ids that must agree across DataLoader workers,
machines and runs. The one definition lives in `processing_fashion` (which must stay importable alone as Hub remote
code); the data layer uses that same function, so `product_ids` / `text_ids` agree everywhere.
"""

from __future__ import annotations

from ..models.processing_fashion import normalize_text, stable_id

__all__ = ["stable_id", "normalize_text", "text_id"]


def text_id(s: str) -> int:
    """``stable_id`` of the normalised text (the contract's ``text_ids``: equal means identical text)."""
    return stable_id(normalize_text(s))
