"""Loading throughput on the H&M catalogue: items/s decoded (JPEG -> PIL) and processed into ``pixel_values``
tensors by transformers' ViT image processor (PIL backend), in one process and with torch DataLoader workers.

    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_data.py --root ../shared/data/hm --items 512 --repeats 3

Prints a table of medians over ``--repeats`` runs, side by side in one process, with ratios against the
single-process run. The H&M images are ~256 px JPEGs; the processor resizes to ``--size`` and normalises.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from syncmask_hf.data import load_catalog  # noqa: E402


def make_processor(size: int):
    try:  # the PIL class directly (no torchvision needed, no fallback warning)
        from transformers import ViTImageProcessorPil as cls
    except ImportError:  # older transformers: ViTImageProcessor falls back to PIL itself
        from transformers import ViTImageProcessor as cls
    return cls(size={"height": size, "width": size})


class Rows(Dataset):
    """Map-style view over a catalogue: decoding happens in ``__getitem__`` (so in the workers)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]["image"].convert("RGB")


class Collate:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images):
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


def run_decode_only(ds, batch):
    n = 0
    for start in range(0, len(ds), batch):
        for img in ds[start : start + batch]["image"]:
            img.convert("RGB").load()
            n += 1
    return n


def run_loop(ds, processor, batch):
    n = 0
    for start in range(0, len(ds), batch):
        images = [im.convert("RGB") for im in ds[start : start + batch]["image"]]
        pv = processor(images=images, return_tensors="pt")["pixel_values"]
        n += pv.shape[0]
    return n


def run_loader(ds, processor, batch, workers):
    loader = DataLoader(
        Rows(ds), batch_size=batch, num_workers=workers, collate_fn=Collate(processor), persistent_workers=False
    )
    n = 0
    for pv in loader:
        assert pv.dtype == torch.float32 and pv.ndim == 4
        n += pv.shape[0]
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    default_root = os.path.join(here, "..", "..", "..", "shared", "data", "hm")
    parser.add_argument("--root", default=os.environ.get("HM_ROOT", default_root))
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = load_catalog(f"hm:{args.root}")
    load_s = time.perf_counter() - t0
    ds = ds.select(range(min(args.items, len(ds))))
    processor = make_processor(args.size)
    print(f"catalogue: {args.root} ({load_s:.2f} s to index); {len(ds)} items, batch {args.batch}, {args.size} px")

    cases = [("decode only (1 process)", lambda: run_decode_only(ds, args.batch))]
    cases.append(("decode + process (1 process)", lambda: run_loop(ds, processor, args.batch)))
    cases.append(("DataLoader, 0 workers", lambda: run_loader(ds, processor, args.batch, 0)))
    for w in args.workers:
        cases.append((f"DataLoader, {w} workers", lambda w=w: run_loader(ds, processor, args.batch, w)))

    results = {}
    for _ in range(args.repeats):  # interleave the cases so machine load hits them alike
        for name, fn in cases:
            t = time.perf_counter()
            n = fn()
            results.setdefault(name, []).append(n / (time.perf_counter() - t))
    ref = statistics.median(results["decode + process (1 process)"])
    print(f"\n| {'mode':<30} | {'items/s (median)':>16} | {'min':>7} | {'max':>7} | {'vs 1 process':>12} |")
    print(f"|{'-' * 32}|{'-' * 18}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
    for name, _ in cases:
        r = results[name]
        med = statistics.median(r)
        print(f"| {name:<30} | {med:>16.1f} | {min(r):>7.1f} | {max(r):>7.1f} | {med / ref:>11.2f}x |")
    print(f"\n(os.cpu_count()={os.cpu_count()}; medians of {args.repeats} interleaved repeats)")


if __name__ == "__main__":
    main()
