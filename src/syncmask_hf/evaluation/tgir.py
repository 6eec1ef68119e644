"""Text-guided image retrieval (FashionIQ-style) recall@K."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._utils import as_float_tensor, as_id_array, check_ks


def tgir_recall(
    query_embeds: Any,
    gallery_embeds: Any,
    target_indices: Any,
    candidate_indices: Any | None = None,
    ks: Sequence[int] = (10, 50),
    *,
    categories: Any | None = None,
    gallery_categories: Any | None = None,
    normalize: bool = True,
) -> dict[str, float]:
    """Recall@K of composed (reference image + modification text) queries against an image gallery.

    Each query's reference ("candidate" in FashionIQ's files) image is removed from its own gallery, as FashionIQ
    evaluations do, so returning the unchanged reference is never rewarded. When a query's target *is* its
    reference (a few FashionIQ triplets), the item stays in the gallery (it is the answer); such queries are
    counted in ``num_target_is_reference``. Ranks: gallery items scoring strictly above the target (ties go to the
    query).

    Args:
        query_embeds: (Q, dim) composed query embeddings.
        gallery_embeds: (N, dim) gallery image embeddings.
        target_indices: (Q,) gallery row of each query's target.
        candidate_indices: optional (Q,) gallery row of each query's reference image (excluded); -1 = none.
        ks: cut-offs (FashionIQ: 10 and 50).
        categories: optional (Q,) category per query (e.g. dress / shirt / toptee): recall is also reported per
            category, and ``avg_R@k`` is the mean over categories (FashionIQ's "average" column).
        gallery_categories: optional (N,) category per gallery image: each query then ranks only the images of its
            own category (FashionIQ's per-category galleries).
        normalize: L2-normalise both sides first (cosine similarity).

    Returns:
        ``R@k`` over all queries; with ``categories`` also ``<category>_R@k`` and ``avg_R@k``; plus ``num_queries``
        and ``num_target_is_reference``.
    """
    q = as_float_tensor(query_embeds, "query_embeds")
    g = as_float_tensor(gallery_embeds, "gallery_embeds")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}.")
    tgt = torch.as_tensor(np.asarray(as_id_array(target_indices, "target_indices", len(q)), dtype=np.int64))
    if (tgt < 0).any() or (tgt >= len(g)).any():
        raise ValueError(f"target_indices must be gallery rows in [0, {len(g)}); got values outside that range.")
    if candidate_indices is not None:
        ref = torch.as_tensor(np.asarray(as_id_array(candidate_indices, "candidate_indices", len(q)), dtype=np.int64))
        if (ref >= len(g)).any() or (ref < -1).any():
            raise ValueError(f"candidate_indices must be gallery rows in [0, {len(g)}) or -1 for none.")
    else:
        ref = torch.full((len(q),), -1, dtype=torch.long)
    if normalize:
        q, g = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(g, dim=-1)

    if gallery_categories is not None:
        if categories is None:
            raise ValueError("gallery_categories needs categories (one per query) to restrict each query's gallery.")
        qcat = as_id_array(categories, "categories", len(q)).astype(object)
        gcat = as_id_array(gallery_categories, "gallery_categories", len(g)).astype(object)
        if (gcat[tgt.numpy()] != qcat).any():
            bad = np.flatnonzero(gcat[tgt.numpy()] != qcat)[:5].tolist()
            raise ValueError(f"queries {bad} have a target outside their own category's gallery.")
        gallery_size = min(int((gcat == c).sum()) for c in set(qcat.tolist()))
    else:
        gallery_size = len(g)
    n_excluded = int(((ref >= 0) & (ref != tgt)).any().item())
    ks = check_ks(ks, gallery_size - n_excluded, "gallery (minus the excluded reference)")

    ranks = torch.empty(len(q), dtype=torch.long)
    chunk = max(1, (1 << 25) // len(g))
    for s in range(0, len(q), chunk):
        sim = q[s : s + chunk] @ g.T
        rows = torch.arange(sim.shape[0])
        t, r = tgt[s : s + chunk], ref[s : s + chunk]
        excl = (r >= 0) & (r != t)
        sim[rows[excl], r[excl]] = float("-inf")
        if gallery_categories is not None:
            mask = torch.from_numpy(gcat[None, :] != qcat[s : s + chunk, None])
            sim[mask] = float("-inf")
        target_score = sim[rows, t]
        ranks[s : s + chunk] = (sim > target_score[:, None]).sum(dim=1)

    results: dict[str, float] = {f"R@{k}": float((ranks < k).double().mean() * 100) for k in ks}
    if categories is not None:
        cats = as_id_array(categories, "categories", len(q))
        names = list(dict.fromkeys(cats.tolist()))
        for c in names:
            sel = torch.from_numpy(np.asarray(cats == c))
            for k in ks:
                results[f"{c}_R@{k}"] = float((ranks[sel] < k).double().mean() * 100)
        for k in ks:
            results[f"avg_R@{k}"] = float(np.mean([results[f"{c}_R@{k}"] for c in names]))
    results["num_queries"] = len(q)
    results["num_target_is_reference"] = int(((ref >= 0) & (ref == tgt)).sum())
    return results
