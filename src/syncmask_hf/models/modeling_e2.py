"""E2: CLIP with selection tokens, fusion blocks and regional contrastive learning (NeurIPS 2024).

The model is CLIP (transformers' `CLIPTextModel` / `CLIPVisionModel` and their layers, under CLIPModel's parameter
names, so any CLIP checkpoint loads into it unchanged) plus three small additions, each switchable off by one config
field for the paper's ablations:

- **selection tokens** (`use_selection_tokens`): `tokens_per_entity` learnable tokens per tag entity, prepended to
  CLS + patches before the pre-LayerNorm, so the sequence is [selection tokens, CLS, patches];
- **fusion blocks** (`use_fusion_blocks`, `E2FusionBlock`): after chosen layers each selection token picks exactly
  one patch (hard Gumbel-softmax) and averages it into itself; after the last block only the selection tokens and
  CLS go on through the remaining layer(s);
- **regional loss** (`use_regional_loss`): each entity's tokens give an entity embedding, contrasted with the text
  of that entity's value (e.g. the brand name) next to the global CLS-vs-full-text loss.

This file is copied flat for remote code: it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_e2 import E2Config
from .losses import (
    clip_contrastive_loss,
    gather_no_grad,
    gather_with_grad,
    multi_positive_targets,
    soft_cross_entropy,
)
from .modeling_utils import ImageTowerMixin, TextTowerMixin, extend_auto_map


@dataclass
class E2VisionOutput(BaseModelOutputWithPooling):
    """Image side of E2: CLIP's `get_image_features` output plus E2's parts.

    last_hidden_state: the final tokens ([selection tokens, CLS] after the last fusion block, else all tokens).
    pooler_output: (B, projection_dim) global image embedding (not normalised), as CLIP's `get_image_features`.
    entity_embeds: (B, num_entities, projection_dim) one embedding per tag entity (None without the regional loss, which trains the entity heads).
    selected_patches: (B, num_selection_tokens, num_fusion_blocks) index (row-major in the patch grid) of the patch
        each selection token picked in each fusion block, for visualisation (None without fusion blocks).
    """

    entity_embeds: torch.Tensor | None = None
    selected_patches: torch.Tensor | None = None


@dataclass
class E2Output(ModelOutput):
    """Output of `E2Model.forward`.

    loss: global_loss_weight * loss_global + regional_loss_weight * loss_regional (with `return_loss=True`).
    loss_global: InfoNCE between the image CLS embedding and the full text (multi-positive over `product_ids`).
    loss_regional: mean over entities (with at least one valid value) of the entity InfoNCE.
    entity_losses: {entity name: its InfoNCE} for the entities that had valid values.
    logits_per_image / logits_per_text: scaled cosine similarities of the global embeddings (CLIP's).
    image_embeds / text_embeds: L2-normalised global embeddings.
    entity_embeds / entity_text_embeds: L2-normalised (B, E, D) entity embeddings of images and of the entity value
        texts (zero rows where `entity_valid` is False).
    selected_patches: (B, num_selection_tokens, num_fusion_blocks) patch picked by each selection token.
    """

    loss: torch.Tensor | None = None
    loss_global: torch.Tensor | None = None
    loss_regional: torch.Tensor | None = None
    entity_losses: dict[str, torch.Tensor] | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    entity_embeds: torch.Tensor | None = None
    entity_text_embeds: torch.Tensor | None = None
    selected_patches: torch.Tensor | None = None


def _weight(linear: nn.Module) -> torch.Tensor:
    """A linear layer's (out, in) weight as a float tensor: an attribute of `nn.Linear`, a method returning a
    quantised tensor on `torch.ao`'s dynamically quantised Linear (which `quantize_dynamic` puts in its place)."""
    weight = linear.weight
    if callable(weight):
        weight = weight()
        return weight.dequantize() if weight.is_quantized else weight
    return weight


class E2FusionBlock(nn.Module):
    """The paper's fusion block: each selection token picks one patch and averages its value into itself.

    q = tokens W_q, k = patches W_k, v = patches W_v (no biases, own projections per block); scores = q k^T / sqrt(width);
    training: hard straight-through Gumbel-softmax over the patches (one-hot forward, soft gradient to W_q / W_k);
    eval: deterministic arg-max. New token = (picked value + token) / 2. CLS and patches pass through unchanged.
    """

    def __init__(self, config: E2Config):
        super().__init__()
        width = config.vision_config.hidden_size
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.scale = width**-0.5
        self.tau = config.gumbel_tau

    def forward(self, hidden_states: torch.Tensor, num_selection_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = num_selection_tokens
        tokens, patches = hidden_states[:, :s], hidden_states[:, s + 1 :]
        # q k^T with k = patches W_k^T computed as (q W_k) patches^T: the same product, but the projection runs on
        # the few selection tokens instead of on every patch (likewise W_v below is applied after the pick).
        scores = (self.q_proj(tokens) @ _weight(self.k_proj)) @ patches.transpose(1, 2) * self.scale  # (B, S, P)
        if self.training:  # hard straight-through Gumbel-softmax: one-hot forward, soft gradient to W_q / W_k
            one_hot = F.gumbel_softmax(scores.float(), tau=self.tau, hard=True, dim=-1).to(patches.dtype)
            picked = self.v_proj(one_hot @ patches)
            index = one_hot.argmax(dim=-1)
        else:
            index = scores.argmax(dim=-1)
            picked = self.v_proj(patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1])))
        fused = (picked + tokens) / 2
        return torch.cat([fused, hidden_states[:, s:]], dim=1), index


class E2EntityHead(nn.Module):
    """One entity's embedding: its selection tokens -> LayerNorm -> mean -> projection to the joint space."""

    def __init__(self, config: E2Config):
        super().__init__()
        width = config.vision_config.hidden_size
        self.layernorm = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.projection = nn.Linear(width, config.projection_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layernorm(tokens).mean(dim=1))


def _text_hash(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Stable int64 id per token row (equal rows -> equal ids on every rank), to treat repeated values as positives."""
    prime = 2_147_483_647
    length = input_ids.shape[-1]
    powers = torch.ones(length, dtype=torch.int64, device=input_ids.device)
    for i in range(1, length):
        powers[i] = (powers[i - 1] * 1_000_003) % prime
    tokens = (input_ids.long() + 1) * attention_mask.long()
    return ((tokens * powers).sum(dim=-1) % prime) * 131 + attention_mask.long().sum(dim=-1)


def regional_contrastive_loss(
    entity_embeds: torch.Tensor,
    entity_text_embeds: torch.Tensor,
    valid: torch.Tensor,
    value_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> list[torch.Tensor | None]:
    """InfoNCE per entity between normalised entity embeddings (B, E, D) and their value-text embeddings.

    Rows whose value is missing (`valid` False) neither contribute a loss term nor serve as negatives. Rows with the
    same value text (`value_ids`, e.g. two items of one brand) are positives for each other, not false negatives.
    Gathered across ranks like `clip_contrastive_loss`. Returns one loss per entity, None where no row is valid.
    """
    scale = logit_scale.exp()
    losses: list[torch.Tensor | None] = []
    for e in range(entity_embeds.shape[1]):
        rows = valid[:, e]
        all_valid = gather_no_grad(rows.to(torch.uint8)).bool()
        if not bool(all_valid.any()):
            losses.append(None)
            continue
        img, txt = entity_embeds[:, e], entity_text_embeds[:, e]
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
        ids, all_ids = value_ids[:, e], gather_no_grad(value_ids[:, e])
        targets = multi_positive_targets(ids, all_ids) * all_valid.float().unsqueeze(0)
        targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1e-12)
        blocked = ~all_valid.unsqueeze(0)
        logits_i2t = (scale * img @ all_txt.t()).float().masked_fill(blocked, -1e4)
        logits_t2i = (scale * txt @ all_img.t()).float().masked_fill(blocked, -1e4)
        if not bool(rows.any()):  # this rank has none: keep the graph, contribute nothing
            losses.append((logits_i2t.sum() + logits_t2i.sum()) * 0.0)
            continue
        loss = 0.5 * (
            soft_cross_entropy(logits_i2t[rows], targets[rows]) + soft_cross_entropy(logits_t2i[rows], targets[rows])
        )
        losses.append(loss)
    return losses


def _build_image_side(module: nn.Module, config: E2Config) -> None:
    """The image tower's parts, under CLIPModel's names, on `module` (E2VisionModelWithProjection)."""
    module.vision_model = CLIPVisionModel._from_config(config.vision_config)
    module.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
    _build_e2_parts(module, config)


def _build_e2_parts(module: nn.Module, config: E2Config) -> None:
    """What E2 adds to CLIP's image tower: selection tokens, fusion blocks, entity heads."""
    width = config.vision_config.hidden_size
    n_tokens = config.num_selection_tokens
    module.selection_tokens = nn.Parameter(torch.zeros(n_tokens, width)) if n_tokens else None
    module.fusion_blocks = nn.ModuleList([E2FusionBlock(config) for _ in range(config.num_fusion_blocks)])
    # Entity heads only exist with the regional loss that trains them (untrained heads would also be unused
    # parameters under DistributedDataParallel).
    module.entity_heads = (
        nn.ModuleDict({name: E2EntityHead(config) for name in config.entities}) if config.use_regional_loss else None
    )


def _build_text_side(module: nn.Module, config: E2Config) -> None:
    module.text_model = CLIPTextModel._from_config(config.text_config)
    module.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)


def _encode_image(module: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> E2VisionOutput:
    """The CLIP vision layers with the selection tokens and fusion blocks: one pass gives every image output."""
    config = module.config
    vision = module.vision_model
    hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    s = config.num_selection_tokens
    if s:
        tokens = module.selection_tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([tokens, hidden], dim=1)
    hidden = vision.pre_layrnorm(hidden)
    blocks = dict(zip(config.fusion_layers, module.fusion_blocks)) if config.use_fusion_blocks else {}
    last_block = max(blocks) if blocks else None
    picks = []
    for depth, layer in enumerate(vision.encoder.layers, start=1):
        hidden = layer(hidden, None)
        if depth in blocks:
            hidden, index = blocks[depth](hidden, s)
            picks.append(index)
            if depth == last_block:  # only the selection tokens and CLS go on
                hidden = hidden[:, : s + 1]
    image_embeds = module.visual_projection(vision.post_layernorm(hidden[:, s]))
    entity_embeds = None
    if module.entity_heads is not None:
        t = config.tokens_per_entity
        entity_embeds = torch.stack(
            [head(hidden[:, i * t : (i + 1) * t]) for i, head in enumerate(module.entity_heads.values())], dim=1
        )
    return E2VisionOutput(
        pooler_output=image_embeds,
        entity_embeds=entity_embeds,
        selected_patches=torch.stack(picks, dim=-1) if picks else None,
        last_hidden_state=hidden,
    )


def _text_features(module, input_ids, attention_mask=None, position_ids=None) -> BaseModelOutputWithPooling:
    """CLIP's `get_text_features`: `pooler_output` is the projected (unnormalised) text embedding."""
    out = module.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    out.pooler_output = module.text_projection(out.pooler_output)
    return out


class E2PreTrainedModel(PreTrainedModel):
    config_class = E2Config
    config: E2Config
    base_model_prefix = "e2"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        factor = self.config.initializer_factor
        width = self.config.vision_config.hidden_size
        if isinstance(module, (E2Model, E2VisionModelWithProjection, E2TextModelWithProjection)):
            # E2's new parts are initialised here, from the model: transformers skips modules without parameters of
            # their own (E2FusionBlock, E2EntityHead), and their Linear children would otherwise get N(0, 1).
            # The authors' init: N(0, width^-0.5).
            for block in getattr(module, "fusion_blocks", ()):
                for proj in (block.q_proj, block.k_proj, block.v_proj):
                    init.normal_(proj.weight, std=width**-0.5 * factor)
            for head in (getattr(module, "entity_heads", None) or {}).values():
                init.ones_(head.layernorm.weight)
                init.zeros_(head.layernorm.bias)
                init.normal_(head.projection.weight, std=width**-0.5 * factor)
            if getattr(module, "selection_tokens", None) is not None:  # like CLIP's class embedding
                init.normal_(module.selection_tokens, std=width**-0.5 * factor)
            if hasattr(module, "logit_scale"):
                init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if hasattr(module, "visual_projection"):
                init.normal_(module.visual_projection.weight, std=width**-0.5 * factor)
            if hasattr(module, "text_projection"):
                std = self.config.text_config.hidden_size**-0.5 * factor
                init.normal_(module.text_projection.weight, std=std)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """Also map `AutoModelForZeroShotImageClassification` in `auto_map`, so the pipeline loads remote copies."""
        extend_auto_map(self, {"AutoModelForZeroShotImageClassification": E2Model})
        return super().save_pretrained(save_directory, *args, **kwargs)


def _is_e2_folder(path) -> bool:
    """A local folder whose config.json is an E2 model's (saved by pretrain.py / save_pretrained)."""
    import json

    config = os.path.join(str(path), "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return json.load(f).get("model_type") == E2Config.model_type


class E2Model(E2PreTrainedModel):
    """CLIP + E2's selection tokens, fusion blocks and per-entity heads (see the module docstring).

    Parameter names of CLIP are CLIPModel's (`vision_model.*`, `text_model.*`, `visual_projection`,
    `text_projection`, `logit_scale`). The global image head is CLS -> `vision_model.post_layernorm` ->
    `visual_projection`; the paper calls that projection new: it is trained from stage 1 (`new_parameter_names`) and,
    with `projection_init="random"`, re-initialised by `from_clip`.
    """

    def __init__(self, config: E2Config):
        super().__init__(config)
        # CLIPModel's modules in CLIPModel's order, then E2's: the order in which post_init draws the random weights,
        # so a seed gives the same model as before the one-tower classes existed.
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        _build_e2_parts(self, config)
        self.post_init()

    # ---------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_clip(
        cls,
        clip_model_or_path: str | os.PathLike | CLIPModel,
        entities: list[str] | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ) -> E2Model:
        """E2 on top of a transformers CLIP checkpoint (Hub id, folder or `CLIPModel`), every CLIP weight kept exactly.

        `config_kwargs` set E2Config fields (`tokens_per_entity`, `fusion_layers`, `use_fusion_blocks`, ...). New
        parameters (selection tokens, fusion blocks, entity heads) are initialised fresh; with
        `projection_init="clip"` (default) the entity heads start as copies of CLIP's post-LayerNorm + visual
        projection, with "random" those and the global projection are drawn fresh (the authors' code).
        """
        clip = clip_model_or_path
        if isinstance(clip, E2Model):
            clip = clip.to_clip()
        elif not isinstance(clip, CLIPModel):
            load_kwargs = {"dtype": dtype} if dtype is not None else {}
            if _is_e2_folder(clip_model_or_path):  # an E2 run adapted again: its CLIP part, new parts fresh
                clip = cls.from_pretrained(clip_model_or_path, **load_kwargs).to_clip()
            else:
                clip = CLIPModel.from_pretrained(clip_model_or_path, **load_kwargs)
        if entities is not None:
            config_kwargs["entities"] = entities
        config = E2Config.from_clip_config(clip.config, **config_kwargs)
        config._attn_implementation = clip.config._attn_implementation
        model = cls(config)
        clip_state = clip.state_dict()
        missing, unexpected = model.load_state_dict(clip_state, strict=False)
        if unexpected:
            raise ValueError(
                f"from_clip: the CLIP checkpoint has weights E2 does not know ({sorted(unexpected)[:5]}...); "
                "pass a transformers CLIPModel checkpoint (model_type 'clip')."
            )
        new = set(model.new_parameter_names())
        if set(missing) - new:
            raise ValueError(f"from_clip: CLIP weights missing from the checkpoint: {sorted(set(missing) - new)[:5]}")
        with torch.no_grad():
            if config.projection_init == "clip" and model.entity_heads is not None:
                for head in model.entity_heads.values():
                    head.layernorm.load_state_dict(model.vision_model.post_layernorm.state_dict())
                    head.projection.weight.copy_(model.visual_projection.weight)
            elif config.projection_init == "random":
                std = config.vision_config.hidden_size**-0.5 * config.initializer_factor
                model.visual_projection.weight.normal_(0.0, std)
        param = next(clip.parameters())
        model.to(dtype=param.dtype, device=param.device)
        model.config.name_or_path = getattr(clip, "name_or_path", "") or str(clip_model_or_path)
        return model

    def to_clip(self) -> CLIPModel:
        """The CLIP inside this model as a transformers `CLIPModel` (towers, projections, logit scale), weights copied
        exactly; E2's own parameters (selection tokens, fusion blocks, entity heads) are left out. The inverse of
        `from_clip` for the CLIP part: a CLIP trained here (e.g. as the CLIP-FT ablation) can be adapted again."""
        from transformers import CLIPConfig

        config = CLIPConfig(
            text_config=self.config.text_config.to_dict(),
            vision_config=self.config.vision_config.to_dict(),
            projection_dim=self.config.projection_dim,
            logit_scale_init_value=self.config.logit_scale_init_value,
            initializer_factor=self.config.initializer_factor,
        )
        clip = CLIPModel(config)
        own = set(self.new_parameter_names()) - {"visual_projection.weight"}
        state = {
            k: v
            for k, v in self.state_dict().items()
            if k not in own and not k.startswith(("fusion_blocks.", "entity_heads."))
        }
        missing, unexpected = clip.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"to_clip: weights do not map onto CLIPModel (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        param = next(self.parameters())
        return clip.to(dtype=param.dtype, device=param.device)

    # ------------------------------------------------------------------------------------------- two-stage training
    def new_parameter_names(self) -> list[str]:
        """Parameters E2 adds to CLIP (stage 1 trains only these): selection tokens, fusion blocks, entity heads and
        the global projection (`visual_projection`, "new" in the paper)."""
        prefixes = ("selection_tokens", "fusion_blocks.", "entity_heads.", "visual_projection.")
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def freeze_pretrained(self, freeze: bool = True) -> list[str]:
        """Stage 1 (`freeze=True`): only `new_parameter_names()` train; stage 2 (`False`): everything trains.

        Returns the names of the trainable parameters. Build the optimizer after calling this (over parameters with
        `requires_grad`).
        """
        new = set(self.new_parameter_names())
        for name, param in self.named_parameters():
            param.requires_grad_(not freeze or name in new)
        return [name for name, param in self.named_parameters() if param.requires_grad]

    # ------------------------------------------------------------------------------------------------- image side
    def encode_image(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> E2VisionOutput:
        """Run the CLIP vision layers with the selection tokens and fusion blocks; one pass gives every output."""
        return _encode_image(self, pixel_values, interpolate_pos_encoding)

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> E2VisionOutput:
        """CLIP's interface: `.pooler_output` is the projected (unnormalised) global image embedding."""
        return self.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def get_entity_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, num_entities, projection_dim) unnormalised entity embeddings, in `config.entities` order."""
        if self.entity_heads is None:
            raise ValueError(
                "get_entity_features needs the entity heads, which exist with the regional loss: this E2 has "
                f"use_selection_tokens={self.config.use_selection_tokens}, use_regional_loss={self.config.use_regional_loss}."
            )
        return self.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).entity_embeds

    # -------------------------------------------------------------------------------------------------- text side
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """CLIP's interface: `.pooler_output` is the projected (unnormalised) text embedding."""
        return _text_features(self, input_ids, attention_mask, position_ids)

    def get_entity_text_features(
        self,
        entity_input_ids: torch.Tensor,
        entity_attention_mask: torch.Tensor,
        entity_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed each entity's value text: returns ((B, E, D) unnormalised embeddings, (B, E) valid mask).

        Only valid rows go through the text tower; missing values (all padding) give zero rows.
        """
        if entity_input_ids.dim() != 3 or entity_input_ids.shape[1] != self.config.num_entities:
            raise ValueError(
                f"entity_input_ids must be (batch, {self.config.num_entities}, length) for entities "
                f"{self.config.entities} (got {tuple(entity_input_ids.shape)}); tokenise one value text per entity."
            )
        if entity_attention_mask is None:
            raise ValueError("entity_attention_mask is required with entity_input_ids (1 = real token, 0 = padding).")
        b, e, length = entity_input_ids.shape
        if entity_valid is None:
            entity_valid = entity_attention_mask.bool().any(dim=-1)
        valid = entity_valid.bool() & entity_attention_mask.bool().any(dim=-1)
        flat_valid = valid.reshape(-1)
        out = torch.zeros(b * e, self.config.projection_dim, device=entity_input_ids.device, dtype=self.dtype)
        if bool(flat_valid.any()):
            ids = entity_input_ids.reshape(-1, length)[flat_valid]
            mask = entity_attention_mask.reshape(-1, length)[flat_valid]
            if getattr(self.config, "encode_distinct_entity_texts", True):
                feats = self._distinct_text_features(ids, mask)
            else:
                feats = self.get_text_features(ids, mask).pooler_output
            out = out.index_put((flat_valid.nonzero(as_tuple=True)[0],), feats.to(out.dtype))
        return out.view(b, e, -1), valid

    def _distinct_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`get_text_features(...).pooler_output` of every row, each distinct (ids, mask) row encoded once. The
        distinct rows go in two buckets by length (short values such as brands and seasons apart from descriptions),
        each cut after its last real token: trailing padding changes nothing under the causal, padding-masked
        attention, and the pooled token is the end-of-text token. Gradients reach the tower once per distinct text,
        summed over its rows, as they would be row by row."""
        length = input_ids.shape[1]
        keys = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        ids, mask = distinct[:, :length], distinct[:, length:]
        last = torch.where(mask.bool(), torch.arange(length, device=mask.device), -1).amax(dim=1)
        order = last.argsort()
        buckets = order.chunk(2) if len(order) > 1 else (order,)
        feats = []
        for rows in buckets:
            end = int(last[rows].max()) + 1
            feats.append(self.get_text_features(ids[rows, :end], mask[rows, :end]).pooler_output)
        feats = torch.cat(feats)[torch.cat(buckets).argsort()]  # back to the distinct rows' order
        return feats[inverse]

    # ---------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        entity_input_ids: torch.LongTensor | None = None,
        entity_attention_mask: torch.Tensor | None = None,
        entity_valid: torch.Tensor | None = None,
        product_ids: torch.LongTensor | None = None,
        text_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> E2Output:
        """Global logits (CLIP's) and, with `return_loss=True`, E2's loss.

        `product_ids` make all pairs of one product positives of the global loss; with `text_ids` (normalised-text
        hashes, as `FashionCollator` gives) pairs whose texts are identical are positives too, never negatives. The regional loss needs
        `entity_input_ids` / `entity_attention_mask` (B, E, Le) and optional `entity_valid` (B, E).
        """
        if pixel_values is None or input_ids is None:
            raise ValueError(
                "E2Model.forward needs both pixel_values and input_ids (use get_*_features for one side)."
            )
        vision = self.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text = self.get_text_features(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        image_embeds = F.normalize(vision.pooler_output, dim=-1)
        text_embeds = F.normalize(text.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()

        entity_embeds = entity_text_embeds = None
        if vision.entity_embeds is not None:
            entity_embeds = F.normalize(vision.entity_embeds, dim=-1)
        regional = self.config.use_regional_loss and (return_loss or entity_input_ids is not None)
        valid = None
        if regional:
            if entity_input_ids is None:
                raise ValueError(
                    "The regional loss needs entity_input_ids and entity_attention_mask (B, E, Le) for entities "
                    f"{self.config.entities} (FashionProcessor produces them), or set use_regional_loss=False."
                )
            entity_text, valid = self.get_entity_text_features(entity_input_ids, entity_attention_mask, entity_valid)
            entity_text_embeds = F.normalize(entity_text, dim=-1)

        loss = loss_global = loss_regional = entity_losses = None
        if return_loss:
            loss_global = clip_contrastive_loss(image_embeds, text_embeds, self.logit_scale, product_ids, text_ids)
            loss = self.config.global_loss_weight * loss_global
            if regional:
                value_ids = _text_hash(entity_input_ids, entity_attention_mask)
                per_entity = regional_contrastive_loss(
                    entity_embeds, entity_text_embeds, valid, value_ids, self.logit_scale
                )
                entity_losses = {n: v for n, v in zip(self.config.entities, per_entity) if v is not None}
                if entity_losses:
                    loss_regional = torch.stack(list(entity_losses.values())).mean()
                else:  # no entity value in the whole batch: zero, with a graph
                    loss_regional = entity_embeds.sum() * 0.0
                loss = loss + self.config.regional_loss_weight * loss_regional

        return E2Output(
            loss=loss,
            loss_global=loss_global,
            loss_regional=loss_regional,
            entity_losses=entity_losses,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            entity_embeds=entity_embeds,
            entity_text_embeds=entity_text_embeds,
            selected_patches=vision.selected_patches,
        )


class E2VisionModelWithProjection(ImageTowerMixin, E2PreTrainedModel):
    """E2's image side alone (CLIPVisionModelWithProjection's role): the CLIP vision tower with the selection tokens,
    fusion blocks, entity heads and the global projection. `forward(pixel_values)` returns `get_image_features`
    (an `E2VisionOutput`: `pooler_output` = the global embedding), for `pipeline("image-feature-extraction",
    model=...)`. Loads from an `E2Model` folder; the text tower's weights are skipped."""

    _keys_to_ignore_on_load_unexpected = [
        r"^(?!vision_model\.|visual_projection\.|selection_tokens|fusion_blocks\.|entity_heads\.)"
    ]

    def __init__(self, config: E2Config):
        super().__init__(config)
        _build_image_side(self, config)
        self.post_init()

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> E2VisionOutput:
        return _encode_image(self, pixel_values, interpolate_pos_encoding)


class E2TextModelWithProjection(TextTowerMixin, E2PreTrainedModel):
    """E2's text side alone (CLIPTextModelWithProjection's role): `forward(input_ids, attention_mask)` returns
    `get_text_features`. Loads from an `E2Model` folder; the image side's weights are skipped."""

    _keys_to_ignore_on_load_unexpected = [r"^(?!text_model\.|text_projection\.)"]

    def __init__(self, config: E2Config):
        super().__init__(config)
        _build_text_side(self, config)
        self.post_init()

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return _text_features(self, input_ids, attention_mask, position_ids)


E2Config.register_for_auto_class()
E2Model.register_for_auto_class("AutoModel")

__all__ = [
    "E2PreTrainedModel",
    "E2Model",
    "E2VisionModelWithProjection",
    "E2TextModelWithProjection",
    "E2FusionBlock",
    "E2EntityHead",
    "E2Output",
    "E2VisionOutput",
]
