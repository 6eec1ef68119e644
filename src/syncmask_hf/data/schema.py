"""The one catalogue schema every loader returns, and the report/error types for bad input."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import datasets

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_FEATURES",
    "STRING_COLUMNS",
    "BadItemError",
    "LoadReport",
    "empty_row",
]

logger = logging.getLogger("syncmask_hf.data")

#: String attribute columns, in schema order ("" when the source does not know the value).
STRING_COLUMNS: tuple[str, ...] = (
    "text",
    "product_id",
    "item_id",
    "category",
    "subcategory",
    "brand",
    "season",
    "color",
    "composition",
    "gender",
)
#: Every catalogue column, in order.
CATALOG_COLUMNS: tuple[str, ...] = ("image",) + STRING_COLUMNS
#: ``datasets`` features of a catalogue: ``image`` decodes to a PIL image, everything else is a string.
CATALOG_FEATURES = datasets.Features(
    {"image": datasets.Image(), **{name: datasets.Value("string") for name in STRING_COLUMNS}}
)


def empty_row() -> dict:
    """A row with every string column set to "" (loaders fill what their source knows)."""
    return {name: "" for name in STRING_COLUMNS}


class BadItemError(ValueError):
    """A catalogue item (row, image, HDF5 key) that cannot be loaded. The message names the item and the fix."""


@dataclass
class LoadReport:
    """What a loader read and what it skipped (with ``skip_bad=True``), so skips are counted, never silent.

    ``skipped`` holds ``(item, reason)`` pairs; ``counts`` the number of skips per reason kind.
    """

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def skip(self, item: str, kind: str, reason: str) -> None:
        self.skipped.append((item, reason))
        self.counts[kind] += 1

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"
        text = (
            f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, skipped {self.num_skipped} ({kinds})"
        )
        if self.skipped:
            text += "; first: " + "; ".join(f"{item} ({reason})" for item, reason in self.skipped[:3])
        return text

    def log(self) -> None:
        """Warn when anything was skipped (at the end of a load), else log at info level."""
        (logger.warning if self.skipped else logger.info)(self.summary())
