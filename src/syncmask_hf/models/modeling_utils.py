"""Helpers the model files share, each written once: the `auto_map` a saved folder carries, patch extraction,
ViT / BERT embedding initialisation, the token roles of the processor's templated text, and what the one-tower
classes (`*VisionModelWithProjection` / `*TextModelWithProjection`) have in common.

Hub copies are flat: this file imports only torch and transformers.
"""

from __future__ import annotations

import torch
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertEmbeddings
from transformers.models.vit.modeling_vit import ViTEmbeddings

# The role of each token of a processed text (`FashionProcessor(return_token_roles=True)` writes them, FashionFAE's
# AETP masks by them): special tokens, title words, description words, template words and attribute values.
ROLE_SPECIAL, ROLE_TITLE, ROLE_DESCRIPTION, ROLE_TEMPLATE, ROLE_VALUE = 0, 1, 2, 3, 4


def extend_auto_map(model, entries: dict[str, type]) -> None:
    """Name `entries` (Auto class name -> model class in a sibling file) in `model.config.auto_map`, keeping what is
    there, so a Hub copy loads with `trust_remote_code=True` under every Auto class the model serves. Only for
    classes registered with `register_for_auto_class`: others do not write their code to the folder."""
    if getattr(model, "_auto_class", None) is None:
        return
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    for auto_class, model_class in entries.items():
        auto_map.setdefault(auto_class, f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}")
    model.config.auto_map = auto_map


def patchify(pixel_values: torch.Tensor, patch_size: int | tuple[int, int], channels_first: bool = False):
    """(B, C, H, W) -> (B, rows * cols, C * ph * pw): the pixels of each patch, patches in row-major order (ViT's).
    Within a patch: pixel by pixel with the channels last (MAE's targets, SyncMask's MIM), or channel by channel with
    `channels_first` (FashionFAE's APIR cells). A border narrower than a patch is cropped."""
    b, c, h, w = pixel_values.shape
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    rows, cols = h // ph, w // pw
    x = pixel_values[:, :, : rows * ph, : cols * pw].reshape(b, c, rows, ph, cols, pw)
    x = x.permute(0, 2, 4, 1, 3, 5) if channels_first else x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, rows * cols, c * ph * pw)


@torch.no_grad()
def init_embeddings(module, std: float) -> bool:
    """Initialise ViT's and BERT's embedding modules as transformers' own ViT / BERT do (their parameters are not
    Linear / Embedding weights, which `PreTrainedModel._init_weights` covers). Returns whether `module` was one."""
    if isinstance(module, ViTEmbeddings):
        init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
        init.trunc_normal_(module.cls_token, mean=0.0, std=std)
        if module.mask_token is not None:
            init.zeros_(module.mask_token)
        return True
    if isinstance(module, BertEmbeddings):
        init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        init.zeros_(module.token_type_ids)
        return True
    return False


class ImageTowerMixin:
    """For a one-tower image class: `forward` is the model's `get_image_features` (what the image-feature-extraction
    pipeline calls)."""

    main_input_name = "pixel_values"

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        return self.get_image_features(pixel_values, **kwargs)


class TextTowerMixin:
    """For a one-tower text class holding `text_model`: `forward` is the model's `get_text_features`."""

    main_input_name = "input_ids"

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        return self.get_text_features(input_ids, attention_mask, **kwargs)
