"""Product-disjoint train / validation / test splits (no product in two splits, so no image of a test product was
seen in training)."""

from __future__ import annotations

import random

import datasets

from .ids import stable_id

__all__ = ["product_disjoint_split"]


def _count(size: float | int, n: int, name: str) -> int:
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{name} as a fraction must be in [0, 1), got {size}")
        return round(size * n)
    if size < 0 or size > n:
        raise ValueError(f"{name} must be between 0 and the number of products ({n}), got {size}")
    return int(size)


def product_disjoint_split(
    ds, test_size: float | int = 0.1, val_size: float | int = 0.1, seed: int = 0, product_column: str = "product_id"
):
    """Split a catalogue by product into ``train`` / ``validation`` / ``test``.

    Sizes are fractions (float) or counts (int) **of products**, not rows: every image of a product lands in the
    same split. For a `datasets.Dataset` the products are shuffled with ``seed`` and cut exactly; for an
    `IterableDataset` (catalogues that do not fit in memory) each product goes to a split by a stable hash of
    ``(seed, product_id)`` (so the sizes are fractions and only approximately met), with no pass over the data.
    Returns a `DatasetDict` / `IterableDatasetDict`.
    """
    if isinstance(ds, datasets.IterableDataset):
        if not (isinstance(test_size, float) and isinstance(val_size, float)) or test_size + val_size >= 1.0:
            raise ValueError("streaming splits take fractions test_size + val_size < 1.0 (counts need a full pass)")
        scale = 1 << 63

        def which(pid):
            u = stable_id(f"{seed}\x00{pid}") / scale
            return "test" if u < test_size else "validation" if u < test_size + val_size else "train"

        return datasets.IterableDatasetDict(
            {
                name: ds.filter(lambda pid, name=name: which(pid) == name, input_columns=[product_column])
                for name in ("train", "validation", "test")
            }
        )
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset or IterableDataset, got {type(ds).__name__}")
    if product_column not in ds.column_names:
        raise ValueError(f"no {product_column!r} column (columns: {ds.column_names})")
    pids = ds[product_column]
    products = sorted(set(pids))
    random.Random(seed).shuffle(products)
    n_test = _count(test_size, len(products), "test_size")
    n_val = _count(val_size, len(products), "val_size")
    if n_test + n_val >= len(products):
        raise ValueError(f"test ({n_test}) + validation ({n_val}) products leave none of {len(products)} for training")
    split_of = {p: "test" for p in products[:n_test]}
    split_of.update({p: "validation" for p in products[n_test : n_test + n_val]})
    idx = {"train": [], "validation": [], "test": []}
    for i, pid in enumerate(pids):
        idx[split_of.get(pid, "train")].append(i)
    return datasets.DatasetDict({name: ds.select(rows) for name, rows in idx.items()})
