"""One spec per model: everything the application knows about a model, in one place.

`examples/pretrain.py`, the fine-tuning and evaluation scripts, the processor and the collator they build read a
model's classes, presets, processor options, collator mode, sampler, learning rates and stage logic from its
`ModelSpec` here; adding a model means its `models/` files, its presets, and one entry in `SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import models


@dataclass(frozen=True)
class ModelSpec:
    """What the application needs to know about one model.

    name: `--model` and the config's `model_type`; also the `FashionCollator` mode.
    config_class / pretraining_class: what `pretrain.py` builds.
    vision_class / text_class: one tower with its projection alone (CLIP's `*ModelWithProjection`): loads from any
        folder of the model; `forward` returns `get_image_features` / `get_text_features` (feature-extraction
        pipelines, serving one side).
    auto_classes: transformers Auto class name -> the model class it resolves for this config (registered on
        `import syncmask_hf`, with `AutoConfig` and `AutoProcessor`).
    tiny_preset / default_preset / base_preset: tests' size, `pretrain.py`'s default (learns something in a few
        CPU minutes), the paper's size.
    task_heads: task -> the class of the model's own head for it, built on its fusion encoder: "classification"
        (fine-tuning on fused states), "retrieval" (ITM re-ranking of ITC's top K), "tgir" (text-guided image
        retrieval). Tasks without one use the generic heads over `get_image_features` / `get_text_features`.
    image_processor_type: "vit" or "clip" normalisation and resizing.
    processor_kwargs: further `FashionProcessor` options.
    entity_inputs: the processor returns the config's entities as tensors (E2).
    text_format: the text the model reads ("plain" or FashionFAE's attribute-templated "attributes").
    default_sampler / pretrained_sampler: `pretrain.py --sampler default` from scratch, and when both towers start
        from checkpoints (None: the same).
    scratch_lr / pretrained_lr: the learning rate with a random-init tower, and with both towers from checkpoints.
    checkpoint_lr_scale: `pretrain.py`'s default `--checkpoint_lr_scale`: the rate of the weights copied from
        `--text_pretrained` / `--vision_pretrained` as a multiple of the run's rate (1 = one rate for all, ALBEF).
    text_checkpoint: `--text_pretrained` loads a BERT into its text tower.
    vision_checkpoint: what `--vision_pretrained` names: "vit" (a ViT tower) or "clip" (a whole CLIP, both towers).
    two_stage: new parameters first, then everything (E2 from a pretrained CLIP).
    task_per_step: one objective per step, so each step leaves the other heads without gradients (DDP must look
        for unused parameters).
    """

    name: str
    config_class: type
    pretraining_class: type
    tiny_preset: str
    default_preset: str
    base_preset: str
    vision_class: type | None = None
    text_class: type | None = None
    auto_classes: dict[str, type] = field(default_factory=dict)
    task_heads: dict[str, type] = field(default_factory=dict)
    image_processor_type: str = "vit"
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    entity_inputs: bool = False
    text_format: str = "plain"
    default_sampler: str = "random"
    pretrained_sampler: str | None = None
    scratch_lr: float = 5e-4
    pretrained_lr: float = 1e-4
    checkpoint_lr_scale: float = 1.0
    text_checkpoint: bool = True
    vision_checkpoint: str = "vit"
    two_stage: bool = False
    task_per_step: bool = False

    def processor_options(self, config) -> dict[str, Any]:
        """`FashionProcessor.from_text_model` options for a model of `config`."""
        options = {"image_processor_type": self.image_processor_type, **self.processor_kwargs}
        if self.text_format != "plain":
            options["text_format"] = self.text_format
        if self.entity_inputs:
            options.update(entities=list(config.entities), return_entities=True)
        return options


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="syncmask",
            config_class=models.SyncMaskConfig,
            pretraining_class=models.SyncMaskForPreTraining,
            tiny_preset="syncmask-tiny",
            default_preset="syncmask-small",
            base_preset="syncmask-base",
            vision_class=models.SyncMaskVisionModelWithProjection,
            text_class=models.SyncMaskTextModelWithProjection,
            auto_classes={
                "AutoModel": models.SyncMaskModel,
                "AutoModelForPreTraining": models.SyncMaskForPreTraining,
                "AutoModelForZeroShotImageClassification": models.SyncMaskModel,
            },
            task_heads={
                "classification": models.SyncMaskForProductClassification,
                "retrieval": models.SyncMaskForImageTextRetrieval,
                "tgir": models.SyncMaskForTextGuidedImageRetrieval,
            },
            # Batches of one sub-category give a random-init model nothing it can contrast (both towers collapse
            # within ~40 steps): random batches first, then semi-hard ones; semi-hard from the start only when both
            # towers start trained (examples/README.md).
            default_sampler="curriculum",
            pretrained_sampler="semi_hard",
        ),
        ModelSpec(
            name="e2",
            config_class=models.E2Config,
            pretraining_class=models.E2Model,
            tiny_preset="e2-tiny",
            default_preset="e2-tiny",
            base_preset="e2-clip-vit-b32",
            vision_class=models.E2VisionModelWithProjection,
            text_class=models.E2TextModelWithProjection,
            auto_classes={"AutoModel": models.E2Model, "AutoModelForZeroShotImageClassification": models.E2Model},
            image_processor_type="clip",
            entity_inputs=True,
            default_sampler="one_per_product",
            pretrained_lr=5e-4,
            text_checkpoint=False,
            vision_checkpoint="clip",
            two_stage=True,
        ),
        ModelSpec(
            name="fashionfae",
            config_class=models.FashionFAEConfig,
            pretraining_class=models.FashionFAEForPreTraining,
            tiny_preset="fashionfae-tiny",
            default_preset="fashionfae-tiny",
            base_preset="fashionfae-base",
            vision_class=models.FashionFAEVisionModelWithProjection,
            text_class=models.FashionFAETextModelWithProjection,
            auto_classes={
                "AutoModel": models.FashionFAEModel,
                "AutoModelForPreTraining": models.FashionFAEForPreTraining,
                "AutoModelForZeroShotImageClassification": models.FashionFAEModel,
            },
            # The attribute-templated text for AETP and for its plain-MLM ablation alike, so that the ablation
            # changes only the objective, not what the model reads.
            text_format="attributes",
            task_per_step=True,
            # MiniLM's weights at 1e-4 while the random ViT and the new heads learn at 5e-4: held-out T2I R@10 of
            # 5-minute runs over four seeds above one rate for all on every seed (examples/README.md).
            checkpoint_lr_scale=0.2,
        ),
    )
}


def get_spec(name_or_config) -> ModelSpec:
    """The spec of a model name or of a config (by its `model_type`)."""
    name = name_or_config if isinstance(name_or_config, str) else getattr(name_or_config, "model_type", None)
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(SPECS)}")
    return SPECS[name]


def task_head(config, task: str) -> type | None:
    """The class of `config`'s model's own head for `task` ("classification", "retrieval", "tgir"), or None (no
    such head, or a model type without a spec)."""
    spec = SPECS.get(getattr(config, "model_type", None))
    return spec.task_heads.get(task) if spec else None


def models_with_head(task: str) -> list[str]:
    """Names of the models that have their own head for `task` (for error messages)."""
    return [name for name, spec in SPECS.items() if task in spec.task_heads]


def load_pretrained(auto_class, name_or_path, *, trust_remote_code: bool = False, **kwargs):
    """``auto_class.from_pretrained(name_or_path, ...)`` that runs no code from the folder unless asked: the package's
    model types load with its own classes (registered with the Auto classes on import); any other `model_type` needs
    ``trust_remote_code=True`` (the scripts' ``--trust_remote_code``), as transformers asks, and says so naming the
    folder, instead of prompting on a terminal."""
    try:
        return auto_class.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as err:
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{name_or_path} is not one of this package's model types ({', '.join(SPECS)}, fashion_decap): loading "
            "it would run the Python code in the folder. Pass --trust_remote_code (trust_remote_code=True) only if "
            "you trust that code."
        ) from None


__all__ = ["SPECS", "ModelSpec", "get_spec", "load_pretrained", "models_with_head", "task_head"]
