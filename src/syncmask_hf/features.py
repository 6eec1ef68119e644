"""Reading embeddings out of `get_image_features` / `get_text_features`, whatever the model returns.

Some encoders return the (batch, dim) tensor; transformers v5's CLIP (and E2, built on it) return a ModelOutput whose
`pooler_output` holds the projected embedding. Every consumer in the package (evaluation, captioning, search) reads
features through this one function.
"""

from __future__ import annotations

from typing import Any

import torch


def features_tensor(output: Any, kind: str | None = None) -> torch.Tensor:
    """The embedding tensor of a `get_{kind}_features` result: a tensor as it is, else `{kind}_embeds` or
    `pooler_output` of a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    names = ([f"{kind}_embeds"] if kind else []) + ["pooler_output", "image_embeds", "text_embeds"]
    for name in names:
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    what = f"get_{kind}_features" if kind else "the encoder"
    raise TypeError(
        f"{what} returned {type(output).__name__} without a tensor, `pooler_output` or `*_embeds`; it must return the "
        "(batch, dim) joint-space embeddings."
    )
