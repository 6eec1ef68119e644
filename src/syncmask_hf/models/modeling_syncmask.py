"""SyncMask (CVPR 2024, arXiv 2404.01156): ALBEF's ViT + BERT + cross-attention fusion, a momentum teacher, and
synchronized attentional masks for MLM and MIM.

Where each idea lives:
- the masks: `masking.synchronized_masks` (switch to the random baseline with `config.masking_strategy="random"`);
- multi-positive, momentum-distilled ITC and semi-hard ITM negatives: `losses.py` (`contrastive_loss`,
  `exclusion_mask`, `sample_negatives`), composed in `SyncMaskForPreTraining._itc_loss` / `_itm_loss`;
- the EMA teacher and feature queues: `momentum.py`, driven by `SyncMaskForPreTraining.update_teacher()`.

The fusion layers are transformers' own `BertLayer` with cross-attention (weights named as in BERT, so that
`from_encoders` initialises text layers 0..n-1 and fusion layers n..n+m-1 from one BERT checkpoint, as ALBEF does).
They run with eager attention so that their cross-attention maps can be read.

Hub copies are flat: this file imports only its siblings and transformers / torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel, ViTModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.models.bert.modeling_bert import BertLayer, BertOnlyMLMHead

from .configuration_syncmask import SyncMaskConfig
from .losses import (
    contrastive_loss,
    exclusion_mask,
    gather_no_grad,
    gather_with_grad,
    itm_loss,
    masked_lm_loss,
    multi_positive_targets,
    positive_targets,
    rank_offset,
    same_id_mask,
    sample_negatives,
    soft_cross_entropy,
    token_overlap,
    world_size,
)
from .masking import apply_token_mask, eligible_tokens, random_mask, synchronized_masks
from .modeling_utils import ImageTowerMixin, TextTowerMixin, extend_auto_map, init_embeddings, patchify
from .momentum import FeatureQueue, ema_update, make_teacher

# --------------------------------------------------------------------------------------------------- outputs


@dataclass
class SyncMaskModelOutput(ModelOutput):
    """Outputs of `SyncMaskModel`: normalised ITC embeddings, their similarity logits, hidden states, and (when
    `output_attentions=True`) the fusion layers' text->image cross-attention maps."""

    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_last_hidden_state: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    fusion_last_hidden_state: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SyncMaskForPreTrainingOutput(ModelOutput):
    """`loss` = weighted sum of the four terms. `itm_negative_share`: the share of ITM rows (images and texts) that
    found a negative; near 0 means ITM learns "always match". Masks and the scores they came from are set with
    `output_masks` (scores are None for the random strategy)."""

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_mim: torch.FloatTensor | None = None
    itm_negative_share: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    patch_mask: torch.BoolTensor | None = None
    token_scores: torch.FloatTensor | None = None
    patch_scores: torch.FloatTensor | None = None


@dataclass
class SyncMaskRetrievalOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_score: torch.FloatTensor | None = None
    similarity: torch.FloatTensor | None = None


@dataclass
class SyncMaskTextGuidedRetrievalOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    target_embeds: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


@dataclass
class SyncMaskClassificationOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    category_logits: torch.FloatTensor | None = None
    subcategory_logits: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------- helpers


def _text_only_config(config: SyncMaskConfig):
    text_config = copy.deepcopy(config.text_config)
    text_config.num_hidden_layers = config.num_text_layers
    return text_config


def _fusion_config(config: SyncMaskConfig):
    """BERT layer config with cross-attention. `is_decoder` is only transformers' switch for adding cross-attention:
    every mask passed to these layers is explicit and bidirectional, and attention is eager (maps are read)."""
    fusion_config = copy.deepcopy(config.text_config)
    fusion_config.is_decoder = True
    fusion_config.add_cross_attention = True
    fusion_config._attn_implementation = "eager"
    return fusion_config


def _extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 mask -> (B, 1, 1, L) additive mask for eager attention."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def pool_image(image_hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """The image's summary vector: ViT's [CLS] (ALBEF, `pooling="cls"`) or the mean of its patch tokens."""
    if pooling == "cls":
        return image_hidden[:, 0]
    return image_hidden[:, 1:].mean(dim=1)


def pool_text(text_hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """The text's summary vector: BERT's [CLS] (ALBEF) or the mean over its attended tokens. Why the presets use
    the mean: from scratch, [CLS] after a shallow text stack is nearly the same vector for every text (cosine >=
    0.999 after 150 steps on H&M) and ITC cannot leave that point; token means differ per text."""
    if pooling == "cls":
        return text_hidden[:, 0]
    if attention_mask is None:
        return text_hidden.mean(dim=1)
    weights = attention_mask.to(text_hidden.dtype).unsqueeze(-1)
    return (text_hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _image_features(model, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
    """CLIP's contract, for every class that holds the image tower (`vision_model`, `vision_proj`)."""
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state
    return BaseModelOutputWithPooling(
        last_hidden_state=hidden, pooler_output=model.vision_proj(pool_image(hidden, model.config.pooling))
    )


def _text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> BaseModelOutputWithPooling:
    """CLIP's contract, for every class that holds the text tower (`text_model`, `text_proj`)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    pooled = model.text_proj(pool_text(hidden, attention_mask, model.config.pooling))
    return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


# --------------------------------------------------------------------------------------------------- base


class SyncMaskPreTrainedModel(PreTrainedModel):
    config: SyncMaskConfig
    config_class = SyncMaskConfig
    base_model_prefix = "syncmask"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer", "ViTLayer", "ViTEmbeddings", "BertEmbeddings"]
    # The momentum teacher and its MLM head are training state, saved only with `config.save_teacher`.
    _keys_to_ignore_on_load_missing = [r"^teacher(_mlm_head)?\."]
    _keys_to_ignore_on_load_unexpected = [r"^teacher(_mlm_head)?\."]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The saved `auto_map` names `SyncMaskModel` for AutoModel and zero-shot classification too, so a Hub copy
        of any registered class (e.g. a pretraining checkpoint) loads the encoders with `trust_remote_code=True`."""
        extend_auto_map(self, {"AutoModel": SyncMaskModel, "AutoModelForZeroShotImageClassification": SyncMaskModel})
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if init_embeddings(module, self.config.initializer_range):
            return
        if isinstance(module, SyncMaskModel):
            module.temp.fill_(self.config.temp)
        elif isinstance(module, FeatureQueue):
            for name in module.names:
                queue = getattr(module, f"{name}_queue")
                queue.copy_(F.normalize(torch.randn_like(queue), dim=-1))
            module.id_queue.fill_(-1)
            module.ptr.zero_()
            module.filled.zero_()


# --------------------------------------------------------------------------------------------------- base model


class SyncMaskModel(SyncMaskPreTrainedModel):
    """ViT image encoder, BERT text encoder (text-only layers) and fusion layers (text cross-attends to image).

    CLIP's interface: `get_image_features`, `get_text_features` (`pooler_output` in the ITC space, not normalised),
    `logit_scale`, and `get_itm_score` (probability that each image-text pair matches, from the fusion encoder).
    """

    # A pretraining folder's heads and teacher are not part of the encoders: loading one here skips them quietly.
    _keys_to_ignore_on_load_unexpected = [r"^(teacher|teacher_mlm_head|mlm_head|mim_decoder|mim_head)\."]

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False, use_mask_token=True)
        self.text_model = BertModel(_text_only_config(config), add_pooling_layer=False)
        fusion_config = _fusion_config(config)
        self.fusion_layers = nn.ModuleList(
            [BertLayer(fusion_config, layer_idx=i) for i in range(config.num_fusion_layers)]
        )
        vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        # ALBEF has equal widths; a projection lets e.g. ViT-B (768) feed MiniLM (384).
        self.image_to_text = nn.Linear(vision_width, text_width) if vision_width != text_width else nn.Identity()
        self.vision_proj = nn.Linear(vision_width, config.embed_dim)
        self.text_proj = nn.Linear(text_width, config.embed_dim)
        self.itm_head = nn.Linear(text_width, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temp)))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    # -- building blocks (used by every head and by the pretraining objectives)
    def encode_image(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """ViT last hidden state (B, 1 + P, Dv); masked patches (for MIM) are replaced by ViT's mask token."""
        return self.vision_model(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def fuse(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_hidden: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the fusion layers; returns the fused text states and, if asked, every layer's cross-attention
        (B, heads, L, 1 + P), read from BertCrossAttention's eager output with forward hooks."""
        image_states = self.image_to_text(image_hidden)
        mask = _extended_mask(attention_mask, text_hidden.dtype)
        maps: list[torch.Tensor] = []
        hooks = []
        if output_attentions:
            for layer in self.fusion_layers:
                hooks.append(layer.crossattention.self.register_forward_hook(lambda _m, _i, out: maps.append(out[1])))
        try:
            hidden = text_hidden
            for layer in self.fusion_layers:
                hidden = layer(hidden, mask, image_states)
        finally:
            for hook in hooks:
                hook.remove()
        return hidden, tuple(maps)

    def pool_image(self, image_hidden: torch.Tensor) -> torch.Tensor:
        return pool_image(image_hidden, self.config.pooling)

    def pool_text(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return pool_text(text_hidden, attention_mask, self.config.pooling)

    def embed_image(self, image_hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(self.pool_image(image_hidden)), dim=-1)

    def embed_text(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.text_proj(self.pool_text(text_hidden, attention_mask)), dim=-1)

    # -- public API: CLIP's (transformers 5) contract, as E2 and FashionFAE
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """`pooler_output`: the (B, embed_dim) image embedding in the ITC space, not normalised (normalise before
        taking cosines); `last_hidden_state`: ViT's states."""
        return _image_features(self, pixel_values)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """`pooler_output`: the (B, embed_dim) text embedding in the ITC space, not normalised; `last_hidden_state`:
        the text-only layers' states."""
        return _text_features(self, input_ids, attention_mask)

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's name for the contrastive scale: log(1 / temp), with `temp` clamped as in training."""
        return -torch.log(self.temp.clamp(self.config.temp_min, self.config.temp_max))

    def itm_logits(self, image_hidden: torch.Tensor, text_hidden: torch.Tensor, attention_mask: torch.Tensor):
        fused, _ = self.fuse(text_hidden, attention_mask, image_hidden)
        return self.itm_head(fused[:, 0])

    def get_itm_score(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Probability (B,) that image i and text i match, from the fusion encoder's ITM head."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.itm_logits(
            self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask), attention_mask
        )
        return logits.softmax(dim=-1)[:, 1]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SyncMaskModelOutput:
        """Encode whatever is given. With both modalities: ITC logits between all images and texts, and the fusion
        of each pair (image i, text i) with its ITM logits."""
        out = SyncMaskModelOutput()
        image_hidden = text_hidden = None
        if pixel_values is not None:
            image_hidden = self.encode_image(pixel_values)
            out.vision_last_hidden_state = image_hidden
            out.image_embeds = self.embed_image(image_hidden)
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_hidden = self.encode_text(input_ids, attention_mask)
            out.text_last_hidden_state = text_hidden
            out.text_embeds = self.embed_text(text_hidden, attention_mask)
        if image_hidden is not None and text_hidden is not None:
            temp = self.temp.clamp(self.config.temp_min, self.config.temp_max)
            out.logits_per_image = out.image_embeds @ out.text_embeds.t() / temp
            out.logits_per_text = out.logits_per_image.t()
            if image_hidden.shape[0] == text_hidden.shape[0]:
                fused, maps = self.fuse(text_hidden, attention_mask, image_hidden, output_attentions)
                out.fusion_last_hidden_state = fused
                out.itm_logits = self.itm_head(fused[:, 0])
                out.cross_attentions = maps if output_attentions else None
        return out


class SyncMaskVisionModelWithProjection(ImageTowerMixin, SyncMaskPreTrainedModel):
    """The image tower and its ITC projection alone (CLIPVisionModelWithProjection's role), for
    `pipeline("image-feature-extraction", model=...)`: `forward(pixel_values)` returns `get_image_features`
    (`pooler_output` = the ITC embedding, `last_hidden_state` = ViT's states). Loads from any SyncMask folder
    (base or pretraining); the text tower's and heads' weights are skipped."""

    _keys_to_ignore_on_load_unexpected = [r"^(?!(syncmask\.)?vision_(model|proj)\.)"]

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False, use_mask_token=True)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return _image_features(self, pixel_values)


class SyncMaskTextModelWithProjection(TextTowerMixin, SyncMaskPreTrainedModel):
    """The text-only layers and their ITC projection alone (CLIPTextModelWithProjection's role): `forward(input_ids,
    attention_mask)` returns `get_text_features`. Loads from any SyncMask folder; other weights are skipped."""

    _keys_to_ignore_on_load_unexpected = [r"^(?!(syncmask\.)?text_(model|proj)\.)"]

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.text_model = BertModel(_text_only_config(config), add_pooling_layer=False)
        self.text_proj = nn.Linear(config.text_config.hidden_size, config.embed_dim)
        self.post_init()

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return _text_features(self, input_ids, attention_mask)


# --------------------------------------------------------------------------------------------------- pretraining


class SyncMaskForPreTraining(SyncMaskPreTrainedModel):
    """SyncMask pretraining: ITC + ITM + MLM + MIM with a momentum teacher.

    Training loop contract: after each `optimizer.step()` call `model.update_teacher()` (with Accelerate:
    `accelerator.unwrap_model(model).update_teacher()`), once per optimizer step, not per micro-batch.

    The teacher (`self.teacher`, a frozen `SyncMaskModel`, and `self.teacher_mlm_head`) is always in eval mode
    (deterministic attention maps and targets). It is not written by `save_pretrained` unless `config.save_teacher=True`; without it, loading copies the
    student into the teacher. The queues are non-persistent buffers (training state).
    """

    _tied_weights_keys = {
        "mlm_head.predictions.decoder.weight": "syncmask.text_model.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.syncmask = SyncMaskModel(config)
        self.mlm_head = BertOnlyMLMHead(config.text_config)
        fusion_config = _fusion_config(config)
        self.mim_decoder = nn.ModuleList(
            [BertLayer(fusion_config, layer_idx=i) for i in range(config.mim_decoder_layers)]
        )
        patch_size = config.vision_config.patch_size
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        self.patch_size = patch_size
        target_dim = (
            patch_size * patch_size * config.vision_config.num_channels
            if config.mim_target == "pixels"
            else config.vision_config.hidden_size
        )
        self.mim_head = nn.Linear(config.text_config.hidden_size, target_dim)
        self.queue = FeatureQueue(config.queue_size, {"image": config.embed_dim, "text": config.embed_dim})
        self.register_buffer("num_teacher_updates", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("num_samples_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.post_init()
        self.teacher = make_teacher(self.syncmask)
        self.teacher.eval()
        # ALBEF's momentum MLM head: the soft targets of MLM distillation (`config.distill_mlm`).
        self.teacher_mlm_head = make_teacher(self.mlm_head)
        self.teacher_mlm_head.eval()

    # -- CLIP's interface on the pretraining model too (the student's)
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.syncmask.get_image_features(pixel_values)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.syncmask.get_text_features(input_ids, attention_mask)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.syncmask.logit_scale

    # -- teacher management
    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student into the teacher exactly (done on load when the checkpoint holds no teacher)."""
        for t, s in zip(self.teacher.parameters(), self.syncmask.parameters()):
            t.copy_(s)
        for t, s in zip(self.teacher.buffers(), self.syncmask.buffers()):
            t.copy_(s)
        ema_update(self.teacher_mlm_head, self.mlm_head, 0.0)  # momentum 0: an exact copy

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """EMA step: teacher <- m * teacher + (1 - m) * student. Call once per optimizer step."""
        momentum = self.config.momentum if momentum is None else momentum
        ema_update(self.teacher, self.syncmask, momentum)
        ema_update(self.teacher_mlm_head, self.mlm_head, momentum)
        self.num_teacher_updates += 1

    def current_alpha(self) -> float:
        """Distillation weight, ramped linearly over `alpha_warmup_steps` teacher updates (ALBEF)."""
        if self.config.alpha_warmup_steps <= 0:
            return float(self.config.alpha)
        return float(self.config.alpha) * min(1.0, int(self.num_teacher_updates) / self.config.alpha_warmup_steps)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in ("teacher", "teacher_mlm_head"):
            if hasattr(self, name):
                getattr(self, name).eval()
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        for teacher in (loaded.teacher, loaded.teacher_mlm_head):
            teacher.requires_grad_(False)  # loading re-creates parameters; the teacher stays frozen
            teacher.eval()
        if not loaded.config.save_teacher:
            loaded.sync_teacher()
        return model

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Writes the student (and the teacher only when `config.save_teacher`)."""
        if state_dict is None and not self.config.save_teacher:
            state_dict = {
                k: v for k, v in self.state_dict().items() if not k.startswith(("teacher.", "teacher_mlm_head."))
            }
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    @classmethod
    def from_encoders(cls, config: SyncMaskConfig, vision: str | None = None, text: str | None = None, **kwargs):
        """Build a model whose encoders start from standard checkpoints (names or local folders).

        `vision`: a ViT checkpoint (e.g. google/vit-base-patch16-224-in21k): copied into the image encoder.
        `text`: a BERT checkpoint (e.g. bert-base-uncased, or a local MiniLM folder — resolve Hub ids to offline
        copies with `syncmask_hf.pretrained.resolve_pretrained` before calling): its layers 0..n-1 go to the text
        layers and n..n+m-1 to the fusion layers' self-attention and feed-forward (cross-attention starts fresh),
        as in ALBEF. The config's widths must match the checkpoints (`SyncMaskConfig(vision_config=
        ViTConfig.from_pretrained(vision), text_config=BertConfig.from_pretrained(text), ...)`).
        """
        vision = vision or config.vision_pretrained
        text = text or config.text_pretrained
        config.vision_pretrained, config.text_pretrained = vision, text
        model = cls(config)
        if vision:
            source = ViTModel.from_pretrained(vision, add_pooling_layer=False, **kwargs)
            missing, unexpected = model.syncmask.vision_model.load_state_dict(source.state_dict(), strict=False)
            if unexpected or any(k != "embeddings.mask_token" for k in missing):
                raise ValueError(
                    f"vision checkpoint {vision!r} does not match vision_config (missing {missing[:5]}, unexpected "
                    f"{unexpected[:5]}): build the config with ViTConfig.from_pretrained({vision!r})"
                )
        if text:
            source = BertModel.from_pretrained(text, add_pooling_layer=False, **kwargs)
            state = source.state_dict()
            n_text = config.num_text_layers
            text_state = {k: v for k, v in state.items() if not k.startswith("encoder.layer.")}
            fusion_state = {}
            for key, value in state.items():
                if not key.startswith("encoder.layer."):
                    continue
                index = int(key.split(".")[2])
                rest = ".".join(key.split(".")[3:])
                if index < n_text:
                    text_state[key] = value
                elif index < n_text + config.num_fusion_layers:
                    fusion_state[f"{index - n_text}.{rest}"] = value
            missing, unexpected = model.syncmask.text_model.load_state_dict(text_state, strict=False)
            if unexpected or missing:
                raise ValueError(
                    f"text checkpoint {text!r} does not match text_config (missing {missing[:5]}, unexpected "
                    f"{unexpected[:5]}): build the config with BertConfig.from_pretrained({text!r})"
                )
            model.syncmask.fusion_layers.load_state_dict(fusion_state, strict=False)
            model.tie_weights()
        # Which parameters start from a checkpoint (e.g. for a lower learning rate on them); not saved.
        loaded = []
        if vision:
            vision_names = (
                k for k, _ in model.syncmask.vision_model.named_parameters() if k != "embeddings.mask_token"
            )
            loaded += [f"syncmask.vision_model.{k}" for k in vision_names]
        if text:
            for prefix, module, state in (("text_model", model.syncmask.text_model, text_state),
                                          ("fusion_layers", model.syncmask.fusion_layers, fusion_state)):  # fmt: skip
                loaded += [f"syncmask.{prefix}.{k}" for k, _ in module.named_parameters() if k in state]
        model.checkpoint_parameters = frozenset(loaded)
        model.sync_teacher()
        return model

    # -- objectives
    def _item_ids(self, product_ids: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Product ids, or (when absent) ids unique across steps and ranks so each item is only its own positive,
        also against queued features (negative numbers never collide with the 63-bit non-negative hashes)."""
        if product_ids is not None:
            return product_ids.to(device=device, dtype=torch.long)
        start = int(self.num_samples_seen) * world_size() + rank_offset(batch)
        return -(2 + start + torch.arange(batch, device=device))

    def _itc_loss(self, image_feat, text_feat, t_image_feat, t_text_feat, ids, alpha, text_ids=None):
        """ITC against in-batch (and queued) columns. Positives: the same product and, in the batch, an identical
        text (`text_ids`): a description copied onto several products is not a negative of itself."""
        temp = self.syncmask.temp
        with torch.no_grad():
            col_ids = gather_no_grad(ids)
            same_text = None if text_ids is None else same_id_mask(text_ids, gather_no_grad(text_ids))
            t_image_all = gather_no_grad(t_image_feat)
            t_text_all = gather_no_grad(t_text_feat)
            if self.config.queue_size > 0:
                col_ids = torch.cat([col_ids, self.queue.ids()])
                t_image_all = torch.cat([t_image_all, self.queue.get("image")])
                t_text_all = torch.cat([t_text_all, self.queue.get("text")])
            positives = same_id_mask(ids, col_ids)
            if same_text is not None:  # queued columns carry no text ids: product ids only there
                positives[:, : same_text.shape[1]] |= same_text
            targets = positive_targets(positives)
            distill_i2t = distill_t2i = None
            if alpha > 0:
                distill_i2t = F.softmax(t_image_feat @ t_text_all.t() / temp, dim=1)
                distill_t2i = F.softmax(t_text_feat @ t_image_all.t() / temp, dim=1)
        if self.config.itc_keys == "student":
            # In-batch columns are the student's own features (gathered with gradients, as CLIP), queued columns
            # the teacher's: both towers get a learning signal even while the teacher is still untrained.
            text_cols, image_cols = gather_with_grad(text_feat), gather_with_grad(image_feat)
            if self.config.queue_size > 0:
                text_cols = torch.cat([text_cols, self.queue.get("text")])
                image_cols = torch.cat([image_cols, self.queue.get("image")])
        else:
            text_cols, image_cols = t_text_all, t_image_all
        logits_i2t = image_feat @ text_cols.t() / temp
        logits_t2i = text_feat @ image_cols.t() / temp
        return contrastive_loss(logits_i2t, logits_t2i, targets, targets, distill_i2t, distill_t2i, alpha)

    def itm_exclusions(self, input_ids, attention_mask, ids, text_ids, t_text_feat=None) -> torch.Tensor:
        """(B, B) pairs never used as ITM negatives: same product, identical text, near-duplicate text (token overlap
        >= `near_duplicate_overlap`) and, only when `near_duplicate_threshold` is set, teacher-embedding cosine."""
        cfg = self.config
        excluded = exclusion_mask(ids, ids, text_ids, text_ids)
        if cfg.near_duplicate_overlap is not None:
            overlap = token_overlap(input_ids, attention_mask, cfg.special_token_ids)
            excluded |= overlap >= cfg.near_duplicate_overlap
        if cfg.near_duplicate_threshold is not None and t_text_feat is not None:
            excluded |= (t_text_feat @ t_text_feat.t()) >= cfg.near_duplicate_threshold
        return excluded

    def _itm_loss(
        self, image_hidden, text_hidden, input_ids, attention_mask, image_feat, text_feat, t_text_feat, ids, text_ids
    ):
        """ITM with one semi-hard negative text per image and one negative image per text, sampled from the ITC
        similarity while never picking the same product, an identical text, or a near-duplicate text. Returns the
        loss and the share of rows that found a negative."""
        m = self.syncmask
        with torch.no_grad():
            sim = image_feat @ text_feat.t() / m.temp
            excluded = self.itm_exclusions(input_ids, attention_mask, ids, text_ids, t_text_feat)
            neg_text, valid_text = sample_negatives(sim, excluded)  # per image row
            neg_image, valid_image = sample_negatives(sim.t(), excluded.t())  # per text row
        b = image_hidden.shape[0]
        images = torch.cat([image_hidden, image_hidden[valid_text], image_hidden[neg_image[valid_image]]])
        texts = torch.cat([text_hidden, text_hidden[neg_text[valid_text]], text_hidden[valid_image]])
        masks = torch.cat([attention_mask, attention_mask[neg_text[valid_text]], attention_mask[valid_image]])
        logits = m.itm_logits(images, texts, masks)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        share = torch.cat([valid_text, valid_image]).float().mean()
        return itm_loss(logits, labels), share

    def _masks(self, input_ids, attention_mask, patch_eligible, teacher_image_hidden, teacher_text_hidden):
        cfg = self.config
        text_eligible = eligible_tokens(input_ids, attention_mask, cfg.special_token_ids)
        if patch_eligible is None:
            patch_eligible = torch.ones(input_ids.shape[0], cfg.num_patches, dtype=torch.bool, device=input_ids.device)
        if cfg.masking_strategy == "random":
            return random_mask(text_eligible, cfg.mlm_ratio), random_mask(patch_eligible, cfg.mim_ratio), None, None
        with torch.no_grad():
            _, maps = self.teacher.fuse(
                teacher_text_hidden, attention_mask, teacher_image_hidden, output_attentions=True
            )
        return synchronized_masks(
            maps[-cfg.sync_attention_layers :],
            text_eligible,
            patch_eligible,
            cfg.mlm_ratio,
            cfg.mim_ratio,
            num_prefix_tokens=1,
            token_topk=cfg.sync_token_topk,
            patch_score=cfg.sync_patch_score,
        )

    def _mlm_loss(self, input_ids, attention_mask, token_mask, image_hidden, teacher_image_hidden=None, alpha=0.0):
        """MLM on the masked text fused with the image; with `distill_mlm` and alpha > 0, ALBEF's distillation:
        `(1 - alpha) * CE(label) + alpha * CE(teacher's softmax on the same masked input)`."""
        cfg = self.config
        masked_ids, labels = apply_token_mask(input_ids, token_mask, cfg.mask_token_id, cfg.text_config.vocab_size)
        fused, _ = self.syncmask.fuse(
            self.syncmask.encode_text(masked_ids, attention_mask), attention_mask, image_hidden
        )
        selected = labels != -100
        if not selected.any():
            return fused.sum() * 0.0
        # The vocabulary projection only at masked positions: the same loss as over all positions, far cheaper.
        logits = self.mlm_head(fused[selected])
        loss = masked_lm_loss(logits, labels[selected])
        if cfg.distill_mlm and alpha > 0 and teacher_image_hidden is not None:
            with torch.no_grad():
                t_fused, _ = self.teacher.fuse(
                    self.teacher.encode_text(masked_ids, attention_mask), attention_mask, teacher_image_hidden
                )
                soft = F.softmax(self.teacher_mlm_head(t_fused[selected]).float(), dim=-1)
            loss = (1 - alpha) * loss + alpha * soft_cross_entropy(logits, soft)
        return loss

    def _mim_loss(self, pixel_values, patch_mask, text_hidden, attention_mask, teacher_image_hidden):
        """Masked image + unmasked text: the masked image's tokens cross-attend to the text fused with it, then a
        linear head regresses the target of each masked patch."""
        m = self.syncmask
        image_hidden = m.encode_image(pixel_values, bool_masked_pos=patch_mask)
        fused, _ = m.fuse(text_hidden, attention_mask, image_hidden)
        hidden = m.image_to_text(image_hidden)
        text_mask = _extended_mask(attention_mask, hidden.dtype)
        for layer in self.mim_decoder:
            hidden = layer(hidden, None, fused, encoder_attention_mask=text_mask)
        prediction = self.mim_head(hidden[:, 1:])
        with torch.no_grad():
            if self.config.mim_target == "pixels":
                target = patchify(pixel_values, self.patch_size)
                if self.config.mim_norm_pix:
                    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
                    target = (target - mean) / (var + 1e-6).sqrt()
            else:
                target = F.layer_norm(teacher_image_hidden[:, 1:], teacher_image_hidden.shape[-1:])
        error = (prediction.float() - target.float()).pow(2).mean(dim=-1)
        if not patch_mask.any():
            return error.sum() * 0.0
        return error[patch_mask].mean()

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        product_ids: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        patch_eligible: torch.Tensor | None = None,
        return_loss: bool = True,
        output_masks: bool = False,
        alpha: float | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SyncMaskForPreTrainingOutput:
        """One pretraining step's losses. `product_ids` / `text_ids` (int64 hashes) mark same-product and
        identical-text items: positives for ITC, never ITM negatives. `patch_eligible` (B, P) optionally restricts
        which patches MIM may mask (default all)."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images but input_ids has {input_ids.shape[0]} texts: "
                "pretraining needs one text per image (repeat the text for each image of a product)"
            )
        m = self.syncmask
        batch = input_ids.shape[0]
        ids = self._item_ids(product_ids, batch, input_ids.device)
        alpha = self.current_alpha() if alpha is None else float(alpha)

        image_hidden = m.encode_image(pixel_values)
        text_hidden = m.encode_text(input_ids, attention_mask)
        image_feat, text_feat = m.embed_image(image_hidden), m.embed_text(text_hidden, attention_mask)
        with torch.no_grad():
            m.temp.clamp_(cfg.temp_min, cfg.temp_max)
            t_image_hidden = self.teacher.encode_image(pixel_values)
            t_text_hidden = self.teacher.encode_text(input_ids, attention_mask)
            t_image_feat, t_text_feat = (
                self.teacher.embed_image(t_image_hidden),
                self.teacher.embed_text(t_text_hidden, attention_mask),
            )

        output = SyncMaskForPreTrainingOutput(image_embeds=image_feat, text_embeds=text_feat)
        token_mask, patch_mask, token_scores, patch_scores = self._masks(
            input_ids, attention_mask, patch_eligible, t_image_hidden, t_text_hidden
        )
        if output_masks:
            output.token_mask, output.patch_mask = token_mask, patch_mask
            output.token_scores, output.patch_scores = token_scores, patch_scores
        if not return_loss:
            return output

        output.loss_itc = self._itc_loss(image_feat, text_feat, t_image_feat, t_text_feat, ids, alpha, text_ids)
        output.loss_itm, output.itm_negative_share = self._itm_loss(
            image_hidden, text_hidden, input_ids, attention_mask, image_feat, text_feat, t_text_feat, ids, text_ids
        )
        output.loss_mlm = self._mlm_loss(input_ids, attention_mask, token_mask, image_hidden, t_image_hidden, alpha)
        output.loss_mim = self._mim_loss(pixel_values, patch_mask, text_hidden, attention_mask, t_image_hidden)
        output.loss = (
            cfg.itc_weight * output.loss_itc
            + cfg.itm_weight * output.loss_itm
            + cfg.mlm_weight * output.loss_mlm
            + cfg.mim_weight * output.loss_mim
        )
        if self.training:
            self.queue.enqueue(ids, image=t_image_feat, text=t_text_feat)
            self.num_samples_seen += batch
        return output


# --------------------------------------------------------------------------------------------------- task heads


class SyncMaskForImageTextRetrieval(SyncMaskPreTrainedModel):
    """Image-text retrieval as in ALBEF: ITC ranks the gallery, the ITM head re-ranks the top `k` candidates.

    `forward` scores given pairs with ITM (and trains it with `labels`, 1 = match); `retrieve_images` /
    `retrieve_texts` run the two-stage search over pre-encoded galleries (`encode_images` / `encode_texts`).
    """

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.syncmask = SyncMaskModel(config)
        self.post_init()

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.syncmask.encode_image(pixel_values)
        return self.syncmask.embed_image(hidden), hidden

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.syncmask.encode_text(input_ids, attention_mask)
        return self.syncmask.embed_text(hidden, attention_mask), hidden

    @torch.no_grad()
    def _rerank(self, similarity, query_hidden, gallery_hidden, attention_mask, query_is_text, k):
        k = min(k or self.config.itm_rerank_k, similarity.shape[1])
        top = similarity.topk(k, dim=1)
        scores = torch.empty_like(top.values)
        for q in range(similarity.shape[0]):
            cand = top.indices[q]
            if query_is_text:
                texts = query_hidden[q : q + 1].expand(k, -1, -1)
                masks = attention_mask[q : q + 1].expand(k, -1)
                images = gallery_hidden[cand]
            else:
                images = query_hidden[q : q + 1].expand(k, -1, -1)
                texts, masks = gallery_hidden[cand], attention_mask[cand]
            scores[q] = self.syncmask.itm_logits(images, texts, masks).softmax(dim=-1)[:, 1]
        order = scores.argsort(dim=1, descending=True)
        return top.indices.gather(1, order), scores.gather(1, order)

    def retrieve_images(self, text_embeds, text_hidden, attention_mask, image_embeds, image_hidden, k=None):
        """For each text query: (indices (Q, k) into the image gallery, ITM match probabilities), best first."""
        return self._rerank(text_embeds @ image_embeds.t(), text_hidden, image_hidden, attention_mask, True, k)

    def retrieve_texts(self, image_embeds, image_hidden, text_embeds, text_hidden, attention_mask, k=None):
        """For each image query: (indices (Q, k) into the text gallery, ITM match probabilities), best first."""
        return self._rerank(image_embeds @ text_embeds.t(), image_hidden, text_hidden, attention_mask, False, k)

    def forward(self, pixel_values, input_ids, attention_mask=None, labels=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = self.syncmask
        image_hidden, text_hidden = m.encode_image(pixel_values), m.encode_text(input_ids, attention_mask)
        logits = m.itm_logits(image_hidden, text_hidden, attention_mask)
        similarity = (m.embed_image(image_hidden) * m.embed_text(text_hidden, attention_mask)).sum(dim=-1)
        loss = itm_loss(logits, labels) if labels is not None else None
        return SyncMaskRetrievalOutput(
            loss=loss, itm_logits=logits, itm_score=logits.softmax(dim=-1)[:, 1], similarity=similarity
        )


class SyncMaskForTextGuidedImageRetrieval(SyncMaskPreTrainedModel):
    """Text-guided image retrieval (FashionIQ): reference image + modification text -> query embedding.

    The modification text cross-attends to the reference image in the fusion layers; its fused [CLS] is projected to
    the ITC space and matched against target images' `get_image_features`. Trained with a contrastive loss over
    the batch's targets (multi-positive when `target_ids` mark equal targets).
    """

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        self.syncmask = SyncMaskModel(config)
        self.query_proj = nn.Linear(config.text_config.hidden_size, config.embed_dim)
        self.post_init()

    def get_target_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of the gallery images the queries are matched against."""
        return F.normalize(self.syncmask.get_image_features(pixel_values).pooler_output, dim=-1)

    def get_query_features(self, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = self.syncmask
        fused, _ = m.fuse(m.encode_text(input_ids, attention_mask), attention_mask, m.encode_image(pixel_values))
        return F.normalize(self.query_proj(fused[:, 0]), dim=-1)

    def forward(
        self,
        pixel_values,
        input_ids,
        attention_mask=None,
        target_pixel_values=None,
        target_ids=None,
        return_loss=True,
        return_dict=None,
        **kwargs,
    ):
        query = self.get_query_features(pixel_values, input_ids, attention_mask)
        out = SyncMaskTextGuidedRetrievalOutput(query_embeds=query)
        if target_pixel_values is not None:
            target = self.get_target_features(target_pixel_values)
            out.target_embeds, out.logits = target, query @ target.t() * self.syncmask.logit_scale.exp()
            if return_loss:
                ids = target_ids if target_ids is not None else torch.arange(query.shape[0], device=query.device)
                targets = multi_positive_targets(ids, ids)  # the diagonal is always positive
                out.loss = contrastive_loss(out.logits, out.logits.t(), targets, targets)
        return out


class SyncMaskForProductClassification(SyncMaskPreTrainedModel):
    """Category / sub-category recognition from the fused [CLS] of (image, text). Labels `category_labels`,
    `subcategory_labels` (-100 = unknown, ignored); `loss` is the sum of the terms present."""

    def __init__(self, config: SyncMaskConfig):
        super().__init__(config)
        if config.num_categories < 1 and config.num_subcategories < 1:
            raise ValueError(
                "SyncMaskForProductClassification needs classes: set num_categories and/or num_subcategories in the "
                "SyncMaskConfig (e.g. the number of distinct categories in your training catalogue)"
            )
        self.syncmask = SyncMaskModel(config)
        width = config.text_config.hidden_size
        self.dropout = nn.Dropout(config.text_config.hidden_dropout_prob)
        self.category_head = nn.Linear(width, config.num_categories) if config.num_categories else None
        self.subcategory_head = nn.Linear(width, config.num_subcategories) if config.num_subcategories else None
        self.post_init()

    def forward(
        self,
        pixel_values,
        input_ids,
        attention_mask=None,
        category_labels=None,
        subcategory_labels=None,
        return_dict=None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = self.syncmask
        fused, _ = m.fuse(m.encode_text(input_ids, attention_mask), attention_mask, m.encode_image(pixel_values))
        pooled = self.dropout(fused[:, 0])
        out = SyncMaskClassificationOutput()
        losses = []
        for head, labels, name in (
            (self.category_head, category_labels, "category_logits"),
            (self.subcategory_head, subcategory_labels, "subcategory_logits"),
        ):
            if head is None:
                if labels is not None:
                    raise ValueError(f"{name[:-7]}_labels given but the config has no such classes (num_*=0)")
                continue
            logits = head(pooled)
            setattr(out, name, logits)
            if labels is not None and (labels != -100).any():
                losses.append(F.cross_entropy(logits.float(), labels, ignore_index=-100))
        if losses:
            out.loss = torch.stack(losses).sum()
        return out


SyncMaskConfig.register_for_auto_class()
SyncMaskModel.register_for_auto_class("AutoModel")
SyncMaskForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "SyncMaskPreTrainedModel",
    "SyncMaskModel",
    "SyncMaskForPreTraining",
    "SyncMaskVisionModelWithProjection",
    "SyncMaskTextModelWithProjection",
    "SyncMaskForImageTextRetrieval",
    "SyncMaskForTextGuidedImageRetrieval",
    "SyncMaskForProductClassification",
    "SyncMaskModelOutput",
    "SyncMaskForPreTrainingOutput",
]
