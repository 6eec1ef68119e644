"""Contrastive and matching losses shared by SyncMask, E2 and FashionFAE.

Everything here is a plain function of tensors so that each model composes the same ITC / ITM / MLM pieces and the
tests can check them alone. Fashion catalogues pair one text with several images of one product, so the contrastive
targets are *multi-positive*: every pair of the same product counts as a positive and is never used as a negative.

This file is copied next to the modeling files when a model is saved with remote code, so it imports only torch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    """Processes in the torch.distributed group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _distributed() -> bool:
    return world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather `tensor` along dim 0 from every rank, differentiably: the backward pass sums, for each rank's
    slice, the gradients every rank's loss sends it.

    Each rank computes the loss of its own rows against the gathered columns. Its features also serve as columns
    in the other ranks' rows, and those gradient terms only reach it through this backward; with them, DDP's
    average over ranks equals the one-process gradient of the same global batch exactly. (Putting the local slice
    back into a plain `all_gather`, as open_clip's default does, drops them.)

    With one process this is the identity. Ranks must pass tensors of equal shape (the samplers drop or pad to
    equal per-rank batches).
    """
    if not _distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return tensor
    gathered = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def rank_offset(local_batch: int) -> int:
    """Row offset of this rank's samples inside a gathered batch."""
    return dist.get_rank() * local_batch if _distributed() else 0


def same_id_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (rows, cols) matrix, True where the two items share an id (e.g. the same product)."""
    return row_ids.view(-1, 1) == col_ids.view(1, -1)


def positive_targets(positives: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets spreading each row's probability mass over its positive columns (a rows x cols mask)."""
    positives = positives.float()
    return positives / positives.sum(dim=1, keepdim=True).clamp(min=1.0)


def multi_positive_targets(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets spreading each row's probability mass over all columns with the same id."""
    return positive_targets(same_id_mask(row_ids, col_ids))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution per row (mean over rows)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def contrastive_loss(
    logits_i2t: torch.Tensor,
    logits_t2i: torch.Tensor,
    targets_i2t: torch.Tensor,
    targets_t2i: torch.Tensor,
    distill_i2t: torch.Tensor | None = None,
    distill_t2i: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE with soft (multi-positive) targets and optional momentum distillation.

    `logits_*` are already scaled by the temperature; `targets_*` are row distributions (see
    `multi_positive_targets`). With `distill_*` (softmax of the teacher's logits) the targets become
    `alpha * distill + (1 - alpha) * targets`, as in ALBEF.
    """
    if distill_i2t is not None and alpha > 0:
        targets_i2t = alpha * distill_i2t + (1.0 - alpha) * targets_i2t
        targets_t2i = alpha * distill_t2i + (1.0 - alpha) * targets_t2i
    return 0.5 * (soft_cross_entropy(logits_i2t, targets_i2t) + soft_cross_entropy(logits_t2i, targets_t2i))


def clip_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    product_ids: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's loss on L2-normalised embeddings, gathered across ranks, multi-positive when `product_ids` is given.

    Without `product_ids` each item is only its own positive, which is CLIP's loss exactly. With `text_ids` too,
    pairs with an identical text (e.g. one description copied onto two products) are positives as well, never
    false negatives.
    """
    local = image_embeds.shape[0]
    all_image = gather_with_grad(image_embeds)
    all_text = gather_with_grad(text_embeds)
    if product_ids is None:
        product_ids = torch.arange(local, device=image_embeds.device) + rank_offset(local)
        all_ids = torch.arange(all_image.shape[0], device=image_embeds.device)
    else:
        all_ids = gather_no_grad(product_ids)
    scale = logit_scale.exp() if logit_scale.dim() == 0 else logit_scale
    logits_i2t = scale * image_embeds @ all_text.t()
    logits_t2i = scale * text_embeds @ all_image.t()
    positives = same_id_mask(product_ids, all_ids)
    if text_ids is not None:
        positives |= same_id_mask(text_ids, gather_no_grad(text_ids))
    targets = positive_targets(positives)
    return contrastive_loss(logits_i2t, logits_t2i, targets, targets)


def token_overlap(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids=()) -> torch.Tensor:
    """Jaccard overlap of the token *sets* of every pair of texts in a batch: (B, B) in [0, 1], 1 on the diagonal.

    Near-duplicate texts (a colour variant's description with one word changed, a title copied with a size
    suffix) are decided from the texts themselves, never from an encoder's embeddings: at initialisation an
    encoder's [CLS] embeds every text alike (cosine ~1), which would mark every pair a near-duplicate. Attended
    tokens other than `special_ids` count; a text with no such token overlaps nothing but itself.
    """
    keep = attention_mask.bool()
    for token_id in special_ids:
        keep &= input_ids != token_id
    b = input_ids.shape[0]
    # Multi-hot over the token ids present in the batch only (a (B, distinct) matrix, not (B, vocab)).
    vocab, inverse = torch.unique(input_ids[keep], return_inverse=True)
    hot = torch.zeros(b, max(1, vocab.numel()), device=input_ids.device)
    rows = torch.arange(b, device=input_ids.device).unsqueeze(1).expand_as(input_ids)[keep]
    hot[rows, inverse] = 1.0
    inter = hot @ hot.t()
    sizes = hot.sum(dim=1)
    union = sizes.unsqueeze(1) + sizes.unsqueeze(0) - inter
    overlap = torch.where(union > 0, inter / union.clamp(min=1.0), torch.zeros_like(inter))
    overlap.fill_diagonal_(1.0)
    return overlap


def exclusion_mask(
    row_product_ids: torch.Tensor,
    col_product_ids: torch.Tensor,
    row_text_ids: torch.Tensor | None = None,
    col_text_ids: torch.Tensor | None = None,
    text_similarity: torch.Tensor | None = None,
    near_duplicate_threshold: float | None = None,
) -> torch.Tensor:
    """Pairs that must never serve as negatives: same product, identical text, or near-duplicate text.

    These are the false negatives of a fashion catalogue (one text shared by several images of one product, or
    copy-pasted descriptions across colour variants). `text_similarity` is a similarity between the rows' and the
    columns' texts (e.g. `token_overlap`); pairs at or above `near_duplicate_threshold` are excluded too.
    """
    excluded = same_id_mask(row_product_ids, col_product_ids)
    if row_text_ids is not None and col_text_ids is not None:
        excluded |= same_id_mask(row_text_ids, col_text_ids)
    if text_similarity is not None and near_duplicate_threshold is not None:
        excluded |= text_similarity >= near_duplicate_threshold
    return excluded


@torch.no_grad()
def sample_negatives(
    similarity: torch.Tensor,
    excluded: torch.Tensor,
    hardest: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one hard negative column per row from a similarity matrix, never an excluded one.

    ALBEF samples from softmax(similarity) (`hardest=False`, "semi-hard": hard on average but not always the
    single closest item); FashionFAE takes the arg-max (`hardest=True`). Returns `(indices, valid)`; `valid` is
    False for rows with no eligible column (e.g. a batch holding one product only), whose index must be ignored.
    """
    similarity = similarity.float()
    valid = (~excluded).any(dim=1)
    if hardest:
        scores = similarity.masked_fill(excluded, float("-inf"))
        indices = scores.argmax(dim=1)
    else:
        weights = F.softmax(similarity, dim=1).masked_fill(excluded, 0.0)
        # Rows whose softmax underflowed to zero everywhere fall back to uniform over their eligible columns.
        dead = weights.sum(dim=1) <= 0
        weights[dead] = (~excluded[dead]).float()
        weights[~valid] = 1.0
        indices = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return indices, valid


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: 2-way cross-entropy (label 1 = matched pair, 0 = negative)."""
    return F.cross_entropy(logits.float(), labels)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over positions whose label is not -100; zero (with a graph) when nothing is masked."""
    if (labels != -100).any():
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return logits.sum() * 0.0
