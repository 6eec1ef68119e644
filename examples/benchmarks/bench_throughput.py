"""Training throughput (image-text pairs per second) of every model at every published size, on this machine.

    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_throughput.py                       # tiny + small + base, CPU
    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_throughput.py --sizes base --batch-base 64 --device cuda

One step = forward with the model's whole pretraining loss, backward, AdamW update (and SyncMask's teacher EMA), as
`examples/pretrain.py` runs it, on batches the model's own `FashionCollator` builds from the synthetic catalogue
(so the image size, text length, E2's entity texts and FashionFAE's attribute template are the real ones). Steps of
all configs are interleaved round-robin so that load from other processes hits them alike; each cell is the median
over `--repeats`. FashionFAE runs one task per step: its figure is the paper's schedule, i.e. the
`config.task_probs`-weighted mean of each task's median step time. The reference column is SyncMask of the same size
(the package's headline model), measured in the same run.

Random weights: only shapes matter for speed. fp32 on CPU (this CPU has no bf16 hardware).

`--utilisation` adds, per model and size, the FLOPs of one training step (forward and backward, counted by
`torch.utils.flop_counter.FlopCounterMode`; the optimizer's element-wise update is not counted), the FLOP rate the
step reaches, and its share of the matmul ceiling measured in the same run (a large square matmul in the same
dtype), plus the step's peak memory with and without gradient checkpointing (weights, gradients, optimizer state
and activations; CUDA: `max_memory_allocated`; CPU: the peak bytes of live tensor storages, followed by a
`TorchDispatchMode`).
`--loss_steps N` then trains each model N steps on a few fixed batches and fails unless its loss falls
(examples/benchmarks/gpu_check.sh runs both: bf16 at base size on a GPU, fp32 at tiny size on CPU).

    python examples/benchmarks/bench_throughput.py --sizes tiny,small,base --utilisation
    python examples/benchmarks/bench_throughput.py --sizes base --device cuda --dtype bf16 --utilisation --loss_steps 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]

import syncmask_hf  # noqa: E402
from syncmask_hf import training  # noqa: E402
from syncmask_hf.data import load_catalog  # noqa: E402
from syncmask_hf.presets import preset_path  # noqa: E402

# size -> hub config per model (the configs pretrain.py and the Hub checkpoints use)
CONFIGS = {
    "tiny": {"syncmask": "syncmask-tiny", "e2": "e2-tiny", "fashionfae": "fashionfae-tiny"},
    "small": {"syncmask": "syncmask-small"},
    "base": {"syncmask": "syncmask-base", "e2": "e2-clip-vit-b32", "fashionfae": "fashionfae-base"},
}


def build(model_name: str, config_name: str, batch_size: int, device, rows, checkpointing: bool = False):
    config_cls, model_cls, mode = training.model_classes(model_name)
    config = config_cls.from_json_file(str(preset_path(config_name) / "config.json"))
    torch.manual_seed(0)
    model = model_cls(config).to(device).train()
    if checkpointing:  # transformers 5's name, else the older one
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    processor = training.build_processor(model_name, config)
    collator = syncmask_hf.FashionCollator(processor, mode=mode, seed=0)
    batch = training.move_to_device(collator(rows[:batch_size]), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tasks = list(config.task_probs) if model_name == "fashionfae" else [None]
    return model, optimizer, batch, tasks


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast(device, dtype: str):
    """bf16: autocast (weights and optimizer in fp32, matmuls in bf16), as `accelerate launch --mixed_precision bf16`."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def step(model, optimizer, batch, task, device, dtype: str = "fp32", timed: bool = True):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    kwargs = {"task": task} if task is not None else {}
    with autocast(device, dtype):
        out = model(**batch, return_loss=True, **kwargs)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if hasattr(model, "update_teacher"):
        model.update_teacher()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start if timed else float(out.loss.detach())


def matmul_ceiling(device, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of large square matmuls in `dtype` on `device`: the best median over a few sizes (the BLAS's best
    blocking differs by size), what each step is held against."""
    sizes = (4096, 8192) if device.type == "cuda" else (2048, 3072)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
        b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def step_flops(model, batch, task, device, dtype: str) -> int:
    """FLOPs of one training step's forward and backward (matmuls, convolutions, attention), as FlopCounterMode
    counts them. The teacher's forward (SyncMask) is in it; the optimizer's element-wise update is not."""
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = {"task": task} if task is not None else {}
    with FlopCounterMode(display=False) as counter:
        with autocast(device, dtype):
            out = model(**batch, return_loss=True, **kwargs)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class LiveTensorBytes(TorchDispatchMode):
    """The peak, over a block, of the bytes held by live tensor storages: those given (weights, gradients,
    optimizer state, the batch) and every one an operator creates, each counted until it is freed. What CUDA's
    allocator statistics give on a GPU, for CPU (torch's MemTracker refuses models with frozen weights, such as
    SyncMask's momentum teacher)."""

    def __init__(self, tensors):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        for t in tensors:
            self._track(t)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t)
        return out


def peak_memory(model_name: str, config_name: str, batch_size: int, device, dtype: str, checkpointing: bool) -> float:
    """Peak memory (MiB) of one training step, weights, gradients, optimizer state and activations included: CUDA's
    allocator peak, or on CPU the peak bytes of live tensor storages (`LiveTensorBytes`: CPU has no allocator
    statistics). Measured on the second step (the optimizer's state exists by then)."""
    rows = list(load_catalog(f"synthetic:{batch_size}?seed=0&size=224"))
    model, optimizer, batch, tasks = build(model_name, config_name, batch_size, device, rows, checkpointing)
    for task in tasks:
        step(model, optimizer, batch, task, device, dtype)
    peaks = []
    for task in tasks:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(model, optimizer, batch, task, device, dtype)
            peaks.append(torch.cuda.max_memory_allocated())
        else:
            existing = [*model.parameters(), *model.buffers(), *batch.values()]
            existing += [p.grad for p in model.parameters() if p.grad is not None]
            existing += [v for state in optimizer.state.values() for v in state.values()]
            with LiveTensorBytes(t for t in existing if isinstance(t, torch.Tensor)) as tracker:
                step(model, optimizer, batch, task, device, dtype)
            peaks.append(tracker.peak)
    del model, optimizer, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return max(peaks) / 2**20


def loss_falls(model_name: str, config_name: str, batch_size: int, device, dtype: str, steps: int) -> dict:
    """Train `steps` steps at the model's from-scratch learning rate (`pretrain.py`'s), cycling over 4 fixed
    batches (what a model must be able to fit); the loss (per task, for FashionFAE) of the first and the last tenth
    of the steps. SyncMask's loss first rises while its feature queue fills and its distillation weight warms up."""
    from syncmask_hf.specs import get_spec

    rows = list(load_catalog(f"synthetic:{4 * batch_size}?seed=1&size=224"))
    model, _, _, tasks = build(model_name, config_name, batch_size, device, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=get_spec(model_name).scratch_lr)
    _, _, mode = training.model_classes(model_name)
    collator = syncmask_hf.FashionCollator(training.build_processor(model_name, model.config), mode=mode, seed=0)
    batches = [training.move_to_device(collator(rows[i::4]), device) for i in range(4)]
    losses = {task: [] for task in tasks}
    for i in range(steps):
        task = tasks[i % len(tasks)]
        losses[task].append(step(model, optimizer, batches[i % 4], task, device, dtype, timed=False))
    out = {}
    for task, values in losses.items():
        window = max(1, len(values) // 10)
        out[task or "loss"] = (statistics.mean(values[:window]), statistics.mean(values[-window:]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,small,base")
    p.add_argument("--models", default="syncmask,e2,fashionfae", help="which models (of each size's configs)")
    p.add_argument("--batch", type=int, default=32, help="batch of the tiny and small configs")
    p.add_argument("--batch-base", type=int, default=8, help="batch of the base configs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base-repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="bf16: autocast, as --mixed_precision")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument(
        "--utilisation", action="store_true", help="FLOPs per step, share of the matmul ceiling, peak memory"
    )
    p.add_argument("--loss_steps", type=int, default=0, help="then train N steps per model; fail unless loss falls")
    p.add_argument(
        "--torch_compile",
        action="store_true",
        help="also time each model under torch.compile (inductor), interleaved with eager (compiled in the warm-up)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}: choose from {sorted(CONFIGS)}")
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}

    batch_max = max(args.batch, args.batch_base)
    rows = list(load_catalog(f"synthetic:{batch_max}?seed=0&size=224"))
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}\n")
    ceiling = matmul_ceiling(device, args.dtype) if args.utilisation else None
    if ceiling:
        print(f"matmul ceiling ({args.dtype}, measured now): {ceiling / 1e9:.1f} GFLOP/s\n")
    print("| size | model | config | batch | step s (median) | pairs / s | vs SyncMask |")
    print("|---|---|---|---:|---:|---:|---:|")
    utilisation, falls, compiled = [], [], []
    for size in sizes:
        configs = {name: cfg for name, cfg in CONFIGS[size].items() if name in wanted}
        batch_size = args.batch_base if size == "base" else args.batch
        repeats = args.base_repeats if size == "base" else args.repeats
        runs = {name: build(name, cfg, batch_size, device, rows) for name, cfg in configs.items()}
        compile_s = {}
        if args.torch_compile:  # a second copy of each, compiled: "<name> (compiled)"
            for name, cfg in configs.items():
                model, optimizer, batch, tasks = build(name, cfg, batch_size, device, rows)
                runs[f"{name} (compiled)"] = (torch.compile(model), optimizer, batch, tasks)
        times = {(name, task): [] for name, run in runs.items() for task in run[3]}
        for name, task in times:  # warm-up (and AdamW state; compilation for the compiled copies)
            model, optimizer, batch, _ = runs[name]
            t = time.perf_counter()
            step(model, optimizer, batch, task, device, args.dtype)
            compile_s[name] = compile_s.get(name, 0.0) + time.perf_counter() - t
        for _ in range(repeats):
            for name, task in times:
                model, optimizer, batch, _ = runs[name]
                times[name, task].append(step(model, optimizer, batch, task, device, args.dtype))
        step_time, flops = {}, {}
        for name, (model, _, batch, tasks) in runs.items():
            base_name = name.removesuffix(" (compiled)")
            # FashionFAE: the task-sampled schedule, i.e. the config.task_probs-weighted mean over its tasks
            weights = model.config.task_probs if tasks != [None] else {None: 1.0}
            total = sum(weights[t] for t in tasks)
            step_time[name] = sum(weights[t] * statistics.median(times[name, t]) for t in tasks) / total
            if args.utilisation and name == base_name:
                flops[name] = sum(weights[t] * step_flops(model, batch, t, device, args.dtype) for t in tasks) / total
        reference = step_time.get("syncmask")
        for name, seconds in step_time.items():
            ratio = f"{seconds / reference:.2f}x" if reference else ""
            print(
                f"| {size} | {name} | {configs[name.removesuffix(' (compiled)')]} | {batch_size} | {seconds:.3f} | "
                f"{batch_size / seconds:.1f} | {ratio} |"
            )
        for name in configs:
            if f"{name} (compiled)" in step_time:
                compiled.append(
                    (size, name, step_time[name], step_time[f"{name} (compiled)"], compile_s[f"{name} (compiled)"])
                )
        del runs
        for name, cfg in configs.items():
            if args.utilisation:
                rate = flops[name] / step_time[name]
                memory = [peak_memory(name, cfg, batch_size, device, args.dtype, ckpt) for ckpt in (False, True)]
                utilisation.append((size, name, cfg, batch_size, flops[name], rate, step_time[name], *memory))
            if args.loss_steps:
                falls.append((size, name, loss_falls(name, cfg, batch_size, device, args.dtype, args.loss_steps)))
    if utilisation:
        # measured again after the steps: the higher of the two (load from elsewhere only lowers a measurement)
        later = matmul_ceiling(device, args.dtype)
        print(f"\nmatmul ceiling measured again after the steps: {later / 1e9:.1f} GFLOP/s")
        ceiling = max(ceiling, later)
        print(
            f"\n| size | model | config | batch | GFLOP / step | pairs / s | GFLOP/s | share of ceiling "
            f"({ceiling / 1e9:.0f} GFLOP/s) | peak MiB | peak MiB, checkpointing |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for size, name, cfg, batch_size, f, rate, seconds, mem, mem_ckpt in utilisation:
            print(
                f"| {size} | {name} | {cfg} | {batch_size} | {f / 1e9:.1f} | {batch_size / seconds:.1f} | "
                f"{rate / 1e9:.1f} | {100 * rate / ceiling:.0f}% | {mem:.0f} | {mem_ckpt:.0f} |"
            )
    if compiled:
        print("\n| size | model | eager step s | compiled step s | speed-up | first compiled step s (compiling) |")
        print("|---|---|---:|---:|---:|---:|")
        for size, name, eager, comp, first in compiled:
            print(f"| {size} | {name} | {eager:.3f} | {comp:.3f} | {eager / comp:.2f}x | {first:.1f} |")
    failed = []
    if falls:
        print(f"\n{args.loss_steps} steps on 4 fixed batches: loss (mean of the first / last tenth of the steps)\n")
        print("| size | model | loss | first | last | falls |")
        print("|---|---|---|---:|---:|---|")
        for size, name, result in falls:
            for task, (first, last) in result.items():
                print(f"| {size} | {name} | {task} | {first:.4f} | {last:.4f} | {'yes' if last < first else 'no'} |")
            # the model's verdict: its whole loss (FashionFAE: the sum over its tasks; a task can stall for a while)
            first, last = (sum(v[i] for v in result.values()) for i in (0, 1))
            if len(result) > 1:
                print(
                    f"| {size} | {name} | all tasks | {first:.4f} | {last:.4f} | {'yes' if last < first else 'NO'} |"
                )
            if not last < first:
                failed.append(f"{size} {name}")
    if failed:
        raise SystemExit(f"the loss did not fall for: {', '.join(failed)}")


if __name__ == "__main__":
    main()
