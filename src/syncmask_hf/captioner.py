"""Training and inference helpers for the DeCap-style captioner, kept out of the modeling file so scripts stay thin.

Typical use (text-only training, zero-shot captioning):

    text_embeds = encode_texts(encoder, input_ids, attention_mask)         # frozen encoder, normalised
    train_decap(captioner, text_embeds, input_ids, attention_mask, epochs=5, lr=1e-4, batch_size=64)
    # train_decap also stores text_embeds as the projection memory (DeCap: the training texts)
    image_embeds = encode_images(encoder, pixel_values)
    captions = caption_images(captioner, image_embeds, tokenizer, num_beams=3)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .training import parameter_groups, run_training_loop

__all__ = ["train_decap", "caption_images", "encode_texts", "encode_images"]


@torch.no_grad()
def encode_texts(
    encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """L2-normalised `encoder.get_text_features` for all rows, in batches, on the encoder's device; returns CPU fp32."""
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(input_ids), batch_size), desc="embed texts", disable=not progress):
        out = encoder.get_text_features(
            input_ids=input_ids[start : start + batch_size].to(device),
            attention_mask=attention_mask[start : start + batch_size].to(device),
        )
        chunks.append(F.normalize(out.pooler_output.float(), dim=-1).cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_images(encoder, pixel_values: torch.Tensor | Iterable, batch_size: int = 128, progress: bool = False):
    """L2-normalised `encoder.get_image_features` of a (N,3,H,W) tensor or an iterable of pixel batches."""
    encoder.eval()
    device = next(encoder.parameters()).device
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.split(batch_size)
    chunks = []
    for batch in tqdm(pixel_values, desc="embed images", disable=not progress):
        if isinstance(batch, dict):
            batch = batch["pixel_values"]
        out = encoder.get_image_features(pixel_values=batch.to(device))
        chunks.append(F.normalize(out.pooler_output.float(), dim=-1).cpu())
    return torch.cat(chunks)


def train_decap(
    model,
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float = 1e-4,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    accelerator=None,
    set_memory: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train a `FashionDeCapForCaptioning` on text only: (text embedding, token ids of the same text) pairs.

    Loss: the model's next-token cross-entropy over the text tokens (padding ignored). AdamW with linear warmup and
    decay. Give `epochs` or `steps` (steps win when both are given). With an `accelerate.Accelerator`, the model,
    optimiser and loader are prepared by it (multi-GPU, mixed precision); otherwise one is made for the model's
    device (CPU, or the default accelerator). It runs `training.run_training_loop`, the package's one loop. When `set_memory`, the training text embeddings become the model's projection memory afterwards (DeCap's
    memory is the training text corpus). Returns the per-step losses.
    """
    if not (len(text_embeds) == len(input_ids) == len(attention_mask)):
        raise ValueError(
            f"text_embeds ({len(text_embeds)}), input_ids ({len(input_ids)}) and attention_mask ({len(attention_mask)}) "
            "must have one row per text."
        )
    if len(input_ids) == 0:
        raise ValueError("train_decap got no texts.")
    if epochs is None and steps is None:
        raise ValueError("Give train_decap `epochs` or `steps`.")
    from types import SimpleNamespace

    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    if accelerator is None:  # a plain call trains where the model is
        accelerator = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(text_embeds.float(), input_ids.long(), attention_mask.long())
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False, collate_fn=_decap_batch
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    # An accelerate-prepared scheduler steps once per process per optimiser step: scale its horizon to match.
    scale = accelerator.num_processes
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = steps if steps is not None else epochs * len(loader)
    scheduler = accelerator.prepare(get_linear_schedule_with_warmup(optimizer, warmup_steps * scale, total * scale))

    losses: list[float] = []

    def compute_loss(model, batch):
        out = model(**batch, return_loss=True)
        losses.append(float(out.loss.detach()))
        return out.loss, {}

    # The package's one loop; the loader is made once, so its generator carries on from epoch to epoch.
    args = SimpleNamespace(batch_size=batch_size, max_grad_norm=max_grad_norm, checkpoint_every=0)
    run_training_loop(
        accelerator,
        args,
        model,
        optimizer,
        scheduler,
        lambda epoch: loader,
        compute_loss,
        total,
        desc="train decap",
        show_progress=progress,
    )
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    if set_memory:
        unwrapped.set_memory(text_embeds.to(next(unwrapped.parameters()).device))
    return losses


def _decap_batch(rows) -> dict:
    """Stack (embedding, ids, mask) rows, trimming batch-wide padding columns (cheaper, identical loss)."""
    embeds, ids, mask = (torch.stack(column) for column in zip(*rows))
    width = int(mask.sum(1).max())
    return {"prefix_embeds": embeds, "input_ids": ids[:, :width], "attention_mask": mask[:, :width]}


@torch.no_grad()
def caption_images(
    model,
    image_embeds: torch.Tensor,
    tokenizer,
    *,
    batch_size: int = 64,
    num_beams: int = 1,
    max_new_tokens: int = 40,
    memory_temperature: float | None = None,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Zero-shot captions for image embeddings: project onto the model's text memory, then greedy/beam decode."""
    model.eval()
    device = next(model.parameters()).device
    captions: list[str] = []
    for start in tqdm(range(0, len(image_embeds), batch_size), desc="caption", disable=not progress):
        captions += model.caption(
            image_embeds[start : start + batch_size].to(device),
            tokenizer,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            memory_temperature=memory_temperature,
            **generate_kwargs,
        )
    return captions
