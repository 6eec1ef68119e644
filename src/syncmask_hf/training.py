"""Pieces of the Accelerate training loop shared by `examples/pretrain.py` and the fine-tuning scripts.

Kept out of the modeling files (open_clip's split: the model library does not know about training). Everything a
checkpoint needs for an *exact* resume is here: the model / optimizer / scheduler / RNG state that
`Accelerator.save_state` writes, plus the training-only buffers (feature queues) that `save_pretrained` leaves out,
plus the position in the data (epoch and batch), so a run killed mid-epoch continues with the same batches.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

# name -> (config class, pretraining class, collator mode, tiny hub config, base hub config)
MODEL_SPECS: dict[str, tuple[str, str, str, str, str]] = {
    "syncmask": ("SyncMaskConfig", "SyncMaskForPreTraining", "pairs", "syncmask-tiny", "syncmask-base"),
    "e2": ("E2Config", "E2Model", "e2", "e2-tiny", "e2-clip-vit-b32"),
    "fashionfae": ("FashionFAEConfig", "FashionFAEForPreTraining", "fae", "fashionfae-tiny", "fashionfae-base"),
}


def model_classes(model_name: str):
    """(config class, pretraining model class, collator mode) for a model name."""
    import syncmask_hf

    if model_name not in MODEL_SPECS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODEL_SPECS)}")
    config_cls, model_cls, mode, _, _ = MODEL_SPECS[model_name]
    return getattr(syncmask_hf, config_cls), getattr(syncmask_hf, model_cls), mode


def resolve_config_path(model_name: str, config: str | None, hub_configs: Path) -> Path:
    """A config given as a folder, a JSON file, or the name of a folder in `hub_configs/` (default: the tiny one)."""
    name = config or MODEL_SPECS[model_name][3]
    for candidate in (Path(name), hub_configs / name):
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate / "config.json"
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in hub_configs.iterdir() if p.is_dir()) if hub_configs.is_dir() else []
    raise FileNotFoundError(f"config {name!r} is neither a folder with config.json, a JSON file, nor one of {known}")


class TrainingBuffers:
    """Checkpointable view of a model's non-persistent buffers (feature queues and their pointers).

    `save_pretrained` rightly leaves these out of the published weights, but an exact resume needs them, so the
    script registers this object with `Accelerator.register_for_checkpointing`.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def _buffers(self) -> dict[str, torch.Tensor]:
        out = {}
        for module_name, module in self.model.named_modules():
            for name in getattr(module, "_non_persistent_buffers_set", ()):
                buffer = module._buffers.get(name)
                if buffer is not None:
                    out[f"{module_name}.{name}" if module_name else name] = buffer
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: buffer.detach().cpu().clone() for name, buffer in self._buffers().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        buffers = self._buffers()
        missing = sorted(set(buffers) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks training buffers {missing[:5]}; was it written by another model?")
        with torch.no_grad():
            for name, buffer in buffers.items():
                buffer.copy_(state[name].to(buffer.device, buffer.dtype))


@dataclass
class Progress:
    """Where the run is: saved beside each checkpoint as progress.json."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches (micro-steps) of `epoch` already consumed
    samples_seen: int = 0
    skipped_items: int = 0
    history: list = field(default_factory=list)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, "progress.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Progress:
        return cls(**json.loads(Path(folder, "progress.json").read_text()))


_CKPT = re.compile(r"^step_(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under output_dir/checkpoints, oldest first (a checkpoint is complete once its
    progress.json exists: it is written last, so a run killed while saving leaves no half checkpoint behind)."""
    root = Path(output_dir, "checkpoints")
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT.match(p.name)) and (p / "progress.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: str | os.PathLike, resume_from: str) -> Path | None:
    """`latest` -> newest complete checkpoint (None when there is none yet, so `--resume_from_checkpoint latest`
    is safe on a first run); anything else must be an existing checkpoint folder."""
    if resume_from == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "progress.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no progress.json); pass 'latest' or a step_N folder"
        )
    return path


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    import shutil

    found = checkpoint_dirs(output_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Linear warm-up then cosine decay (transformers' get_cosine_schedule_with_warmup, with a floor)."""
    from transformers import get_cosine_schedule_with_warmup

    if min_ratio <= 0:
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings-like 1-D parameters and temperatures.

    Frozen parameters are included on purpose: they get no gradient (so AdamW leaves them alone) until they are
    unfrozen, e.g. for E2's second stage, and then train without rebuilding the optimizer.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "logit_scale" in name or name.endswith("temp") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def move_to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_processor(model_name: str, config, text_name_or_path: str | None = None, max_length: int = 64):
    """The `FashionProcessor` a model of `config` expects: image size and normalisation of its vision tower, its
    tokenizer (default: the offline all-MiniLM-L6-v2 vocabulary the tiny configs use), E2's entity tensors or
    FashionFAE's attribute-templated text."""
    from .processing_fashion import FashionProcessor

    kwargs: dict = {"max_length": max_length}
    if model_name == "e2":
        kwargs.update(image_processor_type="clip", entities=list(config.entities), return_entities=True)
    else:
        kwargs.update(image_processor_type="vit")
    if model_name == "fashionfae":
        kwargs.update(text_format="attributes" if getattr(config, "aetp", True) else "plain")
    return FashionProcessor.from_text_model(
        text_name_or_path or "minilm", image_size=config.vision_config.image_size, **kwargs
    )
