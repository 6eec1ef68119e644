"""FashionFAE (arXiv 2412.19997): ViT + one BERT doing single-stream fusion, with AETP, APIR and task sampling.

Where to find each paper idea:
- `aetp_mask` — attribute-emphasized text prediction's masking (description tokens with a few random replacements,
  title words, one whole attribute value); its loss is `FashionFAEForPreTraining._mlm_slot` (MLM cross-entropy plus
  the contrastive term between the unimodal and the fused text embedding).
- `FashionFAEFusedCLS` + `apir_fill` + `FashionFAEForPreTraining._apir_slot` — attribute-promoted image
  reconstruction: block-masked cells filled with the fused CLS, text taken from an early BERT layer.
- `FashionFAETaskSampler` (task_sampler.py) — one task per step.
ITC, ITM and MLM are the shared pieces of `losses.py` / `masking.py`, the same ones SyncMask uses.

Remote code: this file imports only its siblings (single-dot), transformers and torch.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel, ViTModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertLMPredictionHead, BertOnlyMLMHead
from transformers.utils import ModelOutput

from .configuration_fashionfae import FashionFAEConfig
from .losses import clip_contrastive_loss, exclusion_mask, itm_loss, masked_lm_loss, sample_negatives
from .masking import apply_token_mask, block_mask, eligible_tokens, num_to_mask, random_mask
from .modeling_utils import (
    ROLE_DESCRIPTION,
    ROLE_SPECIAL,
    ROLE_TITLE,
    ImageTowerMixin,
    TextTowerMixin,
    extend_auto_map,
    init_embeddings,
    patchify,
)
from .task_sampler import FashionFAETaskSampler

# token_roles values of the processor's attribute-templated text (see the input contract).
TASKS = ("itc", "itm", "mlm", "aetp", "apir")


# ----------------------------------------------------------------------------------------------------------------
# AETP: the masking
# ----------------------------------------------------------------------------------------------------------------
def aetp_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_roles: torch.Tensor,
    attribute_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int],
    description_mask_ratio: float = 0.12,
    description_replace_ratio: float = 0.015,
    title_words: int = 2,
    attribute_values: int = 1,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attribute-emphasized masking of one batch. Returns `(masked_input_ids, labels, masked)`.

    Per row, among attended non-special tokens:
    - description tokens (role 2): `round(description_mask_ratio * n)` (at least one) become [MASK] and a further
      `description_replace_ratio * n` (stochastically rounded, so its expectation is exact even for short texts)
      become a random token;
    - `title_words` title words (role 1) become [MASK]; a word is the run of tokens sharing a `word_ids` value
      (the tokenizer's `word_ids()`), or a single token when `word_ids` is not given;
    - `attribute_values` whole attribute values (all tokens sharing one `attribute_ids` index) become [MASK].
    Template words ("the image category is") are never masked: they are predictable from the template alone.
    """
    device = input_ids.device
    ids, att, roles, attr = (t.detach().cpu() for t in (input_ids, attention_mask, token_roles, attribute_ids))
    if ids.shape != roles.shape or ids.shape != attr.shape:
        raise ValueError(
            f"token_roles {tuple(roles.shape)} and attribute_ids {tuple(attr.shape)} must have the shape of "
            f"input_ids {tuple(ids.shape)}: build them with the processor's attribute-text option"
        )
    valid = eligible_tokens(ids, att, special_ids) & (roles != ROLE_SPECIAL)
    batch, length = ids.shape

    # Description: a uniform random order per row; the first k_mask go to [MASK], the next k_replace to random ids.
    description = valid & (roles == ROLE_DESCRIPTION)
    n = description.sum(dim=1)
    k_mask = num_to_mask(description, description_mask_ratio) if description_mask_ratio > 0 else torch.zeros_like(n)
    k_replace = torch.floor(n.float() * description_replace_ratio + torch.rand(batch)).long().minimum(n - k_mask)
    noise = torch.rand(batch, length).masked_fill(~description, 2.0)
    rank = torch.empty_like(ids)
    rank.scatter_(1, noise.argsort(dim=1), torch.arange(length).expand(batch, length))
    to_mask = description & (rank < k_mask[:, None])
    to_replace = description & (rank >= k_mask[:, None]) & (rank < (k_mask + k_replace)[:, None])

    title = valid & (roles == ROLE_TITLE)
    attribute = valid & (attr >= 0)
    positions = torch.arange(length)
    for b in range(batch):
        if title_words > 0 and title[b].any():
            keys = (word_ids[b].cpu() if word_ids is not None else positions)[title[b]]
            words = keys.unique()
            picked = words[torch.randperm(len(words))[:title_words]]
            to_mask[b, title[b].nonzero().flatten()[torch.isin(keys, picked)]] = True
        if attribute_values > 0 and attribute[b].any():
            values = attr[b][attribute[b]].unique()
            picked = values[torch.randperm(len(values))[:attribute_values]]
            to_mask[b] |= attribute[b] & torch.isin(attr[b], picked)
    to_replace &= ~to_mask

    masked = to_mask | to_replace
    labels = ids.masked_fill(~masked, -100)
    out = ids.masked_fill(to_mask, mask_token_id)
    out = torch.where(to_replace, torch.randint(vocab_size, ids.shape), out)
    return out.to(device), labels.to(device), masked.to(device)


# ----------------------------------------------------------------------------------------------------------------
# ITM: which text each image is paired with
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def itm_pairs(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    product_ids: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
    negative_fraction: float = 0.5,
    hard: bool = True,
    rows: str = "random",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FashionFAE's ITM pairs: `negative_fraction` of the batch (a random subset, or the last rows with
    `rows="last"`) gets a negative text, the ITC arg-max text (`hard`) or a uniformly random one, never of the same
    product or with identical text (false negatives); rows without any eligible text stay positive. Returns
    `(text_index, labels)`, label 1 = matched."""
    batch = image_embeds.shape[0]
    device = image_embeds.device
    index = torch.arange(batch, device=device)
    if product_ids is None:
        product_ids = index
    excluded = exclusion_mask(product_ids, product_ids, text_ids, text_ids)
    if hard:
        similarity = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).t()
    else:
        similarity = torch.zeros(excluded.shape, device=device)
    negative, valid = sample_negatives(similarity, excluded, hardest=hard)
    n_negative = int(round(batch * negative_fraction))
    if rows == "last":
        chosen = index >= batch - n_negative
    else:
        # A random half: with the last rows, a sampler that orders a batch (e.g. by product) would always give the
        # same kind of row a negative.
        order = torch.randperm(batch, generator=generator).to(device)
        chosen = torch.zeros(batch, dtype=torch.bool, device=device)
        chosen[order[:n_negative]] = True
    is_negative = chosen & valid
    return torch.where(is_negative, negative, index), (~is_negative).long()


# ----------------------------------------------------------------------------------------------------------------
# APIR: the fused CLS that fills masked cells
# ----------------------------------------------------------------------------------------------------------------
class FashionFAEFusedCLS(nn.Module):
    """APIR's fill for masked patches: LN(MLP([t_cls; v_cls]) + t_cls + v_cls), so a masked cell starts from what
    the text (its attributes) and the rest of the image say about the item, and the fusion layers reconstruct it."""

    def __init__(self, hidden_size: int, eps: float = 1e-12):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, text_cls: torch.Tensor, visual_cls: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.mlp(torch.cat([text_cls, visual_cls], dim=-1)) + text_cls + visual_cls)


def apir_fill(visual_tokens: torch.Tensor, cell_mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Replace the masked cells of `visual_tokens` (B, 1 + G*G, D: CLS then cells) by `fill` (B, D). The fill is
    the same vector in every masked cell: call it before the position embeddings are added
    (`FashionFAEModel.embed_visual`), so that the cells stay apart, as in the authors' code."""
    mask = F.pad(cell_mask, (1, 0), value=False).unsqueeze(-1)
    return torch.where(mask, fill.unsqueeze(1).expand_as(visual_tokens), visual_tokens)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class FashionFAEOutput(ModelOutput):
    """`FashionFAEModel` output. Embeddings are L2-normalised; `fusion_last_hidden_state` is [text; CLS_v; cells]."""

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    fusion_last_hidden_state: torch.FloatTensor | None = None


@dataclass
class FashionFAEForPreTrainingOutput(ModelOutput):
    """One pre-training step: `task` is the task run ("itc", "itm", "mlm", "aetp" or "apir"); the loss of each
    task not run is None. `logits`: ITM logits (B, 2), MLM/AETP logits at the masked tokens (n_masked, V) or APIR
    predictions (n_masked, target_dim); `labels`: the targets (MLM/AETP: (B, L), -100 where unmasked, so `logits` are the rows of `labels != -100`);
    `apir_mask`: (B, G*G) masked cells; `loss_apir_contrastive`: APIR's contrastive term alone (unweighted; part of
    `loss_apir`), None when it is off."""

    loss: torch.FloatTensor | None = None
    task: str | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_aetp: torch.FloatTensor | None = None
    loss_apir: torch.FloatTensor | None = None
    loss_apir_contrastive: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.Tensor | None = None
    apir_mask: torch.BoolTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------
def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _image_features(module, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
    """CLIP's contract for every class holding the image tower (`vision_model`, `visual_projection`)."""
    hidden = module.vision_model(pixel_values=pixel_values).last_hidden_state
    return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=module.visual_projection(hidden.mean(1)))


def _text_features(module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> BaseModelOutputWithPooling:
    """CLIP's contract for every class holding the text tower (`text_model`, `text_projection`)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = module.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    pooled = module.text_projection(_mean_pool(hidden, attention_mask))
    return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class FashionFAEPreTrainedModel(PreTrainedModel):
    config_class = FashionFAEConfig
    config: FashionFAEConfig
    base_model_prefix = "fashionfae"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer", "ViTLayer", "BertEmbeddings", "ViTEmbeddings"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The saved `auto_map` names `FashionFAEModel` for AutoModel and zero-shot classification too, so a Hub copy
        of any registered class (e.g. a pretraining checkpoint) loads the encoders with `trust_remote_code=True`."""
        extend_auto_map(
            self, {"AutoModel": FashionFAEModel, "AutoModelForZeroShotImageClassification": FashionFAEModel}
        )
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if init_embeddings(module, self.config.initializer_range):
            return
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, FashionFAEModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    @classmethod
    def from_encoders(cls, config: FashionFAEConfig, vision: str | None = None, text: str | None = None):
        """`config`'s model with either tower (or both) copied from a standard checkpoint (name or folder): a ViT
        for `vision`, a BERT for `text` (e.g. the offline MiniLM folder). The config's widths must match them; the
        same entry point as `SyncMaskForPreTraining.from_encoders`, used by examples/pretrain.py."""
        model = cls(config)
        base = model if isinstance(model, FashionFAEModel) else model.fashionfae
        if vision:
            tower = ViTModel.from_pretrained(vision, add_pooling_layer=False, use_mask_token=True)
            base.vision_model.load_state_dict(tower.state_dict())
        if text:
            tower = BertModel.from_pretrained(text, add_pooling_layer=False)
            depth = config.text_config.num_hidden_layers
            if depth > tower.config.num_hidden_layers:
                raise ValueError(
                    f"text_config has {depth} layers but the checkpoint {text!r} only "
                    f"{tower.config.num_hidden_layers}: build the config with BertConfig.from_pretrained({text!r})"
                )
            # A shallower config takes the checkpoint's first layers (e.g. fashionfae-tiny's 2 of MiniLM's 6).
            state = {
                k: v
                for k, v in tower.state_dict().items()
                if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < depth
            }
            base.text_model.load_state_dict(state)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        # Which parameters start from a checkpoint (e.g. for a lower learning rate on them); not saved.
        prefix = "" if base is model else "fashionfae."
        model.checkpoint_parameters = frozenset(
            f"{prefix}{tower}.{k}"
            for tower, given in (("vision_model", vision), ("text_model", text))
            if given
            for k, _ in getattr(base, tower).named_parameters()
        )
        return model

    @classmethod
    def from_vision_text_pretrained(cls, vision_name_or_path: str, text_name_or_path: str, **config_kwargs):
        """Start from a pretrained ViT (paper: google/vit-base-patch16-224-in21k) and BERT (paper:
        bert-base-uncased); the fusion-specific parts start random. Works for `FashionFAEForPreTraining` too."""
        vision = ViTModel.from_pretrained(vision_name_or_path, add_pooling_layer=False, use_mask_token=True)
        text = BertModel.from_pretrained(text_name_or_path, add_pooling_layer=False)
        config = FashionFAEConfig(
            vision_config=vision.config.to_dict(), text_config=text.config.to_dict(), **config_kwargs
        )
        model = cls(config)
        base = model if isinstance(model, FashionFAEModel) else model.fashionfae
        base.vision_model.load_state_dict(vision.state_dict())
        base.text_model.load_state_dict(text.state_dict())
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return model


class FashionFAEModel(FashionFAEPreTrainedModel):
    """ViT image encoder + one BERT that encodes text alone (for ITC) and fuses [text; visual] in a single stream.

    Visual tokens for fusion are the ViT CLS plus the patch grid average-pooled to `fusion_grid` x `fusion_grid`,
    projected to BERT's width (`project_visual`), given their own position embedding and token type 1 and
    layer-normed (`embed_visual`), then appended after the text embeddings. APIR fills masked cells between the two.
    """

    # A pretraining folder's heads are not part of the model: loading one here skips them quietly.
    _keys_to_ignore_on_load_unexpected = [
        r"^(mlm_head|itm_head|aetp_projection|apir_fused_cls|apir_projection|apir_head)\."
    ]

    def __init__(self, config: FashionFAEConfig):
        super().__init__(config)
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False, use_mask_token=True)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.visual_fusion_projection = nn.Linear(vision_width, text_width)
        # Positions of [CLS, cell 0 .. cell G*G-1] in fusion; added after APIR's fill so masked cells differ.
        self.visual_position_embeddings = nn.Embedding(1 + config.fusion_grid**2, text_width)
        self.visual_fusion_layernorm = nn.LayerNorm(text_width, eps=config.text_config.layer_norm_eps)
        self.visual_fusion_dropout = nn.Dropout(config.text_config.hidden_dropout_prob)
        self.visual_projection = nn.Linear(vision_width, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    # -- unimodal -------------------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, cell_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ViT hidden states (B, 1 + P*P, Dv); `cell_mask` (B, G*G) replaces the patches of masked fusion cells by
        ViT's mask token at the input, so nothing of a masked cell leaks into the features."""
        bool_masked_pos = None
        if cell_mask is not None:
            grid, side = self.config.fusion_grid, self.config.patches_per_side
            scale = side // grid
            bool_masked_pos = (
                cell_mask.view(-1, grid, 1, grid, 1).expand(-1, grid, scale, grid, scale).reshape(-1, side * side)
            )
        return self.vision_model(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BERT over the text alone: (B, L, Dt)."""
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _mean_pool(hidden, mask)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """CLIP's interface: `pooler_output` = projection of the mean-pooled ViT tokens (not normalised)."""
        return _image_features(self, pixel_values)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """CLIP's interface: `pooler_output` = projection of the mean-pooled text tokens (not normalised)."""
        return _text_features(self, input_ids, attention_mask)

    def itc_scale(self) -> torch.Tensor:
        """The learnable logit scale in log space, clamped to at most log(100) as in CLIP."""
        return self.logit_scale.clamp(max=math.log(100.0))

    # -- fusion ---------------------------------------------------------------------------------------------------
    def project_visual(self, vision_hidden: torch.Tensor) -> torch.Tensor:
        """ViT states -> (B, 1 + G*G, Dt): CLS + grid-pooled patches projected to BERT's width (no positions)."""
        grid, side = self.config.fusion_grid, self.config.patches_per_side
        cls, patches = vision_hidden[:, :1], vision_hidden[:, 1:]
        b, _, d = patches.shape
        patches = patches.transpose(1, 2).reshape(b, d, side, side)
        pooled = F.adaptive_avg_pool2d(patches, grid).flatten(2).transpose(1, 2)
        return self.visual_fusion_projection(torch.cat([cls, pooled], dim=1))

    def embed_visual(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens -> fusion inputs: + position embedding + token type 1, layer norm, dropout."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        type_ids = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        tokens = tokens + self.visual_position_embeddings(positions)
        tokens = tokens + self.text_model.embeddings.token_type_embeddings(type_ids)
        return self.visual_fusion_dropout(self.visual_fusion_layernorm(tokens))

    def visual_tokens(self, vision_hidden: torch.Tensor) -> torch.Tensor:
        """ViT states -> fusion tokens (B, 1 + G*G, Dt): `embed_visual(project_visual(vision_hidden))`."""
        return self.embed_visual(self.project_visual(vision_hidden))

    def run_text_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, end: int | None = None):
        """BERT layers [start, end) over `hidden` with a 2-D padding mask (gradient checkpointing per layer)."""
        layers = self.text_model.encoder.layer[start:end]
        if len(layers) == 0:
            return hidden
        attention = create_bidirectional_mask(config=self.text_model.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in layers:
            hidden = layer(hidden, attention)
        return hidden

    def fuse(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor,
        start_layer: int = 0,
    ) -> torch.Tensor:
        """Single-stream fusion: [text; visual] through BERT layers `start_layer`.. (text embeddings or the text's
        states after `start_layer` text-only layers). Returns (B, L + 1 + G*G, Dt)."""
        hidden = torch.cat([text_hidden, visual_tokens], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(visual_tokens.shape[:2])], dim=1)
        return self.run_text_layers(hidden, mask, start_layer)

    def fuse_pair(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision_hidden: torch.Tensor
    ) -> torch.Tensor:
        """Fusion of a text with an image from the first BERT layer on (used by ITM and MLM/AETP)."""
        text = self.text_model.embeddings(input_ids=input_ids)
        return self.fuse(text, attention_mask, self.visual_tokens(vision_hidden), 0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        product_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        **kwargs,
    ) -> FashionFAEOutput:
        """Unimodal embeddings (normalised), ITC logits between every image and text and, when there are as many
        images as texts, the fused [text; visual] states of the pairs (image i, text i)."""
        if input_ids is None or pixel_values is None:
            raise ValueError("FashionFAEModel.forward needs input_ids and pixel_values (use get_*_features for one)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vision_hidden = self.encode_image(pixel_values)
        text_hidden = self.encode_text(input_ids, attention_mask)
        image_embeds = F.normalize(self.visual_projection(vision_hidden.mean(1)), dim=-1)
        text_embeds = F.normalize(self.text_projection(self.mean_pool(text_hidden, attention_mask)), dim=-1)
        scale = self.itc_scale()
        logits_per_text = scale.exp() * text_embeds @ image_embeds.t()
        loss = clip_contrastive_loss(image_embeds, text_embeds, scale, product_ids) if return_loss else None
        # Pairs are fused only when there are as many images as texts (zero-shot scores 1 image against N texts).
        fused = None
        if input_ids.shape[0] == pixel_values.shape[0]:
            fused = self.fuse_pair(input_ids, attention_mask, vision_hidden)
        return FashionFAEOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            fusion_last_hidden_state=fused,
        )


class FashionFAEForPreTraining(FashionFAEPreTrainedModel):
    """FashionFAE pre-training: ITC, ITM (hard negatives), MLM or AETP, and APIR or plain MIM, one task per step.

    `forward(..., task=None)` draws the task from `FashionFAETaskSampler` (config.task_probs); pass `task` to run
    one explicitly. The "mlm" slot runs AETP when `config.aetp` (and plain MLM otherwise); `task="aetp"` forces AETP.
    The "apir" slot runs APIR when `config.apir` and plain MIM otherwise. A step's `loss` is that task's loss.
    """

    _tied_weights_keys = {
        "mlm_head.predictions.decoder.weight": "fashionfae.text_model.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }

    def __init__(self, config: FashionFAEConfig):
        super().__init__(config)
        text_width = config.text_config.hidden_size
        eps = config.text_config.layer_norm_eps
        self.fashionfae = FashionFAEModel(config)
        self.mlm_head = BertOnlyMLMHead(config.text_config)
        self.itm_head = nn.Linear(text_width, 2)
        self.aetp_projection = nn.Linear(text_width, config.embed_dim, bias=False)
        self.apir_fused_cls = FashionFAEFusedCLS(text_width, eps)
        self.apir_projection = nn.Linear(text_width, config.embed_dim, bias=False)
        self.apir_head = nn.Sequential(
            nn.Linear(text_width, text_width),
            nn.GELU(),
            nn.LayerNorm(text_width, eps=eps),
            nn.Linear(text_width, self.apir_target_dim(config)),
        )
        self.task_sampler = FashionFAETaskSampler(config.task_probs, seed=config.task_sampler_seed)
        self._vq_tokenizer = None
        self.post_init()

    @staticmethod
    def apir_target_dim(config: FashionFAEConfig) -> int:
        if config.apir_target == "vq":
            return config.apir_vq_num_codes
        if config.apir_target == "teacher_features":
            return config.vision_config.hidden_size
        cell = config.patches_per_side // config.fusion_grid * config.vision_config.patch_size
        return config.vision_config.num_channels * cell * cell

    # CLIP's interface on the pretraining checkpoint too, so retrieval evaluation and the demo take either class.
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.fashionfae.get_image_features(pixel_values, **kwargs)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.fashionfae.get_text_features(input_ids, attention_mask, **kwargs)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.fashionfae.logit_scale

    def get_output_embeddings(self):
        return self.mlm_head.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.predictions.decoder = new_embeddings
        self.mlm_head.predictions.bias = new_embeddings.bias

    @property
    def special_ids(self) -> list[int]:
        c = self.config
        return [c.text_config.pad_token_id or 0, c.cls_token_id, c.sep_token_id, c.mask_token_id]

    # -- APIR's VQ tokenizer --------------------------------------------------------------------------------------
    def set_vq_tokenizer(self, tokenizer: nn.Module | None) -> None:
        """Attach the frozen VQ tokenizer APIR predicts the codes of (pixel_values -> (B, G*G) long codes). It is
        kept out of the state dict (never saved with the weights)."""
        if tokenizer is not None:
            tokenizer.eval().requires_grad_(False)
        # object.__setattr__: a plain attribute, not a registered submodule, so it stays out of the state dict.
        object.__setattr__(self, "_vq_tokenizer", tokenizer)

    def vq_tokenizer(self) -> nn.Module | None:
        if self._vq_tokenizer is None and self.config.apir_vq_tokenizer:
            module_name, _, factory = self.config.apir_vq_tokenizer.partition(":")
            self.set_vq_tokenizer(getattr(importlib.import_module(module_name), factory)())
        return self._vq_tokenizer

    # -- the tasks ------------------------------------------------------------------------------------------------
    def _itc(self, pixel_values, input_ids, attention_mask, product_ids):
        base = self.fashionfae
        image = F.normalize(base.get_image_features(pixel_values).pooler_output, dim=-1)
        text = F.normalize(base.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
        return clip_contrastive_loss(image, text, base.itc_scale(), product_ids)

    def _itm(self, pixel_values, input_ids, attention_mask, product_ids, text_ids):
        base = self.fashionfae
        vision_hidden = base.encode_image(pixel_values)
        with torch.no_grad():
            image = base.visual_projection(vision_hidden.mean(1))
            text = base.get_text_features(input_ids, attention_mask).pooler_output
            text_index, labels = itm_pairs(
                image,
                text,
                product_ids,
                text_ids,
                self.config.itm_negative_fraction,
                self.config.itm_hard_negatives,
                rows=self.config.itm_negative_rows,
            )
        fused = base.fuse_pair(input_ids[text_index], attention_mask[text_index], vision_hidden)
        logits = self.itm_head(fused[:, 0])
        return itm_loss(logits, labels), logits, labels

    def _mlm_slot(
        self, pixel_values, input_ids, attention_mask, product_ids, token_roles, attribute_ids, word_ids, use_aetp
    ):
        """Plain MLM (random `mlm_probability`, BERT corruption) or AETP (attribute-emphasized masking; CE plus the
        contrastive term between the complete text's unimodal embedding and the masked text's fused embedding)."""
        base, c = self.fashionfae, self.config
        if use_aetp:
            if token_roles is None or attribute_ids is None:
                raise ValueError(
                    "AETP needs `token_roles` and `attribute_ids` (the processor's attribute-templated text): pass "
                    "them, or set config.aetp=False to train the MLM slot with plain random masking"
                )
            masked_ids, labels, _ = aetp_mask(
                input_ids, attention_mask, token_roles, attribute_ids,
                mask_token_id=c.mask_token_id, vocab_size=c.text_config.vocab_size, special_ids=self.special_ids,
                description_mask_ratio=c.aetp_description_mask_ratio,
                description_replace_ratio=c.aetp_description_replace_ratio,
                title_words=c.aetp_title_words, attribute_values=c.aetp_attribute_values, word_ids=word_ids,
            )  # fmt: skip
        else:
            eligible = eligible_tokens(input_ids, attention_mask, self.special_ids)
            masked_ids, labels = apply_token_mask(
                input_ids, random_mask(eligible, c.mlm_probability), c.mask_token_id, c.text_config.vocab_size
            )
        vision_hidden = base.encode_image(pixel_values)
        fused = base.fuse_pair(masked_ids, attention_mask, vision_hidden)
        text_states = fused[:, : input_ids.shape[1]]
        # The vocabulary projection only at the masked tokens: the same loss as over all positions, ~7x cheaper.
        selected = labels != -100
        logits = self.mlm_head(text_states[selected])
        loss = masked_lm_loss(logits, labels[selected])
        if use_aetp and c.aetp_contrastive_weight > 0:
            fused_text = F.normalize(self.aetp_projection(base.mean_pool(text_states, attention_mask)), dim=-1)
            unimodal = F.normalize(base.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
            loss = loss + c.aetp_contrastive_weight * clip_contrastive_loss(
                fused_text, unimodal, base.itc_scale(), product_ids
            )
        return loss, logits, labels

    def _apir_target(self, pixel_values, apir_labels):
        c, grid = self.config, self.config.fusion_grid
        if c.apir_target == "vq":
            codes = apir_labels
            if codes is None:
                tokenizer = self.vq_tokenizer()
                if tokenizer is None:
                    raise ValueError(
                        "apir_target='vq' needs codes: pass apir_labels (B, fusion_grid**2), attach a tokenizer with "
                        "model.set_vq_tokenizer(module) or set config.apir_vq_tokenizer='module:factory'; or use "
                        "apir_target='pixels' / 'teacher_features'"
                    )
                with torch.no_grad():
                    codes = tokenizer.to(pixel_values.device)(pixel_values)
            if codes.shape != (pixel_values.shape[0], grid * grid):
                raise ValueError(f"VQ codes must have shape (batch, {grid * grid}), got {tuple(codes.shape)}")
            if codes.min() < 0 or codes.max() >= c.apir_vq_num_codes:
                raise ValueError(f"VQ codes must lie in [0, {c.apir_vq_num_codes}) (config.apir_vq_num_codes)")
            return codes.long()
        if c.apir_target == "teacher_features":
            with torch.no_grad():
                hidden = self.fashionfae.encode_image(pixel_values)
                side = c.patches_per_side
                patches = hidden[:, 1:].transpose(1, 2).reshape(hidden.shape[0], -1, side, side)
                cells = F.adaptive_avg_pool2d(patches, grid).flatten(2).transpose(1, 2)
                return F.layer_norm(cells, cells.shape[-1:])
        # the pixels of each fusion-grid cell, row-major like the cells
        h, w = pixel_values.shape[-2:]
        pixels = patchify(pixel_values, (h // grid, w // grid), channels_first=True)
        mean, var = pixels.mean(dim=-1, keepdim=True), pixels.var(dim=-1, keepdim=True)
        return (pixels - mean) / (var + 1e-6).sqrt()

    def _apir_slot(self, pixel_values, input_ids, attention_mask, product_ids, apir_labels):
        """APIR (config.apir): block mask of `apir_num_masked` cells; the text runs `apir_text_layer` text-only
        layers, the masked cells are filled with the fused CLS of that text CLS and the visual CLS, the position
        embeddings are added after the fill, and the rest of BERT fuses [text; visual]. The loss is the masked
        cells' reconstruction plus `apir_contrastive_weight` x a contrastive term between the complete image's
        unimodal embedding and the masked image's fused visual mean (the authors' code). Plain MIM (apir=False):
        the same number of random cells, ViT mask token only, fusion from the first layer, reconstruction only."""
        base, c = self.fashionfae, self.config
        batch, cells = pixel_values.shape[0], c.fusion_grid**2
        if c.apir:
            cell_mask = block_mask(c.fusion_grid, c.apir_num_masked, batch, device=pixel_values.device)
        else:
            eligible = torch.ones(batch, cells, dtype=torch.bool, device=pixel_values.device)
            cell_mask = random_mask(eligible, c.apir_num_masked / cells)
        target = self._apir_target(pixel_values, apir_labels)
        projected = base.project_visual(base.encode_image(pixel_values, cell_mask))
        start = c.apir_text_layer if c.apir else 0
        text = base.run_text_layers(base.text_model.embeddings(input_ids=input_ids), attention_mask, 0, start)
        if c.apir:
            projected = apir_fill(projected, cell_mask, self.apir_fused_cls(text[:, 0], projected[:, 0]))
        fused = base.fuse(text, attention_mask, base.embed_visual(projected), start)
        visual_states = fused[:, input_ids.shape[1] :]
        predictions = self.apir_head(visual_states[:, 1:][cell_mask])
        target = target[cell_mask]
        if c.apir_target == "vq":
            loss = F.cross_entropy(predictions.float(), target)
        else:
            loss = F.mse_loss(predictions.float(), target.float())
        contrastive = None
        if c.apir and c.apir_contrastive_weight > 0:
            fused_image = F.normalize(self.apir_projection(visual_states.mean(dim=1)), dim=-1)
            unimodal = F.normalize(base.get_image_features(pixel_values).pooler_output, dim=-1)
            contrastive = clip_contrastive_loss(fused_image, unimodal, base.itc_scale(), product_ids)
            loss = loss + c.apir_contrastive_weight * contrastive
        return loss, predictions, target, cell_mask, contrastive

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        product_ids: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        token_roles: torch.Tensor | None = None,
        attribute_ids: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        apir_labels: torch.Tensor | None = None,
        task: str | None = None,
        **kwargs,
    ) -> FashionFAEForPreTrainingOutput:
        """Run one pre-training task (`task`, or one drawn by the task sampler when None) and return its loss."""
        if task is None:
            task = self.task_sampler.sample()
        if task not in TASKS:
            raise ValueError(f"unknown FashionFAE task {task!r}: choose one of {list(TASKS)} or None (sampled)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = {"task": task}
        if task == "itc":
            out["loss"] = out["loss_itc"] = self._itc(pixel_values, input_ids, attention_mask, product_ids)
        elif task == "itm":
            loss, out["logits"], out["labels"] = self._itm(
                pixel_values, input_ids, attention_mask, product_ids, text_ids
            )
            out["loss"] = out["loss_itm"] = loss
        elif task in ("mlm", "aetp"):
            use_aetp = task == "aetp" or self.config.aetp
            loss, out["logits"], out["labels"] = self._mlm_slot(
                pixel_values, input_ids, attention_mask, product_ids, token_roles, attribute_ids, word_ids, use_aetp
            )
            out["task"] = "aetp" if use_aetp else "mlm"
            out["loss"] = out["loss_aetp" if use_aetp else "loss_mlm"] = loss
        else:
            loss, out["logits"], out["labels"], out["apir_mask"], out["loss_apir_contrastive"] = self._apir_slot(
                pixel_values, input_ids, attention_mask, product_ids, apir_labels
            )
            out["loss"] = out["loss_apir"] = loss
        return FashionFAEForPreTrainingOutput(**out)


class FashionFAEVisionModelWithProjection(ImageTowerMixin, FashionFAEPreTrainedModel):
    """The image tower and its ITC projection alone (CLIPVisionModelWithProjection's role), for
    `pipeline("image-feature-extraction", model=...)`: `forward(pixel_values)` returns `get_image_features`. Loads
    from any FashionFAE folder (base or pretraining); other weights are skipped."""

    _keys_to_ignore_on_load_unexpected = [r"^(?!vision_model\.|visual_projection\.)"]

    def __init__(self, config: FashionFAEConfig):
        super().__init__(config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False, use_mask_token=True)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.embed_dim, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return _image_features(self, pixel_values)


class FashionFAETextModelWithProjection(TextTowerMixin, FashionFAEPreTrainedModel):
    """The text tower (BERT over the text alone) and its ITC projection (CLIPTextModelWithProjection's role):
    `forward(input_ids, attention_mask)` returns `get_text_features`. Loads from any FashionFAE folder."""

    _keys_to_ignore_on_load_unexpected = [r"^(?!text_model\.|text_projection\.)"]

    def __init__(self, config: FashionFAEConfig):
        super().__init__(config)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.embed_dim, bias=False)
        self.post_init()

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return _text_features(self, input_ids, attention_mask)


# save_pretrained writes `auto_map` and copies this code, so Hub copies load with trust_remote_code=True.
FashionFAEConfig.register_for_auto_class()
FashionFAEModel.register_for_auto_class("AutoModel")
FashionFAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "FashionFAEForPreTraining",
    "FashionFAEModel",
    "FashionFAEVisionModelWithProjection",
    "FashionFAETextModelWithProjection",
    "FashionFAEPreTrainedModel",
    "FashionFAEFusedCLS",
    "aetp_mask",
    "apir_fill",
    "itm_pairs",
]
