"""Pieces of the Accelerate training loop shared by `examples/pretrain.py` and the fine-tuning scripts.

Kept out of the modeling files (open_clip's split: the model library does not know about training). Everything a
checkpoint needs for an *exact* resume is here: the model / optimizer / scheduler / RNG state that
`Accelerator.save_state` writes, plus the training-only buffers (feature queues) that `save_pretrained` leaves out,
plus the position in the data (epoch and batch), so a run killed mid-epoch continues with the same batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .specs import SPECS, get_spec


def model_classes(model_name: str):
    """(config class, pretraining model class, collator mode) for a model name (its `ModelSpec`)."""
    spec = get_spec(model_name)
    return spec.config_class, spec.pretraining_class, spec.name


def resolve_config_path(model_name: str, config: str | None = None) -> Path:
    """A config given as a folder with `config.json`, a JSON file, or a preset name (`syncmask_hf.list_presets()`;
    default: the model's tiny preset). A preset of another model is an error that names the model's presets."""
    from .presets import list_presets, preset_path

    name = config or get_spec(model_name).tiny_preset
    candidate = Path(name)
    if candidate.is_dir() and (candidate / "config.json").is_file():
        return candidate / "config.json"
    if candidate.is_file():
        return candidate
    if name in list_presets():
        if name not in list_presets(model_name):
            raise ValueError(
                f"preset {name!r} is not a {model_name} config; {model_name}'s presets: {list_presets(model_name)}"
            )
        return preset_path(name) / "config.json"
    raise FileNotFoundError(
        f"config {name!r} is neither a folder with config.json, a JSON file, nor one of {model_name}'s presets "
        f"{list_presets(model_name)}"
    )


class TrainingBuffers:
    """Checkpointable view of a model's non-persistent buffers (feature queues and their pointers).

    `save_pretrained` rightly leaves these out of the published weights, but an exact resume needs them, so
    `training_state` lists this object and `save_checkpoint` writes it (as safetensors, never a pickle).
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
    train_seconds: float = 0.0  # training time of every session so far (a time budget spans resumes)
    history: list = field(default_factory=list)
    # checkpoint metadata: {file name: {"bytes": n, "sha256": hex}} of every file save_state wrote, checked on resume
    files: dict = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> None:
        """Atomically (temp file, fsync, rename): a crash or a full disk never leaves a half-written progress.json."""
        path = Path(folder, "progress.json")
        tmp = path.with_name("progress.json.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(self), indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Progress:
        """Raises `CheckpointError` when progress.json is missing, empty or not this class' JSON."""
        path = Path(folder, "progress.json")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed as it was saved: its metadata is unreadable or a file changed on disk."""


_CKPT = re.compile(r"^step_(\d+)$")


STATE_PREFIX = "state_"  # <prefix><name>.safetensors (tensors) / .json (everything else) in each checkpoint


def training_state(model: nn.Module) -> dict:
    """What an exact resume needs beyond the prepared model, optimizer and scheduler, by name: the non-persistent
    buffers (feature queues) and, for FashionFAE, the task sampler. `save_checkpoint` writes these as safetensors /
    JSON: Accelerate's `register_for_checkpointing` would pickle them and unpickle them with `weights_only=False`,
    which runs whatever code a crafted file holds."""
    state = {"buffers": TrainingBuffers(model)}
    if hasattr(model, "task_sampler"):
        state["task_sampler"] = model.task_sampler
    return state


def save_training_state(folder: str | os.PathLike, state: dict | None) -> None:
    """Each object's `state_dict()`: its tensors to ``state_<name>.safetensors``, the rest (numbers, strings, lists)
    to ``state_<name>.json``. No pickle: loading either file runs no code."""
    from safetensors.torch import save_file

    for name, obj in (state or {}).items():
        values = obj.state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in values.items() if isinstance(v, torch.Tensor)}
        rest = {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
        if tensors:
            save_file(tensors, str(Path(folder, f"{STATE_PREFIX}{name}.safetensors")))
        if rest:
            try:
                text = json.dumps(rest)
            except TypeError as err:
                raise TypeError(f"training state {name!r} ({type(obj).__name__}) is not JSON: {err}") from None
            Path(folder, f"{STATE_PREFIX}{name}.json").write_text(text)


def load_training_state(folder: str | os.PathLike, state: dict | None) -> None:
    """Load what `save_training_state` wrote into each object of `state`. A checkpoint of an earlier version kept it
    in Accelerate's ``custom_checkpoint_<i>.pkl`` (in `state`'s order): such a file is read with torch's
    `weights_only` unpickler, which builds tensors and plain values only and refuses anything else, named."""
    from safetensors.torch import load_file

    for index, (name, obj) in enumerate((state or {}).items()):
        tensors_path = Path(folder, f"{STATE_PREFIX}{name}.safetensors")
        json_path = Path(folder, f"{STATE_PREFIX}{name}.json")
        legacy = Path(folder, f"custom_checkpoint_{index}.pkl")
        if tensors_path.exists() or json_path.exists():
            values = load_file(str(tensors_path)) if tensors_path.exists() else {}
            if json_path.exists():
                values.update(json.loads(json_path.read_text()))
        elif legacy.exists():
            try:
                values = torch.load(legacy, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  (UnpicklingError, or a damaged zip)
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise CheckpointError(
                    f"{legacy} was not loaded: it holds more than tensors and plain values, which could run code "
                    f"when unpickled ({first}). Resume from a checkpoint written by this version, or start afresh"
                ) from None
        else:
            raise CheckpointError(
                f"checkpoint {folder} lacks the training state {name!r} ({tensors_path.name} / {json_path.name}); "
                "was it written by another model or script?"
            )
        obj.load_state_dict(values)


def _step_dirs(output_dir: str | os.PathLike) -> list[Path]:
    root = Path(output_dir, "checkpoints")
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _CKPT.match(p.name)), key=_step)


def checkpoint_complete(folder: str | os.PathLike) -> bool:
    """A checkpoint is complete once its progress.json parses: it is written last, atomically."""
    try:
        Progress.load(folder)
    except CheckpointError:
        return False
    return True


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under output_dir/checkpoints, oldest first (a run killed while saving, or a full disk,
    leaves a folder without a readable progress.json: it is not a checkpoint)."""
    return [p for p in _step_dirs(output_dir) if checkpoint_complete(p)]


def find_checkpoint(output_dir: str | os.PathLike, resume_from: str) -> Path | None:
    """`latest` -> newest complete checkpoint (None when there is none yet, so `--resume_from_checkpoint latest`
    is safe on a first run; newer incomplete folders are skipped with a warning); anything else must be a complete
    checkpoint folder."""
    if resume_from == "latest":
        found = checkpoint_dirs(output_dir)
        newer = [p for p in _step_dirs(output_dir) if not found or _step(p) > _step(found[-1])]
        if newer:
            logging.getLogger(__name__).warning(
                "skipping incomplete checkpoint(s) %s (no readable progress.json: the run stopped while saving); "
                "resuming from %s",
                ", ".join(str(p) for p in newer),
                found[-1] if found else "scratch",
            )
        return found[-1] if found else None
    path = Path(resume_from)
    if not checkpoint_complete(path):
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no readable progress.json); pass 'latest' or a step_N folder"
        )
    return path


def _step(folder: Path) -> int:
    return int(_CKPT.match(folder.name).group(1))


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and every incomplete folder."""
    import shutil

    found = checkpoint_dirs(output_dir)
    partial = [p for p in _step_dirs(output_dir) if p not in found]
    for old in found[: max(0, len(found) - keep)] + partial:
        shutil.rmtree(old, ignore_errors=True)


def file_checksums(folder: str | os.PathLike) -> dict[str, dict]:
    """{relative name: {"bytes", "sha256"}} of every file in a checkpoint folder but progress.json."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("progress.json"))
    return {path.relative_to(folder).as_posix(): _file_checksum(path) for path in files}


def verify_checkpoint(folder: str | os.PathLike, progress: Progress | None = None) -> None:
    """Raise `CheckpointError` naming the first file whose bytes differ from the checksums recorded when the
    checkpoint was saved (a disk or copy fault would otherwise resume silently with wrong weights or RNG states).
    Checkpoints from before checksums were recorded are not verified (a warning says so)."""
    folder = Path(folder)
    progress = progress or Progress.load(folder)
    if not progress.files:
        logging.getLogger(__name__).warning("%s records no checksums (an older checkpoint): not verified", folder)
        return
    for name, expected in progress.files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is damaged: {name} is missing")
        actual = _file_checksum(path)
        if actual != expected:
            how = "size" if actual["bytes"] != expected["bytes"] else "content"
            raise CheckpointError(
                f"checkpoint {folder} is damaged: {name} differs from what was saved ({how}: {actual['bytes']} "
                f"bytes, expected {expected['bytes']}); resume from an earlier checkpoint "
                "(--resume_from_checkpoint <its step_N folder>) or restore the file"
            )


def _file_checksum(path: Path) -> dict:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, num_processes: int = 1):
    """Linear warm-up then cosine decay (transformers' get_cosine_schedule_with_warmup, with a floor).

    Pass `accelerator.num_processes` when the scheduler goes through `accelerator.prepare`: a prepared scheduler
    steps once per process per optimizer step, so the horizon is scaled to match and the learning rate at step k is
    the same with any number of processes.
    """
    from transformers import get_cosine_schedule_with_warmup

    warmup_steps, total_steps = warmup_steps * num_processes, max(total_steps, 1) * num_processes
    if min_ratio <= 0:
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TimeBudget:
    """A run bounded by training time (`--max_train_minutes` without `--max_steps`): its LR schedule follows the
    share of the budget spent, so it ends exactly when the budget does, however the speed varies on a shared
    machine. `spent` is set by the training loop each optimizer step (the main process' clock, broadcast, so every
    rank runs one schedule) and spans resumes (`Progress.train_seconds`)."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.spent = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.spent / self.seconds)


def cosine_with_budget(optimizer, warmup_steps: int, budget: TimeBudget, num_processes: int = 1):
    """Linear warm-up over `warmup_steps` optimizer steps times a cosine over the spent share of `budget`."""

    def factor(step: int) -> float:
        warm = min(1.0, step / max(1, warmup_steps * num_processes))
        return warm * 0.5 * (1.0 + math.cos(math.pi * budget.fraction))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, checkpoint_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings-like 1-D parameters and temperatures.

    Frozen parameters are included on purpose: they get no gradient (so AdamW leaves them alone) until they are
    unfrozen, e.g. for E2's second stage, and then train without rebuilding the optimizer.

    `checkpoint_lr_scale` != 1 (with `lr`) gives the parameters that `from_encoders` copied from a checkpoint
    (`model.checkpoint_parameters`) the rate `lr * checkpoint_lr_scale`, the new ones `lr`: a pretrained text
    tower is not pulled apart while a random image tower learns to meet it.
    """
    from_checkpoint = getattr(model, "checkpoint_parameters", frozenset()) if checkpoint_lr_scale != 1.0 else ()
    if from_checkpoint and lr is None:
        raise ValueError("parameter_groups: checkpoint_lr_scale needs the base lr")
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        no_decay = param.ndim < 2 or "logit_scale" in name or name.endswith("temp")
        groups.setdefault((no_decay, name in from_checkpoint), []).append(param)
    out = []
    for (no_decay, pretrained), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if pretrained:
            group["lr"] = lr * checkpoint_lr_scale
        out.append(group)
    return out


def weight_checksums(model: nn.Module) -> torch.Tensor:
    """One float64 sum per floating-point tensor of the state dict (weights, the EMA teacher, buffers): equal
    vectors on two processes mean their replicas agree, to the last bit in practice."""
    values = [t.detach().double().sum() for t in model.state_dict().values() if torch.is_floating_point(t)]
    return torch.stack(values) if values else torch.zeros(1, dtype=torch.float64)


def check_replicas(accelerator, model: nn.Module, where: str) -> float:
    """Under several processes, fail loudly unless every rank holds the same weights (a parameter DDP does not
    synchronise drifts apart silently otherwise). Returns the main process' total checksum, which is logged."""
    sums = weight_checksums(accelerator.unwrap_model(model)).to(accelerator.device)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather

        every = gather(sums.unsqueeze(0)).view(accelerator.num_processes, -1)
        differ = (every != every[0]).any(dim=0)
        if differ.any():
            names = [k for k, t in accelerator.unwrap_model(model).state_dict().items() if torch.is_floating_point(t)]
            bad = [names[i] for i in differ.nonzero().flatten().tolist()[:5]]
            totals = [f"{float(t):.10e}" for t in every.sum(dim=1)]
            raise RuntimeError(
                f"{where}: the {accelerator.num_processes} processes hold different weights ({int(differ.sum())} "
                f"tensors differ, e.g. {bad}; total checksum per rank {totals}): a parameter is not synchronised by DDP"
            )
    total = float(sums.sum())
    if accelerator.is_main_process:
        logging.getLogger(__name__).info(
            f"{where}: weight checksum {total:.10e}, equal on all {accelerator.num_processes} process(es)"
        )
    return total


def move_to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def adopt_text_checkpoint(config, text_name_or_path: str):
    """A copy of a SyncMask / FashionFAE `config` whose text tower has the shape of a BERT checkpoint, so that
    `from_encoders(config, text=...)` can load it (e.g. `--text_pretrained minilm` on a small config).

    The checkpoint's width (hidden size, heads, feed-forward, vocabulary, positions) replaces `text_config`'s;
    the depth stays the config's where it fits, filled from the checkpoint's first layers; dropout and the config's
    other fields stay. So the presets keep their cost with real weights: `fashionfae-tiny` takes 2 of MiniLM's 6
    layers; `syncmask-small`'s 1 text + 2 fusion layers take MiniLM's first 3, a 1.5x cheaper step than all 6
    (2.7 s vs 4.2 s on 2 CPU cores), which is what a few minutes' budget needs. ALBEF's 6 + 6 take all of
    BERT-base's 12. A SyncMask split deeper than the checkpoint becomes half text, half fusion of its layers.
    """
    from transformers import BertConfig

    source = BertConfig.from_pretrained(text_name_or_path)
    data = config.to_dict()
    text = dict(data["text_config"])
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act", "vocab_size",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id"):  # fmt: skip
        text[key] = getattr(source, key)
    # The config decides the depth (its first layers come from the checkpoint), the checkpoint the width: a tiny
    # preset stays cheap with real weights, and a config as deep as the checkpoint takes all of it.
    text["num_hidden_layers"] = min(
        text.get("num_hidden_layers") or source.num_hidden_layers, source.num_hidden_layers
    )
    data["text_config"] = text
    if "num_fusion_layers" in data and data["num_text_layers"] + data["num_fusion_layers"] > source.num_hidden_layers:
        data["num_text_layers"] = source.num_hidden_layers // 2
        data["num_fusion_layers"] = source.num_hidden_layers - data["num_text_layers"]
        data["sync_attention_layers"] = min(data.get("sync_attention_layers", 1), data["num_fusion_layers"])
    return type(config).from_dict(data)


def build_processor(model_name: str, config, text_name_or_path: str | None = None, max_length: int = 64):
    """The `FashionProcessor` a model of `config` expects: image size and normalisation of its vision tower, its
    tokenizer (default: the offline all-MiniLM-L6-v2 vocabulary the tiny configs use) and what its spec adds (E2's
    entity tensors, FashionFAE's attribute-templated text)."""
    from .models.processing_fashion import FashionProcessor

    return FashionProcessor.from_text_model(
        text_name_or_path or "minilm",
        image_size=config.vision_config.image_size,
        max_length=max_length,
        **get_spec(model_name).processor_options(config),
    )


# ----------------------------------------------------------------------------------------------------------------
# Shared by pretrain.py, the fine-tuning scripts and evaluate.py
# ----------------------------------------------------------------------------------------------------------------
def build_random_model(model_name: str, preset: str | None = None, seed: int = 0):
    """A randomly initialised pretraining model of `model_name` (its tiny preset by default) at `seed`, in eval
    mode: the same weights for the same seed, preset and code."""
    spec = get_spec(model_name)
    torch.manual_seed(seed)
    config = spec.config_class.from_json_file(str(resolve_config_path(model_name, preset or spec.tiny_preset)))
    return spec.pretraining_class(config).eval()


def save_random_model(model_name: str, folder: str | os.PathLike, preset: str | None = None, seed: int = 0) -> Path:
    """Save `build_random_model` with its processor, as `pretrain.py` leaves a folder: for smoke tests, the demo
    and benchmarks that need a folder but no training."""
    model = build_random_model(model_name, preset, seed)
    model.save_pretrained(folder)
    build_processor(model_name, model.config).save_pretrained(folder)
    return Path(folder)


def collator_mode(config) -> str:
    """The `FashionCollator` mode a model of `config` expects: its model type, "syncmask" (image-text pairs) for
    any other dual encoder."""
    model_type = getattr(config, "model_type", "")
    return model_type if model_type in SPECS else "syncmask"


def e2_text(config) -> str:
    """The global text `FashionCollator(e2_text=...)` builds for a model of `config`: E2's `full_text`, else the
    collator's default (only "e2" mode reads it)."""
    return getattr(config, "full_text", "tags_and_description")


def load_catalog_splits(
    sources: list[str], test_size: float, val_size: float, seed: int, skip_bad: bool = True, decode: bool = False
):
    """Load and concatenate catalogue sources and cut them into product-disjoint train / validation / test.

    The split depends only on (sources, sizes, seed), so evaluate.py and the fine-tuning scripts see exactly the
    held-out products that pretrain.py held out when given the same arguments. With ``decode=False`` images are
    decoded in the collator, where a corrupt file becomes a counted skip (or a clear error naming the item).
    """
    import datasets

    from .data import load_catalog, product_disjoint_split

    if not sources:
        raise ValueError("no --dataset given: pass a data-layer source such as synthetic:2000 or hm:/path/to/hm")
    parts = [load_catalog(source, skip_bad=skip_bad) for source in sources]
    catalog = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if not decode:
        catalog = catalog.cast_column("image", datasets.Image(decode=False))
    return product_disjoint_split(catalog, test_size=test_size, val_size=val_size, seed=seed)


def load_model_folder(folder: str | os.PathLike, model_class=None, trust_remote_code: bool = False, **kwargs):
    """(model, processor) from a folder written by pretrain.py / a fine-tuning script (or a Hub id).

    Default class: `AutoModel` (any of the package's models, with its own classes); pass e.g.
    `SyncMaskForTextGuidedImageRetrieval` for a task head on the same encoders. Another `model_type` runs the
    folder's code, so it loads only with ``trust_remote_code=True`` (`specs.load_pretrained`).
    """
    from transformers import AutoModel, AutoProcessor

    from .specs import load_pretrained

    path = Path(folder)
    if not path.exists() and str(folder).startswith((".", "/")):
        raise FileNotFoundError(f"model folder {folder} does not exist; pass the `final` folder pretrain.py wrote")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: pass a folder written by save_pretrained (e.g. <output_dir>/final)"
        )
    if model_class is None:
        model = load_pretrained(AutoModel, folder, trust_remote_code=trust_remote_code, **kwargs)
    else:
        model = model_class.from_pretrained(str(folder), **kwargs)
    processor = load_pretrained(AutoProcessor, folder, trust_remote_code=trust_remote_code)
    return model, processor


def multi_cpu_launch() -> bool:
    """True in one of several processes started by torchrun / `accelerate launch --multi_gpu` on a machine without
    a GPU. Accelerate only forms a gloo group on CPU when asked for the CPU (`Accelerator(cpu=True)`); without it
    every process would silently train alone. (`accelerate launch --cpu --num_processes N` itself starts a single
    process unless MPI is set up, so the documented CPU launch is torchrun's.)"""
    env = os.environ
    single = not any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if single and "MASTER_ADDR" in env and env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        # accelerate's CPU launcher exports MASTER_ADDR only when asked for several processes, then starts one.
        raise RuntimeError(
            "`accelerate launch --cpu --num_processes N` started a single process (accelerate starts several CPU "
            "processes only through MPI), so this run would silently train alone with 1/N of the global batch. "
            "Launch N CPU processes with `torchrun --nproc_per_node N <script> ...` (gloo), or drop --num_processes."
        )
    return not torch.cuda.is_available() and int(env.get("WORLD_SIZE", "1")) > 1


def report_to_backend(report_to: str | None) -> str | None:
    """'auto' -> 'tensorboard' when installed, else None; 'none' -> None."""
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401

            return "tensorboard"
        except ImportError:
            return None
    return None if report_to in (None, "none") else report_to


def save_checkpoint(accelerator, output_dir, progress: Progress, keep: int, collator=None, state=None) -> Path:
    """`Accelerator.save_state` into ``output_dir/checkpoints/step_N`` and the `training_state` objects of `state`
    (`save_training_state`, main process: they are equal on every rank), then progress.json with the checksum of every
    file (written last and atomically: it marks the checkpoint complete), then prune to the newest ``keep`` and
    remove incomplete folders. A failed save (a full disk) removes its partial folder and raises an `OSError` that
    names the path; earlier checkpoints are untouched."""
    folder = Path(output_dir, "checkpoints", f"step_{progress.global_step}")
    try:
        accelerator.save_state(str(folder))
        if accelerator.is_main_process:
            save_training_state(folder, state)
        accelerator.wait_for_everyone()  # every rank's files (its RNG state) are on disk before the checksums
        if accelerator.is_main_process:
            progress.skipped_items = int(getattr(collator, "num_skipped", 0))
            progress.files = file_checksums(folder)
            progress.save(folder)
    except (OSError, RuntimeError) as err:
        if accelerator.is_main_process:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise _save_error(err, folder) from err
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return folder


def _save_error(err: Exception, folder: Path) -> Exception:
    """Say "no space left on <path>" for a full disk, whatever the writer's own words (torch.save's C++ stream
    says only `basic_ios::clear`, safetensors an IoError)."""
    import errno
    import shutil

    text = str(err)
    try:
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    full = (
        getattr(err, "errno", None) == errno.ENOSPC
        or "No space left" in text
        or "StorageFull" in text
        or (free is not None and free < 1 << 20)
    )
    if full:
        return OSError(
            errno.ENOSPC,
            f"no space left on {folder.parent} while saving checkpoint {folder.name} (the partial folder was "
            "removed; earlier checkpoints are intact): free space, lower --keep_checkpoints or --checkpoint_every "
            f"[{type(err).__name__}: {text.strip().splitlines()[0][:200] if text.strip() else ''}]",
        )
    return type(err)(f"saving checkpoint {folder} failed (the partial folder was removed): {text}")


RECALL_COLUMNS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "sumR"]


def evaluate_retrieval(
    model, dataset, collator, device, seed: int = 0, num_workers: int = 0, show_progress: bool = True, **protocol_kw
) -> dict:
    """Full-gallery and sample-100 retrieval recall on held-out products (negatives of sample-100 from the same
    sub-category). A small held-out set that has fewer than 101 products gets as many negatives as it can offer,
    and the result says so (`num_negatives`). Counted, never silent: rows with an empty text and repeated item ids
    are left out (``excluded``), rows whose image the collator skipped are missing from the embeddings
    (``skipped_images``); the gallery size and negatives are those of the pairs actually embedded.
    ``protocol_kw``: ``full_kwargs`` / ``sample100_kwargs`` extras (e.g. re-ranking callbacks) merged into the
    defaults, or precomputed ``embeddings``."""
    from .evaluation import RetrievalEvaluator

    log = logging.getLogger(__name__)
    evaluator = RetrievalEvaluator(model, device=device, show_progress=show_progress)
    embeddings = protocol_kw.pop("embeddings", None)
    excluded = {"empty_text": 0, "duplicate_item_id": 0}
    if embeddings is None:
        keep, seen = [], set()
        for i, (text, item_id) in enumerate(zip(dataset["text"], dataset["item_id"])):
            if not (text or "").strip():
                excluded["empty_text"] += 1
            elif item_id in seen:
                excluded["duplicate_item_id"] += 1
            else:
                seen.add(item_id)
                keep.append(i)
        if len(keep) < len(dataset):
            log.warning(
                "evaluation leaves out %d of %d held-out rows (%s)",
                len(dataset) - len(keep),
                len(dataset),
                ", ".join(f"{k}: {v}" for k, v in excluded.items() if v),
            )
            dataset = dataset.select(keep)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=collator, num_workers=num_workers)
        embeddings = evaluator.extract([b for b in loader if b is not None])
    skipped_images = max(0, len(dataset) - len(embeddings))
    num_products = len(set(embeddings.product_ids.tolist()))
    if num_products < 2:
        raise ValueError(
            f"retrieval needs held-out pairs of at least 2 products; {num_products} remain of {len(dataset)} rows "
            f"({skipped_images} skipped images): hold out more products (--test_products) or fix the bad items"
        )
    num_negatives = min(100, num_products - 1)
    s100 = {"num_negatives": num_negatives, "num_queries": min(1000, len(embeddings)), "seed": seed}
    s100.update(protocol_kw.pop("sample100_kwargs", None) or {})
    if "ks" not in protocol_kw and num_products < 10:
        # Every product has at least one text and one image: R@k with k >= the gallery would be trivially 100%.
        protocol_kw["ks"] = tuple(k for k in (1, 5, 10) if k <= num_products) or (1,)
        log.warning(
            f"only {num_products} held-out products: reporting R@{list(protocol_kw['ks'])} (sumR over those); "
            "hold out more products (--test_products) for the usual R@1/5/10"
        )
    results = evaluator.evaluate(embeddings=embeddings, sample100_kwargs=s100, **protocol_kw)
    results["sample100"]["num_negatives"] = num_negatives
    results["chance"] = {
        "full_R@1": round(100.0 / num_products, 2),
        "sample100_R@1": round(100.0 / (num_negatives + 1), 2),
        # R@10 of a random ranking: a query's products (one here) among num_products ranked at random.
        "full_R@10": round(min(100.0, 1000.0 / num_products), 2),
        "sample100_R@10": round(min(100.0, 1000.0 / (num_negatives + 1)), 2),
    }
    results["items"] = {"pairs": len(embeddings), "skipped_images": skipped_images, "excluded": excluded}
    return results


def retrieval_summary_table(results: dict, title: str | None = None) -> str:
    """The headline numbers (recall per protocol and chance level); everything else is in the results JSON."""
    from .evaluation import format_results_markdown

    names = ("full", "full_itm", "sample100", "sample100_itm")  # *_itm: ITM re-ranked (evaluate.py --rerank_k)
    rows = {
        name: {k: results[name][k] for k in RECALL_COLUMNS if k in results[name]} for name in names if name in results
    }
    for name, row in rows.items():
        row["chance_R@1"] = results["chance"]["full_R@1" if name.startswith("full") else "sample100_R@1"]
    if title is None:
        title = f"held-out products ({results['full']['num_text_gallery']} texts, {results['full']['num_image_gallery']} images; sample-100 with {results['sample100']['num_negatives']} negatives)"
    table = format_results_markdown(rows, title=title)
    spread = results.get("spread")
    if spread:  # near 1.0 = every item embeds alike (collapsed), whatever the recall says
        table += (
            f"\nembedding spread (mean pairwise cosine across products): images {spread['image_mean_cosine']}, "
            f"texts {spread['text_mean_cosine']}\n"
        )
    return table


# ----------------------------------------------------------------------------------------------------------------
# The fine-tuning scripts' shared command line and loop (pretrain.py keeps its own loop: E2 stages, samplers)
# ----------------------------------------------------------------------------------------------------------------
def add_trust_remote_code_argument(parser) -> None:
    """``--trust_remote_code``, as transformers' scripts: off, a model folder of another type is refused, not run."""
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let a model folder / Hub repo of a type this package does not know run its own Python code "
        "(the package's own types never need it)",
    )


def add_torch_compile_argument(parser) -> None:
    """``--torch_compile``: Accelerate's dynamo backend (torch.compile, inductor). Off by default: measured per model
    in examples/benchmarks/bench_throughput.py --torch_compile (examples/benchmarks/README.md)."""
    parser.add_argument(
        "--torch_compile",
        action="store_true",
        help="compile the model with torch.compile (Accelerate's dynamo backend, inductor); the first steps are slow",
    )


def add_training_arguments(parser, output_dir: str, learning_rate: float = 2e-5, num_epochs: int = 3) -> None:
    """The command-line options every fine-tuning script shares (same names and meaning as pretrain.py's)."""
    parser.add_argument("--model_path", required=True, help="a folder written by save_pretrained (or a Hub id)")
    add_trust_remote_code_argument(parser)
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="a data-layer source (repeat to mix), e.g. synthetic:2000, hm:PATH, myntra:PATH",
    )
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--num_epochs", type=int, default=num_epochs)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--max_train_minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--batch_size", type=int, default=32, help="per-process batch size")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    add_torch_compile_argument(parser)
    parser.add_argument("--learning_rate", type=float, default=learning_rate)
    parser.add_argument("--weight_decay", type=float, default=0.02)
    parser.add_argument("--warmup_steps", type=int, default=10)
    parser.add_argument("--max_grad_norm", type=float, default=5.0)
    parser.add_argument("--val_products", type=float, default=0.1, help="as pretrain.py: share of products held out")
    parser.add_argument("--test_products", type=float, default=0.15, help="as pretrain.py: products for evaluation")
    parser.add_argument(
        "--checkpoint_every", type=int, default=50, help="save_state every N optimizer steps (0: never)"
    )
    parser.add_argument("--keep_checkpoints", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--bad_items", choices=["skip", "error"], default="skip")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42, help="as pretrain.py's --seed: same value, same split")
    parser.add_argument("--report_to", default="auto", help="'tensorboard', 'none' or 'auto'")


def check_training_arguments(args) -> None:
    """Clear errors for values argparse cannot check."""
    if not args.dataset and not getattr(args, "fashioniq", None):
        raise SystemExit("error: pass --dataset with a data-layer source, e.g. synthetic:2000, hm:PATH, myntra:PATH")
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise SystemExit(f"error: --max_steps must be >= 1, got {args.max_steps}")
    if args.learning_rate <= 0:
        raise SystemExit(f"error: --learning_rate must be > 0, got {args.learning_rate}")
    for name in ("val_products", "test_products"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise SystemExit(f"error: --{name} is a share of the products in [0, 1), got {getattr(args, name)}")
    path = Path(args.model_path)
    if str(args.model_path).startswith((".", "/")) or path.exists():
        if not (path / "config.json").is_file():
            raise SystemExit(
                f"error: --model_path {args.model_path} is not a saved model folder (no config.json); pass e.g. "
                "the <output_dir>/final folder pretrain.py wrote"
            )


def make_accelerator(args, project: str, find_unused_parameters: bool = False):
    """An Accelerator with the scripts' conventions: logs under output_dir/logs, TensorBoard when installed, rank-
    aware batch samplers (Accelerate must not shard batches again). ``find_unused_parameters`` for task heads that
    leave parts of the pretrained model unused (e.g. the ITM head when classifying), which DDP must be told about.
    Returns (accelerator, tracker backend)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    report_to = report_to_backend(args.report_to)
    dynamo = None
    if getattr(args, "torch_compile", False):
        from accelerate.utils import TorchDynamoPlugin

        # Accelerate's dynamo backend: `prepare` wraps the model in torch.compile (inductor); graphs break where
        # the models branch on data (masking, selection), which stays eager
        dynamo = TorchDynamoPlugin(backend="inductor")
    accelerator = Accelerator(
        cpu=multi_cpu_launch(),
        dynamo_plugin=dynamo,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        dataloader_config=DataLoaderConfiguration(split_batches=False, dispatch_batches=False),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if report_to:
        accelerator.init_trackers(project, tracker_config(args))
    return accelerator, report_to


def tracker_config(args) -> dict:
    """The run's arguments as trackers record them: scalars kept, the rest as text, tokens left out (secrets never
    reach logs)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in vars(args).items()
        if "token" not in k.lower()
    }


def random_batch_loader(dataset, collator, args, accelerator, epoch: int, batch_size: int | None = None):
    """A DataLoader over `dataset` with the package's rank-aware random batches (the same global batches for any
    number of processes) and its own generator (so creating it draws nothing from the global RNG: exact resume)."""
    from .data.samplers import RandomBatchSampler

    sampler = RandomBatchSampler(
        len(dataset),
        batch_size or args.batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=args.seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed + epoch),
    )


def resume_progress(accelerator, args, logger=None, state=None) -> Progress:
    """Load the checkpoint ``args.resume_from_checkpoint`` names ('latest' or a folder; None: start fresh) into the
    prepared objects and the `training_state` objects of `state`, and return where that run stood."""
    progress = Progress()
    if not getattr(args, "resume_from_checkpoint", None):
        return progress
    ckpt = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if ckpt is not None:
        progress = Progress.load(ckpt)
        try:  # a damaged file fails here, named, before anything is loaded
            verify_checkpoint(ckpt, progress)
        except CheckpointError as err:
            earlier = (
                [p for p in checkpoint_dirs(args.output_dir) if _step(p) < _step(ckpt)]
                if _CKPT.match(ckpt.name)
                else []
            )
            hint = f" (the newest earlier one: {earlier[-1]})" if earlier else " (there is no earlier one)"
            raise CheckpointError(f"{err}{hint}") from None
        try:
            _load_accelerate_state(accelerator, ckpt)
            load_training_state(ckpt, state)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001  (safetensors, pickle, zip: every reader has its own error)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            if _is_shape_mismatch(err):
                raise RuntimeError(
                    f"checkpoint {ckpt} does not fit this run's model ({first} ...): it was written with other "
                    "options (another model, --objective or head). Resume with the same options, or use a new "
                    "--output_dir."
                ) from None
            raise CheckpointError(
                f"checkpoint {ckpt} could not be loaded ({type(err).__name__}: {first}); a file in it is damaged "
                "or was written by another version: resume from an earlier checkpoint "
                "(--resume_from_checkpoint <its step_N folder>)"
            ) from err
        message = (
            f"resumed from {ckpt}: step {progress.global_step}, epoch {progress.epoch}, "
            f"batch {progress.batches_in_epoch}"
        )
    else:
        message = "no checkpoint yet: starting from scratch"
    if logger is not None:
        logger.info(message, main_process_only=True)
    elif accelerator.is_main_process:
        print(message)
    return progress


def _load_accelerate_state(accelerator, ckpt: Path) -> None:
    """`Accelerator.load_state`, except for an earlier version's ``custom_checkpoint_<i>.pkl`` (which Accelerate
    would unpickle with `weights_only=False`; `load_training_state` reads those safely): Accelerate then loads from
    a temporary folder of links to the other files."""
    legacy = sorted(ckpt.glob("custom_checkpoint_*.pkl"))
    if not legacy:
        accelerator.load_state(str(ckpt))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="resume-") as tmp:
        for path in ckpt.iterdir():
            if path not in legacy:
                Path(tmp, path.name).symlink_to(path.resolve())
        accelerator.load_state(tmp)


def _is_shape_mismatch(err: Exception) -> bool:
    """A state dict of another model (missing / unexpected keys, other shapes), not a damaged file."""
    text = str(err)
    return isinstance(err, KeyError) or any(
        words in text for words in ("size mismatch", "Missing key", "Unexpected key", "lacks training buffers")
    )


def main_process_seconds(accelerator, seconds: float) -> float:
    """Training time so far by the main process' clock, the same on every rank: a time budget's stop and LR schedule
    must not differ between processes (a rank stopping alone would leave the others in a collective). One broadcast
    per optimizer step, so only runs with a time budget call it."""
    if accelerator.num_processes == 1:
        return seconds
    from accelerate.utils import broadcast

    return float(broadcast(torch.tensor([seconds], dtype=torch.float64, device=accelerator.device)).item())


def _as_hooks(hooks) -> list:
    if hooks is None:
        return []
    return list(hooks) if isinstance(hooks, (list, tuple)) else [hooks]


def run_training_loop(
    accelerator,
    args,
    model,
    optimizer,
    scheduler,
    make_loader,
    compute_loss,
    total_steps: float,
    *,
    collator=None,
    desc: str = "train",
    after_step=None,
    after_epoch=None,
    progress: Progress | None = None,
    budget: TimeBudget | None = None,
    logger=None,
    show_progress: bool = True,
    state: dict | None = None,
) -> Progress:
    """The one Accelerate training loop, of `pretrain.py` and every fine-tuning script: resume
    (``args.resume_from_checkpoint``: 'latest' or a folder, also mid-epoch), gradient accumulation, clipping, tracker
    logs, a tqdm bar, checkpoints every ``args.checkpoint_every`` steps, and a stop at ``total_steps`` (may be
    ``math.inf``) or once ``args.max_train_minutes`` of training time are spent (counted across resumes, by the main
    process' clock on every rank).

    ``make_loader(epoch)`` gives the epoch's DataLoader (batches may be None: all rows bad, skipped);
    ``compute_loss(model, batch)`` returns ``(loss, {name: float})``. Hooks take the `Progress`:
    ``after_step`` (one or a list) run after every optimizer step, in order (a momentum teacher's EMA, a stage
    switch, a periodic evaluation); ``after_epoch`` after every full epoch. ``progress``: where a resumed run stands
    (default: `resume_progress`); ``budget``: a `TimeBudget` whose schedule follows the training time;
    ``show_progress``: the tqdm bar (main process only); ``state``: what else an exact resume needs, by name
    (`training_state`), saved in every checkpoint as safetensors / JSON. Returns the final `Progress`.
    """
    import math
    import time

    from tqdm.auto import tqdm

    if progress is None:
        progress = resume_progress(accelerator, args, logger, state)
    after_step, after_epoch = _as_hooks(after_step), _as_hooks(after_epoch)
    limit = 60 * args.max_train_minutes if getattr(args, "max_train_minutes", None) else math.inf
    if budget is not None:
        budget.spent = progress.train_seconds
    bar = tqdm(
        total=None if math.isinf(total_steps) else total_steps,
        initial=progress.global_step,
        disable=not (show_progress and accelerator.is_local_main_process),
        desc=desc,
    )
    started, seconds_before = time.monotonic(), progress.train_seconds
    done = progress.global_step >= total_steps or progress.train_seconds >= limit
    while not done:
        loader = make_loader(progress.epoch)
        if len(loader) == 0:
            raise ValueError(
                f"the training set gives no full batch of {args.batch_size} x {accelerator.num_processes} processes; "
                "lower --batch_size or add data"
            )
        if progress.batches_in_epoch:
            loader = accelerator.skip_first_batches(loader, progress.batches_in_epoch)
        model.train()
        for batch in loader:
            progress.batches_in_epoch += 1
            if batch is None:  # every row of this batch was bad (counted by the collator)
                continue
            batch = move_to_device(batch, accelerator.device)
            with accelerator.accumulate(model):
                loss, logs = compute_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
            progress.samples_seen += (first.shape[0] if first is not None else 0) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            progress.train_seconds = seconds_before + time.monotonic() - started
            if math.isfinite(limit):  # the stop (and the budget's schedule) must agree on every rank
                progress.train_seconds = main_process_seconds(accelerator, progress.train_seconds)
            if budget is not None:
                budget.spent = progress.train_seconds
            for hook in after_step:
                hook(progress)
            logs = {"loss": float(loss.detach()), **logs, "lr": scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=progress.global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
            if args.checkpoint_every and progress.global_step % args.checkpoint_every == 0:
                save_checkpoint(accelerator, args.output_dir, progress, args.keep_checkpoints, collator, state)
            if progress.global_step >= total_steps or progress.train_seconds > limit:
                done = True
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
            for hook in after_epoch:
                hook(progress)
    bar.close()
    progress.skipped_items = int(getattr(collator, "num_skipped", 0))
    progress.history.append({"train_minutes": round(progress.train_seconds / 60, 3)})
    return progress


class ContrastiveFineTuning(nn.Module):
    """A dual encoder (CLIP's `get_image_features` / `get_text_features`) + a learned temperature, trained with the
    multi-positive contrastive loss (`clip_contrastive_loss`: every image and text of one product are positives,
    gathered across processes). Model-agnostic fine-tuning for any of the package's models (E2, FashionFAE,
    SyncMask's ITC alone). The scale starts from the model's own `logit_scale`, else CLIP's 1 / 0.07."""

    def __init__(self, model: nn.Module, init_temperature: float = 0.07):
        super().__init__()
        self.model = model
        scale = getattr(model, "logit_scale", None)  # CLIP's name, which all three models keep
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            init = float(scale.detach())
        else:
            init = math.log(1.0 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))

    def get_image_features(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values)

    def get_text_features(self, input_ids, attention_mask=None):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)

    def forward(self, pixel_values, input_ids, attention_mask=None, product_ids=None, **kwargs):
        from .models.losses import clip_contrastive_loss

        image = nn.functional.normalize(self.get_image_features(pixel_values).pooler_output, dim=-1)
        text = nn.functional.normalize(self.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
        return clip_contrastive_loss(image, text, self.logit_scale.clamp(max=math.log(100.0)), product_ids)


@torch.no_grad()
def embed_catalog_images(
    model, dataset, processor, device=None, batch_size: int = 64, skip_bad: bool = True, show_progress: bool = True
):
    """Frozen `get_image_features` of every row of a catalogue split: ``(features (N', dim) float32 CPU, kept row
    indices, number of skipped rows)``. A missing or corrupt image is skipped and counted (or raises with
    ``skip_bad=False``), and the kept indices keep features aligned with the rows' labels."""
    from tqdm.auto import tqdm

    from .models.image_loading import FashionInputError, load_image

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    features, kept, skipped = [], [], 0
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="image features", disable=not show_progress):
            rows = dataset[start : start + batch_size]
            images, idx = [], []
            for offset, (image, item_id) in enumerate(zip(rows["image"], rows["item_id"])):
                try:
                    images.append(load_image(image, index=start + offset, item_id=item_id))
                    idx.append(start + offset)
                except FashionInputError:
                    if not skip_bad:
                        raise
                    skipped += 1
            if not images:
                continue
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            features.append(model.get_image_features(pixel_values=pixels).pooler_output.float().cpu())
            kept.extend(idx)
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("no readable image in the split: nothing to embed")
    return torch.cat(features), kept, skipped


def probe_attributes(
    model,
    processor,
    train,
    test,
    attributes,
    device=None,
    batch_size: int = 64,
    weight_decay=(1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 500,
    seed: int = 0,
    show_progress: bool = True,
    max_train_items: int | None = None,
) -> tuple[dict, dict, dict]:
    """Linear probes (`evaluation.linear_probe`) of frozen `get_image_features` for catalogue attributes: fit on the
    `train` rows, score on the `test` rows. Returns ``(results per attribute, skipped attributes with the reason,
    info)``; an attribute with fewer than two classes in training, or no labelled test row, is skipped. Each result
    adds ``chance_top1`` (majority-class accuracy on the test rows). ``max_train_items`` subsamples the training
    rows (seeded) to bound the embedding and fitting time on large catalogues."""
    import numpy as np

    from .evaluation import linear_probe

    if max_train_items is not None and len(train) > max_train_items:
        rows = np.random.default_rng(seed).choice(len(train), max_train_items, replace=False)
        train = train.select(sorted(rows.tolist()))

    train_x, train_rows, skip_tr = embed_catalog_images(
        model, train, processor, device, batch_size, True, show_progress
    )
    test_x, test_rows, skip_te = embed_catalog_images(model, test, processor, device, batch_size, True, show_progress)
    results, skipped = {}, {}
    for name in attributes:
        if name not in train.column_names:
            skipped[name] = "no such column"
            continue
        column_tr, column_te = train[name], test[name]
        ytr = [column_tr[i] for i in train_rows]
        yte = [column_te[i] for i in test_rows]
        classes = {v for v in ytr if v}
        if len(classes) < 2:
            skipped[name] = f"{len(classes)} class(es) in the training rows"
            continue
        if not any(yte):
            skipped[name] = "no labelled test rows"
            continue
        r = linear_probe(
            train_x, ytr, test_x, yte, weight_decay=weight_decay, max_iter=max_iter, ignore_index="", seed=seed
        )
        labelled = [v for v in yte if v]
        r["chance_top1"] = round(100.0 * max(labelled.count(c) for c in set(labelled)) / len(labelled), 2)
        results[name] = r
    info = {"num_train": len(train_rows), "num_test": len(test_rows), "skipped_bad_images": skip_tr + skip_te}
    return results, skipped, info
