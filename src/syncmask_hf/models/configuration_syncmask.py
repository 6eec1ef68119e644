"""SyncMask configuration (CVPR 2024, arXiv 2404.01156) on ALBEF's architecture.

A ViT image encoder, a BERT text encoder whose first `num_text_layers` layers are text-only and whose last
`num_fusion_layers` layers add cross-attention to the image tokens (ALBEF: 6 + 6 of BERT-base), a momentum teacher
and the four objectives ITC + ITM + MLM + MIM with SyncMask's synchronized masks.

Where the paper is silent (REFERENCE.md marks it "unverified") the choice is a field here, named below:
`sync_attention_layers`, `sync_token_topk`, `mlm_ratio`, `mim_ratio`, `mim_target`, `near_duplicate_overlap`.

Copied beside the modeling file for remote code: imports only transformers.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig, ViTConfig

MASKING_STRATEGIES = ("synchronized", "random")
MIM_TARGETS = ("pixels", "teacher_features")
ITC_KEYS = ("student", "teacher")
POOLINGS = ("mean", "cls")


@strict
class SyncMaskConfig(PreTrainedConfig):
    r"""
    vision_config (`dict` or `ViTConfig`): the image encoder (ViT-B/16 by default).
    text_config (`dict` or `BertConfig`): the text + fusion stack (BERT-base by default). Its `num_hidden_layers` is
        kept equal to `num_text_layers + num_fusion_layers` (set here), so it describes the whole BERT stack whose
        layers initialise both parts.
    num_text_layers (`int`, 6): text-only BERT layers.
    num_fusion_layers (`int`, 6): BERT layers with cross-attention to the image tokens (ALBEF's multimodal encoder).
    embed_dim (`int`, 256): joint space of ITC.
    temp (`float`, 0.07): initial learnable temperature of ITC, clamped to [`temp_min`, `temp_max`] (ALBEF).
    momentum (`float`, 0.995): EMA factor of the teacher (see `SyncMaskForPreTraining.update_teacher`).
    queue_size (`int`, 65536): feature queue length for ITC (0 disables the queue).
    alpha (`float`, 0.4): weight of the teacher's soft targets in ITC and MLM (momentum distillation).
    distill_mlm (`bool`, True): MLM's targets mix the one-hot label with the teacher's prediction for the same
        masked input, `(1 - alpha) * CE(label) + alpha * CE(teacher's softmax)`, as ALBEF's MLM; False = plain MLM.
        The teacher's MLM head (`teacher_mlm_head`) is an EMA copy of the student's, saved with the teacher.
    itc_keys (`str`, "teacher"): the in-batch columns ITC contrasts against. "teacher" = ALBEF (the momentum
        teacher's features, so no gradient reaches the other tower through them); "student" = the student's own
        gathered features (CLIP's in-batch loss), queued columns still the teacher's. The from-scratch presets
        (presets `syncmask-*`) use "student": from scratch the teacher is as random as the student and ALBEF's
        keys teach only through the slow EMA (synthetic catalogue, 240 steps: held-out text embeddings at mean
        pairwise cosine 0.79 with "student", 0.98 with "teacher").
    pooling (`str`, "cls"): the vector ITC embeds. "cls" = ALBEF ([CLS] of ViT and of the text stack), the default
        so that ALBEF-style checkpoints and folders saved before this field keep their meaning; "mean" = the mean of
        the patch tokens / of the attended text tokens, which the from-scratch presets use: with "cls" a
        from-scratch model collapses (every held-out text embedding identical, recall at chance; see
        `SyncMaskModel.pool_text`).
    alpha_warmup_steps (`int`, 0): ramp alpha linearly from 0 over this many teacher updates (0 = no ramp).
    alpha_warmup_epochs (`float` or None, 1.0): ALBEF's ramp: alpha rises from 0 over the first epoch. The training
        scripts, which know the steps per epoch, set `alpha_warmup_steps` from it; None leaves `alpha_warmup_steps`
        as given.
    masking_strategy (`str`, "synchronized"): "synchronized" = SyncMask's masks from the teacher's cross-attention;
        "random" = the baseline masking the same number of positions chosen uniformly (the paper's ablation).
    mlm_ratio (`float`, 0.15): fraction of eligible text tokens masked for MLM (BERT/ALBEF default; unverified).
    mim_ratio (`float`, 0.25): fraction of image patches masked for MIM (unverified; our choice).
    mim_target (`str`, "pixels"): what MIM reconstructs at masked patches. "pixels" (our default: the patch's pixels,
        normalised per patch as in MAE when `mim_norm_pix`) needs nothing beyond the image; "teacher_features"
        regresses the teacher's (layer-normalised) ViT output on the unmasked image, which is computed for ITC anyway.
    mim_norm_pix (`bool`, True): normalise each target patch by its own mean/std (MAE's norm_pix_loss).
    mim_decoder_layers (`int`, 1): BERT layers in the MIM decoder (masked image tokens cross-attend to the fused text).
    sync_attention_layers (`int`, 2): the teacher's cross-attention is averaged over heads and over the LAST this many
        fusion layers (unverified; our choice).
    sync_token_topk (`int`, 1): a token's score is the attention mass it puts on its `k` most attended patches
        (k=1: its peak attention).
    sync_patch_score (`str`, "sum"): a patch's score: "sum" = the attention it receives from all eligible text
        tokens; "peak" = the most any one token gives it. The paper's wording allows both; "sum" is our choice.
    itc_weight, itm_weight, mlm_weight, mim_weight (`float`, 1.0): loss weights.
    near_duplicate_overlap (`float` or None, 0.8): texts whose token sets overlap this much or more (Jaccard,
        `losses.token_overlap`, special tokens left out) are near-duplicates and never each other's ITM negatives,
        besides same-product and identical-text pairs (None: those two only). Decided from the texts, not from an
        encoder: the paper does not give the rule; ours, with 0.8 our choice.
    near_duplicate_threshold (`float` or None, None): additionally exclude pairs whose *teacher* text embeddings
        have cosine >= this. Only meaningful with a trained teacher: at initialisation a BERT [CLS] embeds every text
        alike (cosine ~1.00), so any threshold would leave ITM without negatives.
    itm_rerank_k (`int`, 16): candidates ITC retrieves per query before ITM re-ranking in the retrieval head.
    num_categories, num_subcategories (`int`, 0): classes of the product classification head.
    save_teacher (`bool`, False): also write the momentum teacher in `save_pretrained` (to resume pretraining from a
        Hub copy); otherwise the teacher is rebuilt as a copy of the student on load.
    special_token_ids (`list[int]`): never masked ([PAD], [CLS], [SEP], [MASK] of the BERT vocab).
    mask_token_id (`int`, 103): BERT's [MASK].
    vision_pretrained, text_pretrained (`str` or None): names or folders of the checkpoints the encoders were (or
        should be) initialised from (see `SyncMaskForPreTraining.from_encoders`); informational once weights exist.
    """

    model_type = "syncmask"
    sub_configs_defaults = {"vision_config": ViTConfig, "text_config": BertConfig}

    vision_config: dict | ViTConfig | None = None
    text_config: dict | BertConfig | None = None
    num_text_layers: int = 6
    num_fusion_layers: int = 6
    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    momentum: float = 0.995
    queue_size: int = 65536
    alpha: float = 0.4
    itc_keys: str = "teacher"
    pooling: str = "cls"
    alpha_warmup_steps: int = 0
    alpha_warmup_epochs: float | None = 1.0
    distill_mlm: bool = True
    masking_strategy: str = "synchronized"
    mlm_ratio: float = 0.15
    mim_ratio: float = 0.25
    mim_target: str = "pixels"
    mim_norm_pix: bool = True
    mim_decoder_layers: int = 1
    sync_attention_layers: int = 2
    sync_token_topk: int = 1
    sync_patch_score: str = "sum"
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    mim_weight: float = 1.0
    near_duplicate_overlap: float | None = 0.8
    near_duplicate_threshold: float | None = None
    itm_rerank_k: int = 16
    num_categories: int = 0
    num_subcategories: int = 0
    save_teacher: bool = False
    special_token_ids: list[int] | None = None
    mask_token_id: int = 103
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.special_token_ids is None:
            self.special_token_ids = [0, 101, 102, 103]
        self.text_config.num_hidden_layers = self.num_text_layers + self.num_fusion_layers

    def validate_fields(self) -> None:
        """SyncMask's checks; `config.validate()` runs them (at construction and before every save), with
        transformers' own."""

        def fail(field: str, value, fix: str):
            raise ValueError(f"SyncMaskConfig.{field}={value!r} is invalid: {fix}")

        if self.masking_strategy not in MASKING_STRATEGIES:
            fail("masking_strategy", self.masking_strategy, f"use one of {MASKING_STRATEGIES}")
        if self.itc_keys not in ITC_KEYS:
            fail("itc_keys", self.itc_keys, f"use one of {ITC_KEYS}")
        if self.pooling not in POOLINGS:
            fail("pooling", self.pooling, f"use one of {POOLINGS}")
        if self.sync_patch_score not in ("sum", "peak"):
            fail("sync_patch_score", self.sync_patch_score, "use 'sum' or 'peak'")
        if self.alpha_warmup_epochs is not None and float(self.alpha_warmup_epochs) < 0:
            fail("alpha_warmup_epochs", self.alpha_warmup_epochs, "use a non-negative number of epochs, or None")
        if self.mim_target not in MIM_TARGETS:
            fail("mim_target", self.mim_target, f"use one of {MIM_TARGETS}")
        for name in ("num_text_layers", "num_fusion_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                fail(name, value, "use a positive integer number of layers")
        for name in ("mlm_ratio", "mim_ratio"):
            value = getattr(self, name)
            if not 0.0 < float(value) < 1.0:
                fail(name, value, "use a fraction strictly between 0 and 1")
        if not 0.0 <= float(self.momentum) <= 1.0:
            fail("momentum", self.momentum, "use an EMA factor in [0, 1] (ALBEF: 0.995)")
        if not 0.0 <= float(self.alpha) <= 1.0:
            fail("alpha", self.alpha, "use a distillation weight in [0, 1] (ALBEF: 0.4)")
        if not 0.0 < float(self.temp_min) <= float(self.temp) <= float(self.temp_max):
            fail("temp", self.temp, f"use 0 < temp_min <= temp <= temp_max (got {self.temp_min}..{self.temp_max})")
        for name in ("queue_size", "alpha_warmup_steps", "num_categories", "num_subcategories"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                fail(name, value, "use a non-negative integer")
        for name in ("embed_dim", "mim_decoder_layers", "sync_token_topk", "itm_rerank_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                fail(name, value, "use a positive integer")
        if not 1 <= self.sync_attention_layers <= self.num_fusion_layers:
            fail(
                "sync_attention_layers",
                self.sync_attention_layers,
                f"read between 1 and num_fusion_layers={self.num_fusion_layers} of the last fusion layers",
            )
        for name in ("itc_weight", "itm_weight", "mlm_weight", "mim_weight"):
            if float(getattr(self, name)) < 0:
                fail(name, getattr(self, name), "loss weights must be >= 0")
        if self.near_duplicate_threshold is not None and not -1.0 <= float(self.near_duplicate_threshold) <= 1.0:
            fail(
                "near_duplicate_threshold", self.near_duplicate_threshold, "use a cosine similarity in [-1, 1] or None"
            )
        if self.near_duplicate_overlap is not None and not 0.0 < float(self.near_duplicate_overlap) <= 1.0:
            fail("near_duplicate_overlap", self.near_duplicate_overlap, "use a token-set overlap in (0, 1] or None")
        if self.queue_size and self.queue_size < 0:
            fail("queue_size", self.queue_size, "use 0 (no queue) or a positive size")
        text_hidden, text_heads = self.text_config.hidden_size, self.text_config.num_attention_heads
        if text_hidden % text_heads:
            fail("text_config.hidden_size", text_hidden, f"must be divisible by num_attention_heads={text_heads}")
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        image_size = image_size if isinstance(image_size, int) else image_size[0]
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        if image_size % patch_size:
            fail("vision_config.image_size", image_size, f"must be a multiple of patch_size={patch_size}")
        if not 0 <= self.mask_token_id < self.text_config.vocab_size:
            fail(
                "mask_token_id", self.mask_token_id, f"must be inside the vocabulary (< {self.text_config.vocab_size})"
            )

    @property
    def num_patches(self) -> int:
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        image_size = image_size if isinstance(image_size, int) else image_size[0]
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        return (image_size // patch_size) ** 2


__all__ = ["SyncMaskConfig"]
