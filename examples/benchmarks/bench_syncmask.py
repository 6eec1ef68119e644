"""SyncMask benchmark: one pretraining step, synchronized vs random masking, and feature-extraction throughput
against transformers' `BlipForImageTextRetrieval` at matching size (random init; no downloads).

    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_syncmask.py --size small --repeats 5

Step time: medians over `--repeats` steps (forward + backward + optimizer + teacher EMA update), the two strategies
interleaved in one process so they see the same machine load. Target: synchronized <= 1.15x random (the teacher's
unimodal encoders run anyway for distillation; synchronized masks add one no-grad teacher fusion pass).

Peak memory of a step: on CUDA `torch.cuda.max_memory_allocated` (reset before the step). On CPU torch's allocator
is invisible to tracemalloc, so each strategy runs in a fresh child process and reports the rise of the process's
resident set size, sampled every millisecond by a thread during its first step, over its RSS just before: that
step's peak working memory above the model (activations, gradients, and AdamW's state, the same for both).

Throughput: images/s of `get_image_features` and texts/s of `get_text_features`, medians of repeats. BLIP is
configured with the same vision tower and a text encoder as deep as SyncMask's whole BERT stack
(text + fusion layers), since BLIP's text features run every layer of its text encoder, while SyncMask's run only
the text-only layers (ALBEF's split).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time

import torch

from syncmask_hf import SyncMaskConfig, SyncMaskForPreTraining, SyncMaskModel  # noqa: E402

SIZES = {
    # name: (vision hidden, vision layers, image size, patch, text hidden, text layers, fusion layers, heads, batch, L)
    "tiny": (64, 2, 64, 16, 64, 1, 1, 2, 8, 24),
    "small": (192, 4, 128, 16, 192, 2, 2, 3, 8, 32),
    "base": (768, 12, 224, 16, 768, 6, 6, 12, 32, 40),
}


def make_config(size: str, strategy: str) -> SyncMaskConfig:
    vh, vl, img, patch, th, tl, fl, heads, _, _ = SIZES[size]
    return SyncMaskConfig(
        vision_config=dict(
            hidden_size=vh, num_hidden_layers=vl, num_attention_heads=heads, intermediate_size=4 * vh,
            image_size=img, patch_size=patch,
        ),
        text_config=dict(hidden_size=th, num_attention_heads=heads, intermediate_size=4 * th),
        num_text_layers=tl, num_fusion_layers=fl, embed_dim=min(256, th), queue_size=1024,
        masking_strategy=strategy, sync_attention_layers=min(2, fl),
    )  # fmt: skip


def make_batch(size: str, device):
    _, _, img, _, _, _, _, _, b, length = SIZES[size]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    mask[: b // 2, length * 3 // 4 :] = 0  # some padding
    return {
        "pixel_values": torch.randn(b, 3, img, img, generator=g).to(device),
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "product_ids": torch.arange(b).div(2, rounding_mode="floor").to(device),  # two images per product
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, batch):
    out = model(**batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher()
    return out


def bench_steps(size: str, repeats: int, device) -> dict[str, list[float]]:
    torch.manual_seed(0)
    models = {s: SyncMaskForPreTraining(make_config(size, s)).to(device).train() for s in ("synchronized", "random")}
    models["random"].load_state_dict(models["synchronized"].state_dict())
    optimizers = {s: torch.optim.AdamW(m.parameters(), lr=1e-4) for s, m in models.items()}
    batch = make_batch(size, device)
    times = {s: [] for s in models}
    for s in models:  # warm-up
        train_step(models[s], optimizers[s], batch)
    for _ in range(repeats):
        for s in models:
            sync(device)
            start = time.perf_counter()
            train_step(models[s], optimizers[s], batch)
            sync(device)
            times[s].append(time.perf_counter() - start)
    return times


def _memory_child(size: str, strategy: str, device_name: str, queue) -> None:
    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SyncMaskForPreTraining(make_config(size, strategy)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(size, device)
    if device.type == "cuda":
        train_step(model, optimizer, batch)  # optimizer state exists from here on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, batch)
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
        return
    # CPU: a thread samples this process's resident set size every millisecond during the FIRST step and reports
    # its peak above the RSS just before (a fresh process, so freed-but-retained heap from earlier steps cannot hide
    # the rise). This includes creating AdamW's state, the same for both strategies.
    stop = threading.Event()
    peak = [_rss_mib()]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    before = _rss_mib()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    train_step(model, optimizer, batch)
    stop.set()
    sampler.join()
    queue.put(max(peak[0], _rss_mib()) - before)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory(size: str, device) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    result = {}
    for strategy in ("synchronized", "random"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory_child, args=(size, strategy, str(device), queue))
        proc.start()
        result[strategy] = queue.get()
        proc.join()
    return result


def bench_features(size: str, repeats: int, device) -> dict[str, dict[str, float]]:
    from transformers import BlipConfig, BlipForImageTextRetrieval

    vh, vl, img, patch, th, tl, fl, heads, b, _ = SIZES[size]
    torch.manual_seed(0)
    ours = SyncMaskModel(make_config(size, "synchronized")).to(device).eval()
    blip = BlipForImageTextRetrieval(
        BlipConfig(
            vision_config=dict(
                hidden_size=vh, num_hidden_layers=vl, num_attention_heads=heads, intermediate_size=4 * vh,
                image_size=img, patch_size=patch,
            ),
            text_config=dict(
                hidden_size=th, num_hidden_layers=tl + fl, num_attention_heads=heads, intermediate_size=4 * th,
                encoder_hidden_size=vh,
            ),
            image_text_hidden_size=min(256, th),
        )
    ).to(device).eval()  # fmt: skip
    batch = make_batch(size, device)
    px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]

    def blip_image():
        hidden = blip.vision_model(pixel_values=px).last_hidden_state
        return torch.nn.functional.normalize(blip.vision_proj(hidden[:, 0]), dim=-1)

    def blip_text():
        hidden = blip.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return torch.nn.functional.normalize(blip.text_proj(hidden[:, 0]), dim=-1)

    runs = {
        ("SyncMask", "image"): lambda: ours.get_image_features(px),
        ("BLIP", "image"): blip_image,
        ("SyncMask", "text"): lambda: ours.get_text_features(ids, mask),
        ("BLIP", "text"): blip_text,
    }
    result: dict[str, dict[str, float]] = {"SyncMask": {}, "BLIP": {}}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        times = {key: [] for key in runs}
        for _ in range(repeats):
            for key, fn in runs.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[key].append(time.perf_counter() - start)
    for (model, kind), values in times.items():
        result[model][kind] = b / statistics.median(values)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 = steadier on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    vh, vl, img, patch, th, tl, fl, heads, b, length = SIZES[args.size]
    print(
        f"size={args.size}: ViT {vl}x{vh} @ {img}px/{patch}, BERT {tl} text + {fl} fusion x{th}, batch {b}, "
        f"L={length}, device={device}, torch threads={torch.get_num_threads()}, repeats={args.repeats}\n"
    )
    times = bench_steps(args.size, args.repeats, device)
    memory = None if args.skip_memory else bench_memory(args.size, device)
    med = {s: statistics.median(v) for s, v in times.items()}
    mem_label = "peak CUDA MiB" if device.type == "cuda" else "peak RSS rise MiB"
    print(f"| masking | step time (median s) | vs random | {mem_label} | vs random |")
    print("|---|---|---|---|---|")
    for s in ("synchronized", "random"):
        mem = "n/a" if memory is None else f"{memory[s]:.0f}"
        mem_ratio = "n/a" if memory is None or memory["random"] <= 0 else f"{memory[s] / memory['random']:.2f}x"
        print(f"| {s} | {med[s]:.3f} | {med[s] / med['random']:.2f}x | {mem} | {mem_ratio} |")
    print(f"\nsynchronized / random step time = {med['synchronized'] / med['random']:.3f} (target <= 1.15)\n")

    feats = bench_features(args.size, args.repeats, device)
    print("| features | SyncMask (items/s) | BLIP ITR (items/s) | SyncMask / BLIP |")
    print("|---|---|---|---|")
    for kind in ("image", "text"):
        ours, blip = feats["SyncMask"][kind], feats["BLIP"][kind]
        print(f"| {kind} | {ours:.1f} | {blip:.1f} | {ours / blip:.2f}x |")


if __name__ == "__main__":
    main()
