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
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

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


def build(model_name: str, config_name: str, batch_size: int, device, rows):
    config_cls, model_cls, mode = training.model_classes(model_name)
    config = config_cls.from_json_file(str(preset_path(config_name) / "config.json"))
    torch.manual_seed(0)
    model = model_cls(config).to(device).train()
    processor = training.build_processor(model_name, config)
    collator = syncmask_hf.FashionCollator(processor, mode=mode, seed=0)
    batch = training.move_to_device(collator(rows[:batch_size]), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tasks = list(config.task_probs) if model_name == "fashionfae" else [None]
    return model, optimizer, batch, tasks


def step(model, optimizer, batch, task, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    kwargs = {"task": task} if task is not None else {}
    out = model(**batch, return_loss=True, **kwargs)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if hasattr(model, "update_teacher"):
        model.update_teacher()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,small,base")
    p.add_argument("--batch", type=int, default=32, help="batch of the tiny and small configs")
    p.add_argument("--batch-base", type=int, default=8, help="batch of the base configs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base-repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}: choose from {sorted(CONFIGS)}")

    batch_max = max(args.batch, args.batch_base)
    rows = list(load_catalog(f"synthetic:{batch_max}?seed=0&size=224"))
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| size | model | config | batch | step s (median) | pairs / s | vs SyncMask |")
    print("|---|---|---|---:|---:|---:|---:|")
    for size in sizes:
        batch_size = args.batch_base if size == "base" else args.batch
        repeats = args.base_repeats if size == "base" else args.repeats
        runs = {name: build(name, cfg, batch_size, device, rows) for name, cfg in CONFIGS[size].items()}
        times = {(name, task): [] for name, run in runs.items() for task in run[3]}
        for name, task in times:  # warm-up (and AdamW state)
            model, optimizer, batch, _ = runs[name]
            step(model, optimizer, batch, task, device)
        for _ in range(repeats):
            for name, task in times:
                model, optimizer, batch, _ = runs[name]
                times[name, task].append(step(model, optimizer, batch, task, device))
        step_time = {}
        for name, (model, _, _, tasks) in runs.items():
            if tasks == [None]:
                step_time[name] = statistics.median(times[name, None])
            else:  # the task-sampled schedule: expected step time under config.task_probs
                probs = model.config.task_probs
                step_time[name] = sum(probs[t] * statistics.median(times[name, t]) for t in tasks) / sum(
                    probs.values()
                )
        reference = step_time.get("syncmask")
        for name, seconds in step_time.items():
            ratio = f"{seconds / reference:.2f}x" if reference else ""
            print(
                f"| {size} | {name} | {CONFIGS[size][name]} | {batch_size} | {seconds:.3f} | "
                f"{batch_size / seconds:.1f} | {ratio} |"
            )
        del runs


if __name__ == "__main__":
    main()
