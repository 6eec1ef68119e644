"""Embed a held-out set with any dual encoder that has CLIP's interface and run the retrieval protocols."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .retrieval import retrieval_recall, sample100_recall


def mean_pairwise_cosine(embeds: torch.Tensor, groups: np.ndarray | None = None, max_items: int = 4096) -> float:
    """Mean cosine similarity between the rows of `embeds` over all pairs of distinct rows (of distinct `groups`,
    e.g. products, when given): the spread of an embedding space. Near 1.0 every item embeds alike (a collapsed
    model, whatever its recall says); a trained space sits well below. At most `max_items` rows (evenly spaced) are
    used, so the cost stays bounded on large galleries."""
    x = torch.nn.functional.normalize(embeds.float(), dim=-1)
    rows = np.arange(x.shape[0])
    if groups is not None:  # one row per group: several images of one product are not "pairs" of the spread
        _, first = np.unique(np.asarray(groups).astype(str), return_index=True)
        rows = np.sort(first)
    if len(rows) > max_items:
        rows = rows[np.linspace(0, len(rows) - 1, max_items).astype(int)]
    x = x[torch.as_tensor(rows)]
    n = x.shape[0]
    if n < 2:
        return float("nan")
    total = x.sum(dim=0)
    # sum over i != j of <x_i, x_j> = |sum x|^2 - sum |x_i|^2 (= n for unit rows)
    return float(((total @ total) - n) / (n * (n - 1)))


def embedding_spread(embeddings: RetrievalEmbeddings) -> dict[str, float | None]:
    """Mean pairwise cosine of the image and of the text embeddings across distinct products (None for fewer than
    two products)."""
    out = {}
    for name, embeds in (("image", embeddings.image_embeds), ("text", embeddings.text_embeds)):
        value = mean_pairwise_cosine(embeds, embeddings.product_ids)
        out[f"{name}_mean_cosine"] = None if value != value else round(value, 4)
    return out


def _column(batch: Mapping, key: str, n: int) -> list | None:
    if key not in batch or batch[key] is None:
        return None
    value = batch[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    else:
        value = list(value)
    if len(value) != n:
        raise ValueError(f"batch[{key!r}] has {len(value)} entries for a batch of {n}; pass one per row.")
    return value


@dataclass
class RetrievalEmbeddings:
    """Embeddings of a held-out set, one image and one text per row (pairs), with their ids."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    product_ids: np.ndarray
    text_ids: np.ndarray | None = None
    subcategories: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.product_ids)


class RetrievalEvaluator:
    """Runs the full-gallery and sample-100 retrieval protocols on a model with CLIP's interface.

    The model needs ``get_image_features(pixel_values=...)`` and ``get_text_features(input_ids=..., attention_mask=...)``
    returning (batch, dim) joint-space embeddings (a tensor, or a ModelOutput with ``pooler_output``). Batches are
    dicts with ``pixel_values``, ``input_ids``, ``attention_mask``, ``product_ids`` and optionally ``text_ids``
    (used to de-duplicate texts) and ``subcategory`` (strings) or ``subcategory_labels`` (ints) for the sample-100
    negatives.

    Args:
        model: the dual encoder (put in eval mode while embedding, its mode restored afterwards).
        device: where batches go (default: the model's parameters' device).
        show_progress: tqdm bar while embedding.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, show_progress: bool = True):
        for name in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, name, None)):
                raise TypeError(f"{type(model).__name__} has no {name}(); the evaluator needs CLIP's interface.")
        self.model = model
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.show_progress = show_progress

    @torch.no_grad()
    def extract(self, batches: Iterable[Mapping[str, Any]], desc: str = "Embedding") -> RetrievalEmbeddings:
        """Embed every batch (images and texts), under ``torch.no_grad()``; returns CPU float32 embeddings."""
        images, texts, pids, tids, subs = [], [], [], [], []
        has_tids = has_subs = None
        was_training = self.model.training
        self.model.eval()
        try:
            total = len(batches) if hasattr(batches, "__len__") else None
            for i, batch in enumerate(tqdm(batches, desc=desc, total=total, disable=not self.show_progress)):
                for key in ("pixel_values", "input_ids", "attention_mask", "product_ids"):
                    if key not in batch:
                        raise KeyError(
                            f"batch {i} has no {key!r}; batches need pixel_values, input_ids, "
                            "attention_mask and product_ids."
                        )
                n = batch["pixel_values"].shape[0]
                if batch["input_ids"].shape[0] != n:
                    raise ValueError(f"batch {i}: {n} images but {batch['input_ids'].shape[0]} texts; pass pairs.")
                img = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device))
                txt = self.model.get_text_features(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                images.append(img.pooler_output.float().cpu())
                texts.append(txt.pooler_output.float().cpu())
                pids.extend(_column(batch, "product_ids", n))
                t = _column(batch, "text_ids", n)
                s = _column(batch, "subcategory", n)
                if s is None:
                    s = _column(batch, "subcategory_labels", n)
                if has_tids is None:
                    has_tids, has_subs = t is not None, s is not None
                if (t is not None) != has_tids or (s is not None) != has_subs:
                    raise ValueError(f"batch {i}: text_ids / subcategory present in some batches but not others.")
                tids.extend(t or [])
                subs.extend(s or [])
        finally:
            self.model.train(was_training)
        if not images:
            raise ValueError("no batches: the evaluation set is empty.")
        return RetrievalEmbeddings(
            image_embeds=torch.cat(images),
            text_embeds=torch.cat(texts),
            product_ids=np.asarray(pids, dtype=object if isinstance(pids[0], str) else np.int64),
            text_ids=np.asarray(tids) if has_tids else None,
            subcategories=np.asarray(subs, dtype=object) if has_subs else None,
        )

    def evaluate(
        self,
        batches: Iterable[Mapping[str, Any]] | None = None,
        *,
        embeddings: RetrievalEmbeddings | None = None,
        protocols: Sequence[str] = ("full", "sample100"),
        ks: Sequence[int] = (1, 5, 10),
        full_kwargs: Mapping[str, Any] | None = None,
        sample100_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Embed ``batches`` (or reuse ``embeddings``) and run the protocols.

        Args:
            protocols: any of ``"full"`` (:func:`retrieval_recall`) and ``"sample100"`` (:func:`sample100_recall`).
            full_kwargs, sample100_kwargs: extra keyword arguments of those functions (e.g. ``rerank_t2i``,
                ``num_queries``, ``seed``).

        Returns:
            ``{"full": {...}, "sample100": {...}, "spread": {...}}``, ready for :func:`format_results_markdown` /
            :func:`save_results`; ``spread`` is :func:`embedding_spread` (mean pairwise cosines: near 1 = collapsed).
        """
        unknown = set(protocols) - {"full", "sample100"}
        if unknown:
            raise ValueError(f"unknown protocols {sorted(unknown)}; choose from 'full' and 'sample100'.")
        if embeddings is None:
            if batches is None:
                raise ValueError("pass batches to embed, or precomputed embeddings=.")
            embeddings = self.extract(batches)
        e = embeddings
        common = dict(text_ids=e.text_ids)
        results: dict[str, dict[str, float]] = {}
        if "full" in protocols:
            results["full"] = retrieval_recall(
                e.image_embeds, e.text_embeds, e.product_ids, e.product_ids, ks, **common, **(full_kwargs or {})
            )
        if "sample100" in protocols:
            results["sample100"] = sample100_recall(
                e.image_embeds,
                e.text_embeds,
                e.product_ids,
                e.product_ids,
                ks,
                image_subcategories=e.subcategories,
                **common,
                **(sample100_kwargs or {}),
            )
        results["spread"] = embedding_spread(e)
        return results
