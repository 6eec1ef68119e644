"""Stable ids shared by the data layer and the collator.

Python's ``hash`` is salted per process, so it cannot be used for ids that must agree across DataLoader workers,
machines and runs. ``stable_id`` hashes with blake2b and keeps 63 bits so the value fits a non-negative int64
(``product_ids`` / ``text_ids`` in the input contract).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["stable_id", "normalize_text", "text_id"]

_WS = re.compile(r"\s+")


def stable_id(s: str) -> int:
    """63-bit non-negative integer hash of ``s`` (blake2b, utf-8), identical in every process and Python version."""
    if not isinstance(s, str):
        s = str(s)
    digest = hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def normalize_text(s: str) -> str:
    """Lower-case, trimmed, whitespace-collapsed text: two texts that differ only in case/spacing are the same text."""
    return _WS.sub(" ", (s or "").strip().lower())


def text_id(s: str) -> int:
    """``stable_id`` of the normalised text (the contract's ``text_ids``: equal means identical text)."""
    return stable_id(normalize_text(s))
