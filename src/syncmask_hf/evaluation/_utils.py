"""Small input-checking helpers shared by the evaluation modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def as_float_tensor(x: Any, name: str) -> torch.Tensor:
    """Embeddings as a 2-D float32 CPU tensor (numpy arrays and lists accepted)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.detach().to("cpu", torch.float32)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: an evaluation needs at least one item.")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} contains NaN/inf values (rows {bad} ...); check the model outputs.")
    return x


def as_id_array(ids: Any, name: str, length: int | None = None) -> np.ndarray:
    """Identifiers (product ids, sub-categories, labels: ints or strings) as a 1-D numpy array.

    Strings stay strings (object dtype); only equality between ids is ever used.
    """
    if isinstance(ids, torch.Tensor):
        arr = ids.detach().cpu().numpy()
    elif isinstance(ids, np.ndarray):
        arr = ids
    else:
        ids = list(ids)
        if ids and all(isinstance(i, (int, np.integer)) for i in ids):
            arr = np.asarray(ids, dtype=np.int64)
        else:
            arr = np.asarray(ids, dtype=object)
    arr = arr.reshape(-1) if arr.ndim > 1 and arr.size == len(arr) else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one id per item), got shape {arr.shape}.")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries but there are {length} items; pass one id per row.")
    return arr


def check_ks(ks: Sequence[int], gallery_size: int, what: str = "gallery") -> tuple[int, ...]:
    """Sorted, validated cut-offs: positive ints no larger than the gallery."""
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks:
        raise ValueError("ks is empty: pass at least one cut-off, e.g. ks=(1, 5, 10).")
    if ks[0] < 1:
        raise ValueError(f"recall cut-offs must be >= 1, got {ks}.")
    if ks[-1] > gallery_size:
        raise ValueError(
            f"k={ks[-1]} is larger than the {what} ({gallery_size} items): recall@{ks[-1]} would be trivially 100%. "
            f"Use smaller ks or a larger {what}."
        )
    return ks


def encode_ids(*arrays: np.ndarray) -> list[np.ndarray]:
    """Map ids (any hashable dtype) of several arrays to one shared int64 code space, so equality is cheap."""
    joint = np.concatenate([np.asarray(a, dtype=object) for a in arrays]) if arrays else np.array([])
    codes: dict[Any, int] = {}
    flat = np.fromiter((codes.setdefault(v, len(codes)) for v in joint.tolist()), dtype=np.int64, count=len(joint))
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + len(a)])
        start += len(a)
    return out
