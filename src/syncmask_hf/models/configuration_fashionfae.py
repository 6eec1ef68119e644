"""FashionFAE configuration (Huang et al., "FashionFAE: Fine-grained Attributes Enhanced Fashion Vision-Language
Pre-training", arXiv 2412.19997).

A ViT image encoder whose patch grid is average-pooled to a small fusion grid (14x14 -> 7x7 for ViT-B/16 at 224 px),
and one BERT that is both the unimodal text encoder and the single-stream fusion encoder over [text; visual].
The two paper ideas each have one switch: `aetp` (False = plain random MLM, the paper's ablation) and `apir`
(False = plain masked image modelling). Copied flat with remote code: imports only transformers.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig, ViTConfig

FASHIONFAE_TASKS = ("itm", "itc", "mlm", "apir")
APIR_TARGETS = ("vq", "teacher_features", "pixels")
ITM_NEGATIVE_ROWS = ("random", "last")


@strict
class FashionFAEConfig(PreTrainedConfig):
    r"""
    vision_config (`dict` or `ViTConfig`): the image encoder (paper: ViT-B/16 pretrained on ImageNet-21k).
    text_config (`dict` or `BertConfig`): the text + fusion encoder (paper: BERT-base).
    fusion_grid (`int`, defaults to 7): side of the grid the ViT patches are average-pooled to before fusion
        (14x14 -> 7x7 = 49 visual tokens + CLS). The patch grid side must be a multiple of it.
    embed_dim (`int`, defaults to 256): joint space of the unimodal (ITC) embeddings.
    logit_scale_init_value (`float`, defaults to log(1/0.07)): the learnable ITC scale (log space, CLIP-style).
    aetp (`bool`, defaults to True): the MLM slot runs attribute-emphasized text prediction; False = plain random
        MLM of `mlm_probability` of the tokens (the paper's ablation).
    aetp_description_mask_ratio (`float`, 0.12): share of description tokens replaced by [MASK].
    aetp_description_replace_ratio (`float`, 0.015): share of description tokens replaced by a random token.
    aetp_title_words (`int`, 2): title words masked (whole words when `word_ids` are given, else tokens).
    aetp_attribute_values (`int`, 1): whole attribute values masked per row.
    aetp_contrastive_weight (`float`, 1.0): weight of AETP's contrastive term between the unimodal text embedding
        of the complete text and the fused embedding of the masked text. Unverified (the paper gives no weight):
        our choice.
    mlm_probability (`float`, 0.15): plain MLM's masking ratio (BERT's 80/10/10 corruption).
    apir (`bool`, defaults to True): the image slot runs attribute-promoted image reconstruction (block mask,
        masked cells filled with the fused CLS, text from an early BERT layer); False = plain MIM (random mask of
        the same count, ViT mask token only, single-stream fusion from the first layer).
    apir_num_masked (`int`, 8): fusion-grid cells masked per image (paper: 8 of 49).
    apir_text_layer (`int`, 6): the text enters fusion after this many text-only BERT layers; the fusion runs
        through the remaining layers. Unverified (the paper says "an early layer"): our choice is half the depth.
    apir_target (`str`, "pixels"): "vq" = a frozen VQ tokenizer's codes per cell (the paper; needs
        `apir_vq_tokenizer` or codes passed to forward), "teacher_features" = the model's own pooled ViT features of
        the unmasked image under stop-gradient, "pixels" = the cell's pixels, normalised per cell (MAE). The
        default is "pixels" because no VQ tokenizer can be loaded offline and pixel targets cannot collapse: our
        choice, documented as such.
    apir_vq_tokenizer (`str`, optional): "module.path:factory" returning a frozen `nn.Module` that maps
        pixel_values (B,3,H,W) to codes (B, fusion_grid**2); built lazily, never saved with the weights.
    apir_vq_num_codes (`int`, 1024): size of the VQ codebook (the paper's tokenizer has 1024).
    apir_contrastive_weight (`float`, 1.0): weight of APIR's contrastive term between the complete image's unimodal
        embedding (mean of its ViT tokens) and the fused embedding of the masked image (mean of its visual states
        after fusion), as in the authors' code; 0 = reconstruction only. The weight is our choice (the code's
        default of 1). Plain MIM (`apir=False`) never has it.
    itm_negative_rows (`str`, "random"): which rows get an ITM negative: "random" = a random `itm_negative_fraction`
        of the batch each step (the authors' code); "last" = the last rows (the earlier behaviour, which ties the
        negatives to the sampler's order).
    itm_hard_negatives (`bool`, True): ITM negatives are the ITC arg-max text (never the same product or an
        identical text); False = a random other text.
    itm_negative_fraction (`float`, 0.5): share of the batch whose text is replaced by a negative (paper: half).
    task_probs (`dict`): probability of each task per step (paper: itm 0.23, itc 0.31, mlm 0.23, apir 0.23).
    task_sampler_seed (`int`, 0): seed of the task sampler; equal on every rank so all ranks run the same task.
    mask_token_id, cls_token_id, sep_token_id (`int`): the BERT tokenizer's [MASK] / [CLS] / [SEP] (uncased BERT
        vocab: 103 / 101 / 102); with `text_config.pad_token_id` they are never masked.
    """

    model_type = "fashionfae"
    sub_configs_defaults = {"vision_config": ViTConfig, "text_config": BertConfig}

    vision_config: dict | ViTConfig | None = None
    text_config: dict | BertConfig | None = None
    fusion_grid: int = 7
    embed_dim: int = 256
    logit_scale_init_value: float = 2.6592
    aetp: bool = True
    aetp_description_mask_ratio: float = 0.12
    aetp_description_replace_ratio: float = 0.015
    aetp_title_words: int = 2
    aetp_attribute_values: int = 1
    aetp_contrastive_weight: float = 1.0
    mlm_probability: float = 0.15
    apir: bool = True
    apir_num_masked: int = 8
    apir_text_layer: int = 6
    apir_target: str = "pixels"
    apir_vq_tokenizer: str | None = None
    apir_vq_num_codes: int = 1024
    apir_contrastive_weight: float = 1.0
    itm_negative_rows: str = "random"
    itm_hard_negatives: bool = True
    itm_negative_fraction: float = 0.5
    task_probs: dict | None = None
    task_sampler_seed: int = 0
    mask_token_id: int = 103
    cls_token_id: int = 101
    sep_token_id: int = 102
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.task_probs = (
            dict(self.task_probs)
            if self.task_probs is not None
            else {"itm": 0.23, "itc": 0.31, "mlm": 0.23, "apir": 0.23}
        )

    @property
    def patches_per_side(self) -> int:
        image = self.vision_config.image_size
        patch = self.vision_config.patch_size
        image = image[0] if isinstance(image, (list, tuple)) else image
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return image // patch

    def validate_fields(self) -> None:
        """Reject values that would otherwise fail deep inside a forward pass (or silently do the wrong thing).
        `config.validate()` runs this (at construction and before every save), with transformers' own checks."""

        def bad(field, value, fix):
            raise ValueError(f"FashionFAEConfig.{field}={value!r} is invalid: {fix}")

        probs = self.task_probs
        if not isinstance(probs, dict) or not probs:
            bad("task_probs", probs, f"give a dict over {list(FASHIONFAE_TASKS)}")
        unknown = sorted(set(probs) - set(FASHIONFAE_TASKS))
        if unknown:
            bad(
                "task_probs",
                probs,
                f"unknown task(s) {unknown}; tasks are {list(FASHIONFAE_TASKS)} (AETP runs in the 'mlm' slot when aetp=True)",
            )
        if any(not isinstance(p, (int, float)) or p < 0 for p in probs.values()):
            bad("task_probs", probs, "probabilities must be numbers >= 0")
        if abs(sum(probs.values()) - 1.0) > 1e-6:
            bad("task_probs", probs, f"probabilities sum to {sum(probs.values()):.6f}, they must sum to 1")
        for field in (
            "aetp_description_mask_ratio",
            "aetp_description_replace_ratio",
            "mlm_probability",
            "itm_negative_fraction",
        ):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                bad(field, value, "must lie in [0, 1]")
        if self.aetp_description_mask_ratio + self.aetp_description_replace_ratio > 1.0:
            bad(
                "aetp_description_replace_ratio", self.aetp_description_replace_ratio, "mask + replace ratios exceed 1"
            )
        for field in ("aetp_title_words", "aetp_attribute_values"):
            if int(getattr(self, field)) < 0:
                bad(field, getattr(self, field), "must be >= 0")
        side = self.patches_per_side
        if self.fusion_grid < 1 or side % self.fusion_grid:
            bad(
                "fusion_grid",
                self.fusion_grid,
                f"must divide the ViT patch grid side ({side} = image_size // patch_size)",
            )
        cells = self.fusion_grid**2
        if not 1 <= self.apir_num_masked < cells:
            bad(
                "apir_num_masked",
                self.apir_num_masked,
                f"must be in [1, {cells - 1}] for a {self.fusion_grid}x{self.fusion_grid} fusion grid",
            )
        layers = self.text_config.num_hidden_layers
        if not 0 <= self.apir_text_layer < layers:
            bad(
                "apir_text_layer",
                self.apir_text_layer,
                f"must be in [0, {layers - 1}] (text_config has {layers} layers)",
            )
        if self.itm_negative_rows not in ITM_NEGATIVE_ROWS:
            bad("itm_negative_rows", self.itm_negative_rows, f"choose one of {list(ITM_NEGATIVE_ROWS)}")
        for field in ("aetp_contrastive_weight", "apir_contrastive_weight"):
            if getattr(self, field) < 0:
                bad(field, getattr(self, field), "must be >= 0")
        if self.apir_target not in APIR_TARGETS:
            bad("apir_target", self.apir_target, f"choose one of {list(APIR_TARGETS)}")
        if self.apir_target == "vq":
            if self.apir_vq_num_codes < 2:
                bad("apir_vq_num_codes", self.apir_vq_num_codes, "a VQ codebook needs at least 2 codes")
            if self.apir_vq_tokenizer is not None and ":" not in str(self.apir_vq_tokenizer):
                bad(
                    "apir_vq_tokenizer",
                    self.apir_vq_tokenizer,
                    "use 'module.path:factory' (a callable returning the frozen tokenizer module)",
                )
        if self.text_config.type_vocab_size < 2:
            bad(
                "text_config.type_vocab_size",
                self.text_config.type_vocab_size,
                "visual tokens use token type 1: set it to 2",
            )
        for field in ("mask_token_id", "cls_token_id", "sep_token_id"):
            if not 0 <= getattr(self, field) < self.text_config.vocab_size:
                bad(
                    field,
                    getattr(self, field),
                    f"must be a token id below text_config.vocab_size={self.text_config.vocab_size}",
                )


__all__ = ["FashionFAEConfig"]
