"""Cross-modal retrieval recall@K: the full-gallery and the sample-100 (Kaleido / FashionBERT) protocols.

Counting rules (the same in every function here, so results are comparable):

* **Relevance is by product.** A gallery item is relevant to a query when both carry the same product id. A text
  query is correct at k if *any* image of its product is in the top k; an image query is correct at k if *a* text of
  its product is in the top k.
* **Rank of a query** = number of non-relevant gallery items scoring strictly higher than the best-scoring relevant
  item (ties go to the query). Recall@k = share of queries whose rank is < k, in percent.
* **Texts are de-duplicated** before anything is counted. Catalogues pair one product text with several images
  (FashionGen: one text per product for every pose), so the text column repeats. Repeated texts of one product are
  collapsed to one gallery item / one query: either by ``text_ids`` (equal id within a product = same text) or,
  when ``text_ids`` is not given, by embedding equality within a product (``max |a - b| <= dedup_atol``). So a
  negative product never takes several top-k slots with copies of one text, and a product with five images is not
  queried five times with the same text. Images are never de-duplicated: each image is a query (I2T) and a gallery
  item (T2I).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ._utils import as_float_tensor, as_id_array, check_ks, encode_ids

RerankFn = Callable[[int, torch.Tensor], Any]
"""``rerank(query_idx, candidate_idx) -> scores``: re-scores the candidates (e.g. with an ITM head). Indices are rows
of the *original* inputs (image rows / text rows as passed in, before text de-duplication); return one score per
candidate (higher = better), as a tensor, array or list."""

DEFAULT_FAISS_THRESHOLD = 50_000


# ----------------------------------------------------------------------------------------------------------------
# Rank arithmetic shared by all protocols
# ----------------------------------------------------------------------------------------------------------------
def ranks_from_candidates(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Rank of each query from a candidate list: non-relevant candidates scoring strictly above the best relevant one.

    ``scores``, ``relevant``: (Q, C). A query with no relevant candidate in its list gets rank C (a miss at any
    k <= C).
    """
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype)
    best_pos = torch.where(relevant, scores, neg_inf).max(dim=1).values
    rank = ((~relevant) & (scores > best_pos[:, None])).sum(dim=1)
    rank[~relevant.any(dim=1)] = scores.shape[1]
    return rank


def _groups(codes: np.ndarray) -> dict[int, np.ndarray]:
    """code -> indices of the rows carrying it (one sort, not one scan per code)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {int(codes[g[0]]): g for g in np.split(order, bounds)} if len(codes) else {}


def recall_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k in percent from per-query ranks (0 = the relevant item is first)."""
    ranks = torch.as_tensor(ranks)
    return {k: float((ranks < k).double().mean().item() * 100.0) for k in ks}


def recall_at_k(
    scores: Any,
    query_ids: Any,
    gallery_ids: Any,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K from a precomputed similarity matrix, with several relevant items per query.

    Args:
        scores: (num_queries, num_gallery) similarities (higher = better), e.g. ITM scores.
        query_ids: (num_queries,) id per query (e.g. product ids); gallery items with an equal id are relevant.
        gallery_ids: (num_gallery,) id per gallery item.
        ks: cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ...}`` in percent. Ranks follow the module's rule (ties go to the query).
    """
    scores = as_float_tensor(scores, "scores")
    q = as_id_array(query_ids, "query_ids", scores.shape[0])
    g = as_id_array(gallery_ids, "gallery_ids", scores.shape[1])
    ks = check_ks(ks, scores.shape[1])
    qc, gc = encode_ids(q, g)
    relevant = torch.from_numpy(qc[:, None] == gc[None, :])
    missing = (~relevant.any(dim=1)).nonzero().flatten()
    if len(missing):
        raise ValueError(
            f"{len(missing)} queries (e.g. rows {missing[:5].tolist()}) have no relevant gallery item; "
            "every query id must occur among gallery_ids."
        )
    ranks = ranks_from_candidates(scores, relevant)
    return {f"R@{k}": v for k, v in recall_from_ranks(ranks, ks).items()}


# ----------------------------------------------------------------------------------------------------------------
# Text de-duplication
# ----------------------------------------------------------------------------------------------------------------
def deduplicate_texts(
    text_embeds: Any,
    text_product_ids: Any,
    text_ids: Any | None = None,
    dedup_atol: float = 1e-5,
) -> np.ndarray:
    """Indices (sorted, first occurrence kept) of the distinct texts, see the module docstring for the rule.

    With ``text_ids``: texts with equal (product id, text id) are one text. Without: texts of one product whose
    embeddings differ by at most ``dedup_atol`` everywhere are one text (repeated identical texts embed identically).
    """
    emb = as_float_tensor(text_embeds, "text_embeds")
    pids = as_id_array(text_product_ids, "text_product_ids", emb.shape[0])
    if text_ids is not None:
        tids = as_id_array(text_ids, "text_ids", emb.shape[0])
        pc, tc = encode_ids(pids, tids)
        _, first = np.unique(np.stack([pc, tc], axis=1), axis=0, return_index=True)
        return np.sort(first)
    (pc,) = encode_ids(pids)
    order = np.argsort(pc, kind="stable")
    bounds = np.flatnonzero(np.diff(pc[order])) + 1
    keep: list[int] = []
    for group in np.split(order, bounds):
        if len(group) == 1:
            keep.append(int(group[0]))
            continue
        reps: list[int] = []
        for idx in group.tolist():
            if not reps or not bool(((emb[reps] - emb[idx]).abs().amax(dim=1) <= dedup_atol).any()):
                reps.append(idx)
        keep.extend(reps)
    return np.sort(np.asarray(keep, dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Full-gallery protocol
# ----------------------------------------------------------------------------------------------------------------
def _l2(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _topk_dense(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int | None):
    """Exact top-k by inner product, in query chunks so memory stays at chunk x gallery floats."""
    if chunk_size is None:
        chunk_size = max(1, min(len(queries), (1 << 25) // max(1, len(gallery))))
    scores, ids = [], []
    for start in range(0, len(queries), chunk_size):
        sim = queries[start : start + chunk_size] @ gallery.T
        s, i = torch.topk(sim, k, dim=1)
        scores.append(s)
        ids.append(i)
    return torch.cat(scores), torch.cat(ids)


def _topk_faiss(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    from .faiss_index import EmbeddingIndex

    index = EmbeddingIndex(gallery.shape[1], index_type="flat")
    index.add(gallery)
    scores, ids = index.search(queries, k)
    return torch.from_numpy(scores), torch.from_numpy(ids)


def _resolve_faiss(use_faiss: bool | Literal["auto"], gallery_size: int, threshold: int) -> bool:
    if use_faiss == "auto":
        if gallery_size < threshold:
            return False
        try:
            import faiss  # noqa: F401
        except ImportError:
            return False
        return True
    if use_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            raise ImportError("use_faiss=True needs faiss: pip install faiss-cpu (or faiss-gpu).") from err
    return bool(use_faiss)


def _apply_rerank(
    rerank: RerankFn, query_rows: np.ndarray, gallery_rows: np.ndarray, cand_ids: torch.Tensor
) -> torch.Tensor:
    """Replace candidate scores (Q, C) with ``rerank`` scores; query/candidate indices mapped to original rows."""
    out = torch.empty(cand_ids.shape, dtype=torch.float32)
    for qi in range(cand_ids.shape[0]):
        cands = torch.from_numpy(gallery_rows[cand_ids[qi].numpy()])
        s = torch.as_tensor(rerank(int(query_rows[qi]), cands), dtype=torch.float32).reshape(-1).cpu()
        if s.numel() != cands.numel():
            raise ValueError(
                f"rerank returned {s.numel()} scores for {cands.numel()} candidates (query {int(query_rows[qi])}); "
                "it must return one score per candidate."
            )
        out[qi] = s
    return out


def _direction_ranks(
    queries: torch.Tensor,
    query_codes: np.ndarray,
    gallery: torch.Tensor,
    gallery_codes: np.ndarray,
    k: int,
    use_faiss: bool,
    chunk_size: int | None,
    rerank: RerankFn | None,
    query_rows: np.ndarray,
    gallery_rows: np.ndarray,
) -> torch.Tensor:
    if use_faiss:
        scores, ids = _topk_faiss(queries, gallery, k)
    else:
        scores, ids = _topk_dense(queries, gallery, k, chunk_size)
    if rerank is not None:
        scores = _apply_rerank(rerank, query_rows, gallery_rows, ids)
    relevant = torch.from_numpy(gallery_codes[ids.numpy()] == query_codes[:, None])
    ranks = ranks_from_candidates(scores, relevant)
    if rerank is None:
        # A relevant item tied with the k-th score may have been cut from the top-k list; ties go to the query, so
        # score its best relevant item directly: rank = list items strictly above it (all such items are listed).
        missing = (~relevant.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            by_code = _groups(gallery_codes)
            for qi in missing:
                best = (gallery[torch.from_numpy(by_code[int(query_codes[qi])])] @ queries[qi]).max()
                if best >= scores[qi, -1]:
                    ranks[qi] = int((scores[qi] > best).sum())
    return ranks


def _check_missing(query_codes, gallery_codes, name, on_missing_positive) -> np.ndarray:
    has_pos = np.isin(query_codes, gallery_codes)
    if not has_pos.all():
        n = int((~has_pos).sum())
        if on_missing_positive == "error":
            raise ValueError(
                f"{n} {name} queries (e.g. rows {np.flatnonzero(~has_pos)[:5].tolist()}) have no item of their "
                "product in the other modality, so they can never be retrieved. Pass texts and images of the same "
                "products, or on_missing_positive='skip' to leave them out (they are counted in the results)."
            )
        if on_missing_positive != "skip":
            raise ValueError(f"on_missing_positive must be 'error' or 'skip', got {on_missing_positive!r}.")
    return has_pos


def retrieval_recall(
    image_embeds: Any,
    text_embeds: Any,
    image_product_ids: Any,
    text_product_ids: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    text_ids: Any | None = None,
    normalize: bool = True,
    use_faiss: bool | Literal["auto"] = "auto",
    faiss_threshold: int = DEFAULT_FAISS_THRESHOLD,
    rerank_i2t: RerankFn | None = None,
    rerank_t2i: RerankFn | None = None,
    rerank_k: int | None = None,
    on_missing_positive: Literal["error", "skip"] = "error",
    dedup_atol: float = 1e-5,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Full-gallery cross-modal retrieval: I2T and T2I recall@K and SumR, several images per product handled.

    Image queries (every image row) rank the de-duplicated texts; text queries (every distinct text) rank all
    images. Relevance, ranks and de-duplication follow the module docstring.

    Args:
        image_embeds: (num_images, dim) image embeddings.
        text_embeds: (num_texts, dim) text embeddings (may repeat one text per image, as pair datasets do).
        image_product_ids, text_product_ids: product id per row (ints or strings); equal = same product.
        ks: recall cut-offs; each must be <= both gallery sizes.
        text_ids: optional id per text row (e.g. the collator's ``text_ids`` hash) used to de-duplicate texts;
            without it, identical embeddings within a product are merged.
        normalize: L2-normalise both sides first (cosine similarity); set False if the embeddings already are
            normalised or raw inner product is wanted.
        use_faiss: exact FAISS ``IndexFlatIP`` search instead of dense torch top-k; ``"auto"`` uses FAISS when the
            larger gallery has at least ``faiss_threshold`` items and faiss is installed. Both give the same result.
        rerank_i2t, rerank_t2i: optional ``rerank(query_idx, candidate_idx) -> scores`` callbacks (e.g. ITM): the
            top ``rerank_k`` candidates by embedding similarity are re-scored and re-ordered; items below stay below.
        rerank_k: candidates re-scored per query (default ``max(32, max(ks))`` clipped to the gallery).
        on_missing_positive: ``"error"`` (default) if a query's product is absent from the other modality, or
            ``"skip"`` to leave such queries out (counted as ``*_skipped_queries``).
        dedup_atol: tolerance of embedding-equality de-duplication.
        chunk_size: queries per dense similarity block (default: about 32M floats per block).

    Returns:
        Flat dict: ``i2t_R@k``, ``t2i_R@k`` (percent), ``sumR`` (sum of all of them), and counts
        ``num_image_queries``, ``num_text_queries``, ``num_text_gallery``, ``num_image_gallery``,
        ``num_duplicate_texts``, ``i2t_skipped_queries``, ``t2i_skipped_queries``, ``backend``.
    """
    img = as_float_tensor(image_embeds, "image_embeds")
    txt = as_float_tensor(text_embeds, "text_embeds")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_embeds dim {img.shape[1]} != text_embeds dim {txt.shape[1]}; use the joint space.")
    img_pids = as_id_array(image_product_ids, "image_product_ids", img.shape[0])
    txt_pids = as_id_array(text_product_ids, "text_product_ids", txt.shape[0])
    keep = deduplicate_texts(txt, txt_pids, text_ids, dedup_atol)
    if normalize:
        img, txt = _l2(img), _l2(txt)
    txt_u = txt[keep]
    img_codes, txt_codes = encode_ids(img_pids, txt_pids[keep])
    ks = check_ks(ks, min(len(keep), len(img)), "smaller gallery (distinct texts or images)")
    if rerank_k is None:
        rerank_k = max(32, ks[-1])
    if (rerank_i2t is not None or rerank_t2i is not None) and rerank_k < ks[-1]:
        raise ValueError(f"rerank_k={rerank_k} must be >= max(ks)={ks[-1]}.")
    faiss_on = _resolve_faiss(use_faiss, max(len(img), len(keep)), faiss_threshold)

    results: dict[str, float] = {}
    image_rows = np.arange(len(img))
    for name, q, qc, qrows, g, gc, grows, rr in (
        ("i2t", img, img_codes, image_rows, txt_u, txt_codes, keep, rerank_i2t),
        ("t2i", txt_u, txt_codes, keep, img, img_codes, image_rows, rerank_t2i),
    ):
        has_pos = _check_missing(qc, gc, name, on_missing_positive)
        k = min(rerank_k, len(g)) if rr is not None else ks[-1]
        ranks = _direction_ranks(q[has_pos], qc[has_pos], g, gc, k, faiss_on, chunk_size, rr, qrows[has_pos], grows)
        if len(ranks) == 0:
            raise ValueError(f"no {name} query has a relevant item; nothing to evaluate.")
        for kk, v in recall_from_ranks(ranks, ks).items():
            results[f"{name}_R@{kk}"] = v
        results[f"{name}_skipped_queries"] = int((~has_pos).sum())
    results["sumR"] = sum(v for key, v in results.items() if "_R@" in key)
    results.update(
        num_image_queries=len(img) - results["i2t_skipped_queries"],
        num_text_queries=len(keep) - results["t2i_skipped_queries"],
        num_text_gallery=len(keep),
        num_image_gallery=len(img),
        num_duplicate_texts=len(txt) - len(keep),
        backend="faiss" if faiss_on else "dense",
    )
    return results


# ----------------------------------------------------------------------------------------------------------------
# Sample-100 protocol
# ----------------------------------------------------------------------------------------------------------------
def _subcategories_for(
    own: Any | None, other: Any | None, own_pids: np.ndarray, other_pids: np.ndarray, own_name: str, other_name: str
) -> np.ndarray | None:
    """Sub-category per row; when only the other modality has them, inherit through the product id."""
    if own is not None:
        return as_id_array(own, own_name, len(own_pids))
    if other is None:
        return None
    other = as_id_array(other, other_name, len(other_pids))
    by_pid = dict(zip(other_pids.tolist(), other.tolist()))
    return np.asarray([by_pid.get(p, None) for p in own_pids.tolist()], dtype=object)


class _DirectionSampler:
    """Draws sample-100 candidate lists for one direction (queries of one modality, gallery of the other)."""

    def __init__(self, q_emb, q_codes, q_sub, q_rows, g_emb, g_codes, g_sub, g_rows):
        self.q_emb, self.q_codes, self.q_sub, self.q_rows = q_emb, q_codes, q_sub, q_rows
        self.g_emb, self.g_codes, self.g_rows = g_emb, g_codes, g_rows
        self.pos_by_code = _groups(g_codes)
        self.by_sub = _groups(g_sub)
        self.valid = np.flatnonzero(np.isin(q_codes, g_codes))

    def ranks(self, rng, num_queries, num_negatives, rerank, rerank_k) -> tuple[torch.Tensor, int]:
        if len(self.valid) == 0:
            raise ValueError("no query has an item of its product in the other modality; nothing to evaluate.")
        chosen = rng.choice(self.valid, size=min(num_queries, len(self.valid)), replace=False)
        fallbacks = 0
        cand_idx = np.empty((len(chosen), num_negatives + 1), dtype=np.int64)
        empty = np.empty(0, dtype=np.int64)
        for row, qi in enumerate(chosen.tolist()):
            code = int(self.q_codes[qi])
            cand_idx[row, 0] = rng.choice(self.pos_by_code[code])
            group = self.by_sub.get(int(self.q_sub[qi]), empty)
            eligible = group[self.g_codes[group] != code]
            if len(eligible) >= num_negatives:
                cand_idx[row, 1:] = rng.choice(eligible, size=num_negatives, replace=False)
            else:
                fallbacks += 1
                others = np.flatnonzero(self.g_codes != code)
                others = others[~np.isin(others, eligible)]
                extra = rng.choice(others, size=num_negatives - len(eligible), replace=False)
                cand_idx[row, 1:] = np.concatenate([eligible, extra])
        cands = torch.from_numpy(cand_idx)
        scores = torch.einsum("qd,qcd->qc", self.q_emb[torch.from_numpy(chosen)], self.g_emb[cands])
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        relevant[:, 0] = True
        if rerank is not None:
            k = num_negatives + 1 if rerank_k is None else min(rerank_k, num_negatives + 1)
            _, top_j = torch.topk(scores, k, dim=1)
            scores = _apply_rerank(rerank, self.q_rows[chosen], self.g_rows, torch.gather(cands, 1, top_j))
            relevant = top_j == 0
        return ranks_from_candidates(scores, relevant), fallbacks


def sample100_recall(
    image_embeds: Any,
    text_embeds: Any,
    image_product_ids: Any,
    text_product_ids: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    image_subcategories: Any | None = None,
    text_subcategories: Any | None = None,
    text_ids: Any | None = None,
    num_queries: int = 1000,
    num_negatives: int = 100,
    num_draws: int = 5,
    seed: int = 0,
    normalize: bool = True,
    rerank_i2t: RerankFn | None = None,
    rerank_t2i: RerankFn | None = None,
    rerank_k: int | None = None,
    on_missing_positive: Literal["error", "skip"] = "error",
    dedup_atol: float = 1e-5,
) -> dict[str, float]:
    """The sample-100 protocol of Kaleido-BERT / FashionBERT, with several images per product.

    Per draw and direction: ``num_queries`` random queries (without replacement; all when fewer exist); each is
    ranked against 1 positive (a random gallery item of its product: a random image for T2I, the product's text, or
    a random one of its distinct texts, for I2T) and ``num_negatives`` negatives drawn without replacement among
    gallery items of *other* products in the query's sub-category. When the sub-category has too few such items, all
    of them are used and the rest is drawn from other products of any sub-category; such queries are counted
    (``*_fallback_queries``, summed over draws). Without sub-categories, negatives come from any other product
    (``subcategory_constrained`` = 0). Recall@k is averaged over ``num_draws`` seeded draws (``*_std``: spread).

    Our choices where the papers are silent: negatives are sampled per gallery *item* (two poses of one negative
    product may both be drawn); the text gallery is de-duplicated exactly as in :func:`retrieval_recall`; ties go to
    the query. Sub-categories may be given for one modality only: the other inherits them through the product id.

    Args: as :func:`retrieval_recall`, plus ``image_subcategories`` / ``text_subcategories`` (one label per row),
        ``num_queries``, ``num_negatives``, ``num_draws``, ``seed``. With ``rerank_*`` the top ``rerank_k`` of the
        ``num_negatives + 1`` candidates (default: all) are re-scored.

    Returns:
        Flat dict: ``i2t_R@k``, ``t2i_R@k`` (means over draws, percent), ``i2t_R@k_std``..., ``sumR``,
        ``num_queries_per_draw_i2t``/``_t2i``, ``num_draws``, ``num_negatives``, ``i2t_fallback_queries``,
        ``t2i_fallback_queries``, ``subcategory_constrained``.
    """
    img = as_float_tensor(image_embeds, "image_embeds")
    txt = as_float_tensor(text_embeds, "text_embeds")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_embeds dim {img.shape[1]} != text_embeds dim {txt.shape[1]}; use the joint space.")
    if num_queries < 1 or num_draws < 1 or num_negatives < 1:
        raise ValueError("num_queries, num_negatives and num_draws must all be >= 1.")
    img_pids = as_id_array(image_product_ids, "image_product_ids", img.shape[0])
    txt_pids = as_id_array(text_product_ids, "text_product_ids", txt.shape[0])
    names = ("image_subcategories", "text_subcategories")
    img_sub = _subcategories_for(image_subcategories, text_subcategories, img_pids, txt_pids, *names)
    txt_sub = _subcategories_for(text_subcategories, image_subcategories, txt_pids, img_pids, *names[::-1])
    constrained = img_sub is not None
    if constrained:
        img_sub, txt_sub = encode_ids(img_sub, txt_sub)
    else:
        img_sub = np.zeros(len(img_pids), dtype=np.int64)
        txt_sub = np.zeros(len(txt_pids), dtype=np.int64)
    keep = deduplicate_texts(txt, txt_pids, text_ids, dedup_atol)
    if normalize:
        img, txt = _l2(img), _l2(txt)
    txt_u, txt_sub_u = txt[keep], txt_sub[keep]
    img_codes, txt_codes = encode_ids(img_pids, txt_pids[keep])
    ks = check_ks(ks, num_negatives + 1, f"candidate list (1 positive + {num_negatives} negatives)")
    if (rerank_i2t is not None or rerank_t2i is not None) and rerank_k is not None and rerank_k < ks[-1]:
        raise ValueError(f"rerank_k={rerank_k} must be >= max(ks)={ks[-1]}.")
    for name, gc, n_gallery in (("text", txt_codes, len(keep)), ("image", img_codes, len(img))):
        per_product = np.bincount(gc) if len(gc) else np.zeros(1, dtype=np.int64)
        if n_gallery - per_product.max() < num_negatives:
            raise ValueError(
                f"the {name} gallery has too few items of other products for {num_negatives} negatives "
                f"(at least {n_gallery - per_product.max()} available for some query); lower num_negatives."
            )
    image_rows = np.arange(len(img))
    has_pos_i = _check_missing(img_codes, txt_codes, "i2t", on_missing_positive)
    has_pos_t = _check_missing(txt_codes, img_codes, "t2i", on_missing_positive)

    samplers = {
        "i2t": _DirectionSampler(img, img_codes, img_sub, image_rows, txt_u, txt_codes, txt_sub_u, keep),
        "t2i": _DirectionSampler(txt_u, txt_codes, txt_sub_u, keep, img, img_codes, img_sub, image_rows),
    }
    reranks = {"i2t": rerank_i2t, "t2i": rerank_t2i}
    rng = np.random.default_rng(seed)
    per_draw: dict[str, list[float]] = {}
    fallbacks = {"i2t": 0, "t2i": 0}
    n_queries = {}
    for _ in range(num_draws):
        for name, sampler in samplers.items():
            ranks, fb = sampler.ranks(rng, num_queries, num_negatives, reranks[name], rerank_k)
            fallbacks[name] += fb
            n_queries[name] = len(ranks)
            for k, v in recall_from_ranks(ranks, ks).items():
                per_draw.setdefault(f"{name}_R@{k}", []).append(v)
    results: dict[str, float] = {}
    for key, vals in per_draw.items():
        results[key] = float(np.mean(vals))
    for key, vals in per_draw.items():
        results[f"{key}_std"] = float(np.std(vals))
    results["sumR"] = sum(results[key] for key in per_draw)
    results.update(
        num_queries_per_draw_i2t=n_queries["i2t"],
        num_queries_per_draw_t2i=n_queries["t2i"],
        num_draws=num_draws,
        num_negatives=num_negatives,
        i2t_fallback_queries=fallbacks["i2t"],
        t2i_fallback_queries=fallbacks["t2i"],
        i2t_skipped_queries=int((~has_pos_i).sum()),
        t2i_skipped_queries=int((~has_pos_t).sum()),
        subcategory_constrained=int(constrained),
    )
    return results
