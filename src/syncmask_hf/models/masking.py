"""Masking for MLM and MIM: the random baseline and the primitives SyncMask and FashionFAE build on.

A mask is always chosen among *eligible* positions only (never special tokens or padding), and the number masked
per row is `round(ratio * n_eligible)` (at least one when anything is eligible), so that random and score-driven
strategies mask exactly the same number of positions and differ only in *which* positions.

Copied beside the modeling files for remote code: imports only torch.
"""

from __future__ import annotations

import torch


def num_to_mask(eligible: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-row count of positions to mask: round(ratio * eligible), at least 1 where any position is eligible."""
    n = eligible.sum(dim=1)
    k = torch.round(n.float() * ratio).long()
    return torch.where(n > 0, k.clamp(min=1), torch.zeros_like(k)).minimum(n)


def top_scored_mask(scores: torch.Tensor, eligible: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of the `num_to_mask` highest-scored eligible positions of each row (ties broken by position)."""
    k = num_to_mask(eligible, ratio)
    scores = scores.float().masked_fill(~eligible, float("-inf"))
    # A stable descending sort gives a deterministic tie-break: the earlier position wins.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < k.unsqueeze(1)) & eligible


def random_mask(eligible: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The random baseline: `num_to_mask` eligible positions per row chosen uniformly."""
    noise = torch.rand(eligible.shape, generator=generator, device=eligible.device if generator is None else "cpu")
    return top_scored_mask(noise.to(eligible.device), eligible, ratio)


def apply_token_mask(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    replace_prob: float = 0.1,
    keep_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the chosen positions: [MASK] (80%), a random token (10%), unchanged (10%).

    Returns `(masked_input_ids, labels)` with labels -100 outside the mask.
    """
    labels = input_ids.masked_fill(~mask, -100)
    draw = torch.rand(
        input_ids.shape, generator=generator, device="cpu" if generator is not None else input_ids.device
    )
    draw = draw.to(input_ids.device)
    to_random = mask & (draw < replace_prob)
    to_keep = mask & (draw >= replace_prob) & (draw < replace_prob + keep_prob)
    to_mask = mask & ~to_random & ~to_keep
    random_tokens = torch.randint(
        vocab_size, input_ids.shape, generator=generator, device="cpu" if generator is not None else input_ids.device
    ).to(input_ids.device)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_tokens, masked)
    return masked, labels


def eligible_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """Positions that may be masked: attended to, and not a special token ([CLS], [SEP], [PAD], ...)."""
    eligible = attention_mask.bool()
    for token_id in special_ids:
        eligible &= input_ids != token_id
    return eligible


def block_mask(
    grid: int, num_masked: int, batch_size: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """BEiT-style block-wise patch mask on a `grid x grid` patch grid: rectangles are added until exactly
    `num_masked` patches are masked (the last rectangle is trimmed). Returns (batch, grid*grid) booleans."""
    masks = torch.zeros(batch_size, grid * grid, dtype=torch.bool)
    for b in range(batch_size):
        m = torch.zeros(grid, grid, dtype=torch.bool)
        while int(m.sum()) < num_masked:
            h = int(torch.randint(1, max(2, grid // 2 + 1), (1,), generator=generator))
            w = int(torch.randint(1, max(2, grid // 2 + 1), (1,), generator=generator))
            top = int(torch.randint(0, grid - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, grid - w + 1, (1,), generator=generator))
            block = torch.zeros_like(m)
            block[top : top + h, left : left + w] = True
            new = (block & ~m).flatten().nonzero().flatten()
            room = num_masked - int(m.sum())
            flat = m.flatten()
            flat[new[:room]] = True
            m = flat.view(grid, grid)
        masks[b] = m.flatten()
    return masks.to(device) if device is not None else masks


def synchronized_scores(
    cross_attentions: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
    text_eligible: torch.Tensor,
    patch_eligible: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
    token_topk: int = 1,
    patch_score: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncMask's scores of every text token and image patch from text->image cross-attention.

    `cross_attentions`: one tensor or a sequence (one per fusion layer read) of shape (B, heads, L, P0 + P) where
    the first `num_prefix_tokens` image positions (ViT's [CLS]) are not patches. Attention is averaged over layers
    and heads, giving A (B, L, P). Then
      - token score[t] = sum of A[t, p] over the `token_topk` patches token t attends to most (k=1: its peak
        attention): a token scores high when it looks strongly at a specific region;
      - patch score[p] = sum over eligible tokens t of A[t, p] (`patch_score="sum"`): how much the text as a whole
        looks at the patch; or its peak, the max over eligible tokens (`"peak"`): how strongly one word looks at it.
    Ineligible tokens (special / padding) and patches get -inf. Returns `(token_scores (B, L), patch_scores (B, P))`.
    """
    if isinstance(cross_attentions, torch.Tensor):
        cross_attentions = [cross_attentions]
    attn = torch.stack([a.float() for a in cross_attentions]).mean(dim=(0, 2))[..., num_prefix_tokens:]
    if patch_eligible is None:
        patch_eligible = torch.ones(attn.shape[0], attn.shape[2], dtype=torch.bool, device=attn.device)
    attn = attn * patch_eligible.unsqueeze(1)
    k = min(token_topk, attn.shape[-1])
    token_scores = attn.topk(k, dim=-1).values.sum(dim=-1).masked_fill(~text_eligible, float("-inf"))
    if patch_score == "sum":
        patch_scores = (attn * text_eligible.unsqueeze(-1)).sum(dim=1)
    elif patch_score == "peak":
        patch_scores = attn.masked_fill(~text_eligible.unsqueeze(-1), float("-inf")).amax(dim=1)
        patch_scores = patch_scores.clamp(min=0.0)  # a row without eligible tokens: 0, not -inf, for every patch
    else:
        raise ValueError(f"patch_score must be 'sum' or 'peak', got {patch_score!r}")
    patch_scores = patch_scores.masked_fill(~patch_eligible, float("-inf"))
    return token_scores, patch_scores


def synchronized_masks(
    cross_attentions: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
    text_eligible: torch.Tensor,
    patch_eligible: torch.Tensor | None = None,
    mlm_ratio: float = 0.15,
    mim_ratio: float = 0.25,
    num_prefix_tokens: int = 1,
    token_topk: int = 1,
    patch_score: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SyncMask (CVPR 2024): mask the text tokens and image patches that attend most strongly to each other.

    The teacher is run on the UNMASKED pair; its cross-attention gives the scores of `synchronized_scores`. The
    top-scored eligible tokens (never special tokens or padding) are masked for MLM (with the unmasked image) and the
    top-scored patches for MIM (with the unmasked text); the counts are `num_to_mask(eligible, ratio)`, exactly those
    of `random_mask`, so the random baseline differs only in which positions are chosen.
    Returns `(token_mask (B, L), patch_mask (B, P), token_scores, patch_scores)`.
    """
    token_scores, patch_scores = synchronized_scores(
        cross_attentions, text_eligible, patch_eligible, num_prefix_tokens, token_topk, patch_score
    )
    if patch_eligible is None:
        patch_eligible = torch.ones_like(patch_scores, dtype=torch.bool)
    token_mask = top_scored_mask(token_scores, text_eligible, mlm_ratio)
    patch_mask = top_scored_mask(patch_scores, patch_eligible, mim_ratio)
    return token_mask, patch_mask, token_scores, patch_scores
