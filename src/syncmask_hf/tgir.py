"""Text-guided image retrieval (TGIR), in one place: the query models, the triplet sets, training data, evaluation
and its metric (`tgir_recall`, also listed in `syncmask_hf.evaluation`).

Used by `examples/finetune_tgir.py` and `examples/evaluate.py`; never imported by modeling files.

Two query models:
* SyncMask has a real composition head, `SyncMaskForTextGuidedImageRetrieval` (the modification text cross-attends
  to the reference image in the fusion layers).
* Dual encoders (E2, FashionFAE, or SyncMask's ITC space alone) get `ComposedQueryModel`: the query is
  ``normalize(img + txt + combiner([img; txt]))`` over the frozen-interface embeddings (CLIP's
  `get_image_features` / `get_text_features`), where the combiner is a small MLP whose last layer starts at zero --
  so an untrained combiner is exactly the classic "image + text" composition baseline, and training learns a
  correction on top (in the spirit of Baldrati et al.'s CLIP4Cir combiner, much smaller).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .evaluation._utils import as_float_tensor, as_id_array, check_ks

COMBINER_WEIGHTS = "tgir_combiner.safetensors"
COMBINER_CONFIG = "tgir_combiner.json"


class ComposedQueryModel(nn.Module):
    """A dual encoder + a learned combiner for TGIR (see the module docstring). ``forward`` mirrors
    `SyncMaskForTextGuidedImageRetrieval.forward`: contrastive loss of the composed queries against the batch's
    target images, multi-positive when ``target_ids`` mark equal targets."""

    def __init__(self, model: nn.Module, embed_dim: int | None = None, hidden_dim: int | None = None):
        super().__init__()
        self.model = model
        if embed_dim is None:
            embed_dim = int(getattr(model.config, "embed_dim", 0) or getattr(model.config, "projection_dim", 0))
        if not embed_dim:
            raise ValueError("ComposedQueryModel needs embed_dim (the joint-space size) for this model's config")
        hidden_dim = hidden_dim or 2 * embed_dim
        self.embed_dim, self.hidden_dim = embed_dim, hidden_dim
        self.combiner = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim)
        )
        nn.init.zeros_(self.combiner[2].weight)
        nn.init.zeros_(self.combiner[2].bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def get_target_features(self, pixel_values):
        """Normalised embeddings of the gallery images the queries are matched against."""
        return F.normalize(self.model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)

    def get_query_features(self, pixel_values, input_ids, attention_mask=None):
        image = self.get_target_features(pixel_values)
        text = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        text = F.normalize(text, dim=-1)
        return F.normalize(image + text + self.combiner(torch.cat([image, text], dim=-1)), dim=-1)

    def forward(
        self, pixel_values, input_ids, attention_mask=None, target_pixel_values=None, target_ids=None, **kwargs
    ):
        from .models.losses import contrastive_loss, multi_positive_targets

        query = self.get_query_features(pixel_values, input_ids, attention_mask)
        target = self.get_target_features(target_pixel_values)
        logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * query @ target.t()
        ids = target_ids if target_ids is not None else torch.arange(query.shape[0], device=query.device)
        targets = multi_positive_targets(ids, ids)
        return _LossOutput(loss=contrastive_loss(logits, logits.t(), targets, targets))

    def save_combiner(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("model.")}
        save_file(state, str(Path(folder, COMBINER_WEIGHTS)))
        Path(folder, COMBINER_CONFIG).write_text(
            json.dumps({"embed_dim": self.embed_dim, "hidden_dim": self.hidden_dim}, indent=1)
        )

    @classmethod
    def from_folder(cls, model: nn.Module, folder: str | os.PathLike) -> ComposedQueryModel:
        """Wrap `model`; load the combiner saved beside it when there is one (else the image + text baseline)."""
        from safetensors.torch import load_file

        cfg_path = Path(folder, COMBINER_CONFIG)
        if not cfg_path.is_file():
            return cls(model)
        wrapper = cls(model, **json.loads(cfg_path.read_text()))
        missing, unexpected = wrapper.load_state_dict(load_file(str(Path(folder, COMBINER_WEIGHTS))), strict=False)
        if unexpected or [k for k in missing if not k.startswith("model.")]:
            raise ValueError(
                f"{folder}/{COMBINER_WEIGHTS} does not match the combiner ({missing[:3]}, {unexpected[:3]})"
            )
        return wrapper


@dataclass
class _LossOutput:
    loss: torch.Tensor


class TGIRAdapter:
    """One interface over both query models: ``query(pixel_values, input_ids, attention_mask)`` and
    ``image(pixel_values)``, L2-normalised, in the space the targets are matched in."""

    def __init__(self, model: nn.Module):
        if not hasattr(model, "get_query_features"):
            raise TypeError(f"{type(model).__name__} has no get_query_features: wrap it in ComposedQueryModel")
        self.model = model

    def query(self, pixel_values, input_ids, attention_mask):
        return F.normalize(self.model.get_query_features(pixel_values, input_ids, attention_mask), dim=-1)

    def image(self, pixel_values):
        return self.model.get_target_features(pixel_values)


def load_tgir_model(folder: str | os.PathLike, head: str = "auto", trust_remote_code: bool = False):
    """(TGIR model, processor, head name) for a saved folder: ``"fusion"`` (SyncMask's TGIR head; auto for
    SyncMask) or ``"combiner"`` (`ComposedQueryModel` over `AutoModel`; auto for every other model; a combiner saved
    in the folder by finetune_tgir.py is loaded). The folder's own code runs only with ``trust_remote_code``."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from .specs import load_pretrained, models_with_head, task_head

    config = load_pretrained(AutoConfig, folder, trust_remote_code=trust_remote_code)

    fusion_head = task_head(config, "tgir")
    if head == "auto":
        head = "fusion" if fusion_head and not Path(folder, COMBINER_CONFIG).is_file() else "combiner"
    if head not in ("fusion", "combiner"):
        raise ValueError(f"TGIR head must be 'auto', 'fusion' or 'combiner', got {head!r}")
    processor = load_pretrained(AutoProcessor, folder, trust_remote_code=trust_remote_code)
    if head == "fusion":
        if fusion_head is None:
            raise ValueError(
                f"the fusion TGIR head exists for {', '.join(models_with_head('tgir'))} only, not "
                f"{config.model_type}; use 'combiner'"
            )
        return fusion_head.from_pretrained(str(folder)), processor, head
    base = load_pretrained(AutoModel, folder, trust_remote_code=trust_remote_code)
    return ComposedQueryModel.from_folder(base, folder), processor, head


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class TGIRSet:
    """Triplets over one image gallery: query i = (gallery[reference[i]], texts[i]) -> gallery[target[i]].

    ``gallery`` holds images in any form `load_image` takes; ``gallery_keys`` identify them (equal key = same
    image, used for multi-positive targets in training); ``categories`` / ``gallery_categories`` (optional)
    restrict each query to its category's gallery (FashionIQ).
    """

    gallery: list
    gallery_keys: list[str]
    reference: list[int]
    texts: list[str]
    target: list[int]
    categories: list[str] | None = None
    gallery_categories: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def colour_variant_set(
    catalog, group_by: str | Sequence[str] = "product_id", max_per_group: int | None = None, seed: int = 0
) -> TGIRSet:
    """Colour-variant triplets (`syncmask_hf.data.colour_variant_triplets`) of a catalogue split; the gallery is
    every image of the split, so distractors include the other colours of the same garment."""
    from .data import colour_variant_triplets

    triplets = colour_variant_triplets(catalog, group_by=group_by, max_per_group=max_per_group, seed=seed)
    return TGIRSet(
        gallery=list(catalog["image"]),
        gallery_keys=[str(x) for x in catalog["item_id"]],
        reference=list(triplets["reference_index"]),
        texts=list(triplets["caption"]),
        target=list(triplets["target_index"]),
        info={"source": "colour_variants", "num_triplets": len(triplets), "gallery_size": len(catalog)},
    )


def fashioniq_set(root: str, image_dir: str, categories: Sequence[str], split: str, skip_bad: bool = True) -> TGIRSet:
    """FashionIQ triplets of `split` for `categories` (images ``image_dir/<id>.jpg``); the gallery is the split's
    image list per category (``image_splits/split.<category>.<split>.json``) plus any triplet image it lacks."""
    from .data import load_fashioniq, load_fashioniq_gallery

    gallery, keys, cats, refs, texts, tgts, qcats = [], [], [], [], [], [], []
    skipped = 0
    for category in categories:
        triplets, report = load_fashioniq(root, category, split, image_dir, skip_bad=skip_bad, return_report=True)
        skipped += report.num_skipped
        index: dict[str, int] = {}

        def add(image_id, category=category, index=index):
            if image_id not in index:
                index[image_id] = len(gallery)
                gallery.append(os.path.join(image_dir, f"{image_id}.jpg"))
                keys.append(f"{category}/{image_id}")
                cats.append(category)
            return index[image_id]

        for image_id in load_fashioniq_gallery(root, category, split, image_dir, skip_bad=skip_bad)["image_id"]:
            add(image_id)
        for cand, tgt, caption in zip(triplets["candidate"], triplets["target"], triplets["caption"]):
            if not tgt:
                continue  # the test split has no targets
            refs.append(add(cand))
            tgts.append(add(tgt))
            texts.append(caption)
            qcats.append(category)
    if not texts:
        raise ValueError(
            f"no FashionIQ triplets with images for {list(categories)} / {split} under {image_dir} "
            f"({skipped} skipped for missing images)"
        )
    return TGIRSet(
        gallery=gallery,
        gallery_keys=keys,
        reference=refs,
        texts=texts,
        target=tgts,
        categories=qcats,
        gallery_categories=cats,
        info={"source": "fashioniq", "num_triplets": len(texts), "gallery_size": len(gallery), "skipped": skipped},
    )


def tgir_sets(
    *,
    dataset: Sequence[str] | None = None,
    fashioniq: str | None = None,
    fashioniq_images: str | None = None,
    fashioniq_categories: Sequence[str] = (),
    fashioniq_eval_split: str = "val",
    test_products: float = 0.15,
    val_products: float = 0.1,
    seed: int = 0,
    group_by: str | Sequence[str] = "product_id",
    max_triplets_per_product: int | None = None,
    skip_bad: bool = True,
) -> tuple[TGIRSet, TGIRSet]:
    """(train set, test set) of triplets: FashionIQ's train split and ``fashioniq_eval_split`` when ``fashioniq``
    is given, else the colour variants of the product-disjoint train / test splits of the ``dataset`` sources.
    Raises ValueError when a split has no colour variants (nothing to learn or measure)."""
    if fashioniq:
        train = fashioniq_set(fashioniq, fashioniq_images, fashioniq_categories, "train", skip_bad)
        return train, fashioniq_set(fashioniq, fashioniq_images, fashioniq_categories, fashioniq_eval_split, skip_bad)
    from .training import load_catalog_splits

    splits = load_catalog_splits(dataset, test_products, val_products, seed, skip_bad=skip_bad)
    group_by = [group_by] if isinstance(group_by, str) else list(group_by)
    sets = [colour_variant_set(splits[name], group_by, max_triplets_per_product, seed) for name in ("train", "test")]
    for name, s in zip(("train", "test"), sets):
        if len(s) == 0:
            raise ValueError(
                f"the {name} products have no colour variants (rows sharing {group_by} with different colours); "
                "use a catalogue with them (H&M), another --variant_group_by, or --fashioniq"
            )
    return sets[0], sets[1]


class TripletDataset(torch.utils.data.Dataset):
    """Training rows of a `TGIRSet`: {reference, text, target, target_key}."""

    def __init__(self, data: TGIRSet):
        if len(data) == 0:
            raise ValueError(f"no TGIR triplets to train on ({data.info})")
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        d = self.data
        return {
            "reference": d.gallery[d.reference[i]],
            "text": d.texts[i],
            "target": d.gallery[d.target[i]],
            "target_key": d.gallery_keys[d.target[i]],
        }


class TripletCollator:
    """Triplet rows -> pixel_values / input_ids / attention_mask (reference + text), target_pixel_values and
    target_ids (stable hash of the target image's key: equal targets are positives of each other)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: list[dict]) -> dict:
        from .data import stable_id

        query = self.processor(
            images=[r["reference"] for r in rows], text=[r["text"] for r in rows], return_tensors="pt"
        )
        target = self.processor(images=[r["target"] for r in rows], return_tensors="pt")
        return {
            "pixel_values": query["pixel_values"],
            "input_ids": query["input_ids"],
            "attention_mask": query["attention_mask"],
            "target_pixel_values": target["pixel_values"],
            "target_ids": torch.tensor([stable_id(r["target_key"]) for r in rows], dtype=torch.long),
        }


@torch.no_grad()
def evaluate_tgir(
    model: nn.Module,
    processor,
    data: TGIRSet,
    device=None,
    batch_size: int = 64,
    ks: Sequence[int] = (10, 50),
    show_progress: bool = True,
) -> dict:
    """Embed the gallery and the composed queries and compute `tgir_recall` (reference image excluded; per
    category with FashionIQ). ks larger than the gallery are dropped (and listed in ``ks_dropped``)."""
    from tqdm.auto import tqdm

    adapter = TGIRAdapter(model)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        gallery = []
        for s in tqdm(range(0, len(data.gallery), batch_size), desc="TGIR gallery", disable=not show_progress):
            pixels = processor(images=data.gallery[s : s + batch_size], return_tensors="pt")["pixel_values"]
            gallery.append(adapter.image(pixels.to(device)).float().cpu())
        queries = []
        for s in tqdm(range(0, len(data), batch_size), desc="TGIR queries", disable=not show_progress):
            refs = [data.gallery[i] for i in data.reference[s : s + batch_size]]
            batch = processor(images=refs, text=data.texts[s : s + batch_size], return_tensors="pt")
            queries.append(
                adapter.query(
                    batch["pixel_values"].to(device), batch["input_ids"].to(device), batch["attention_mask"].to(device)
                )
                .float()
                .cpu()
            )
    finally:
        model.train(was_training)
    if data.gallery_categories is not None:
        smallest = min(data.gallery_categories.count(c) for c in set(data.categories))
    else:
        smallest = len(data.gallery)
    usable = [k for k in ks if k < smallest]  # the reference is excluded from its own gallery
    if not usable:
        raise ValueError(f"the TGIR gallery has {smallest} images: too small for recall@{list(ks)}")
    results = tgir_recall(
        torch.cat(queries),
        torch.cat(gallery),
        np.asarray(data.target),
        np.asarray(data.reference),
        usable,
        categories=data.categories,
        gallery_categories=data.gallery_categories,
    )
    results["gallery_size"] = len(data.gallery)
    if len(usable) < len(ks):
        results["ks_dropped"] = [k for k in ks if k not in usable]
    return results


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
