"""E2 vs CLIP, side by side in one process: image-encoding throughput and one training step.

- Encoding: `E2Model.get_image_features` (selection tokens + fusion blocks, argmax selection in eval) against
  transformers' CLIP image path of the same size and weights (`CLIPVisionModel` + visual projection, i.e.
  `CLIPModel.get_image_features`). Target: E2 at most 1.15x slower.
- Training step: forward + backward + Adam step of E2's full loss (global InfoNCE + regional InfoNCE over the entity
  value texts) against a plain CLIP contrastive step (`CLIPModel(..., return_loss=True)`).

Each row also gives the FLOPs of one call (`FlopCounterMode`: what the method computes, whatever the speed) and
their ratio to CLIP's: a time ratio near the FLOP ratio means the extra time is the method's extra work.

Timings are interleaved round-robin (each repeat runs every contender once) so that load from other processes hits
all of them alike; the table shows medians. Random weights (only the shapes matter for speed); fp32 on CPU.

    python examples/benchmarks/bench_e2.py                       # tiny encode + train, ViT-B/32 encode
    python examples/benchmarks/bench_e2.py --sizes b32 --train-sizes b32 --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel

from syncmask_hf import E2Model

SIZES = {
    # CPU-sized towers with the tiny hub config's shapes (preset e2-tiny)
    "tiny": dict(
        text=dict(
            vocab_size=30522,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            eos_token_id=102,
            pad_token_id=0,
            bos_token_id=101,
        ),
        vision=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        ),
        projection_dim=32,
        text_len=32,
    ),  # fmt: skip
    # the paper's backbone, openai/clip-vit-base-patch32 shapes
    "b32": dict(
        text=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
        ),
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
        text_len=77,
    ),  # fmt: skip
}


def build(size: str, device: str) -> tuple[CLIPModel, E2Model, E2Model]:
    spec = SIZES[size]
    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(text_config=spec["text"], vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    )
    e2 = E2Model.from_clip(clip)
    e2_no_fusion = E2Model.from_clip(clip, use_fusion_blocks=False)
    return clip.to(device), e2.to(device), e2_no_fusion.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# Catalogue-like entity values (brand, season, subcategory, description): how many distinct values a batch draws
# from, and their lengths in tokens. Brands, seasons and subcategories repeat across a batch; descriptions do not.
ENTITY_VALUES = ((12, (1, 3)), (4, (1, 1)), (24, (1, 2)), (None, (12, 30)))


def inputs(size: str, batch: int, device: str, entity_values: str = "catalogue") -> dict:
    """A batch of random tokens; entity value texts either catalogue-like (`ENTITY_VALUES`, padded to the longest)
    or `random` (every value distinct, 8 tokens: the case where encoding distinct values once saves nothing)."""
    spec = SIZES[size]
    g = torch.Generator().manual_seed(0)
    image = spec["vision"]["image_size"]
    length, vocab = spec["text_len"], spec["text"]["vocab_size"]
    eos = spec["text"].get("eos_token_id", 49407)
    ids = torch.randint(1000, vocab - 1000, (batch, length), generator=g)
    ids[:, -1] = eos
    if entity_values == "random":
        ent = torch.randint(1000, vocab - 1000, (batch, 4, 8), generator=g)
        ent[..., -1] = eos
        mask = torch.ones_like(ent)
    else:
        longest = max(hi for _, (_, hi) in ENTITY_VALUES) + 1
        ent = torch.zeros(batch, len(ENTITY_VALUES), longest, dtype=torch.long)
        mask = torch.zeros_like(ent)
        for e, (distinct, (lo, hi)) in enumerate(ENTITY_VALUES):
            # a value's tokens and length follow from its id, so equal values are equal texts
            values = torch.randint(0, distinct, (batch,), generator=g) if distinct else torch.arange(batch) + 10**4
            for i, v in enumerate(values.tolist()):
                n = lo + (v * 7919) % (hi - lo + 1)
                tokens = [1000 + (v * 31 + e * 997 + t * 13) % (vocab - 2000) for t in range(n)] + [eos]
                ent[i, e, : len(tokens)] = torch.tensor(tokens)
                mask[i, e, : len(tokens)] = 1
    data = {
        "pixel_values": torch.randn(batch, 3, image, image, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "entity_input_ids": ent,
        "entity_attention_mask": mask,
        "entity_valid": torch.ones(batch, ent.shape[1], dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in data.items()}


def count_flops(fn) -> float:
    """FLOPs of one call (matmuls, convolutions, attention), as `FlopCounterMode` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def rows_with_flops(setting: str, batch: int, med: dict, fns: dict, ref_name: str) -> list[tuple]:
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    ref, ref_flops = med[ref_name], flops[ref_name]
    return [(setting, n, t, batch / t, t / ref, flops[n], flops[n] / ref_flops) for n, t in med.items()]


def bench_encode(size: str, batch: int, repeats: int, warmup: int, device: str) -> list[tuple]:
    clip, e2, e2_nf = build(size, device)
    for m in (clip, e2, e2_nf):
        m.eval()
    px = inputs(size, batch, device)["pixel_values"]

    def run(fn):
        def call():
            with torch.inference_mode():
                fn(px)

        return call

    fns = {
        "CLIP (CLIPVisionModel + projection)": run(clip.get_image_features),
        "E2 (selection tokens + fusion blocks)": run(e2.get_image_features),
        "E2 without fusion blocks": run(e2_nf.get_image_features),
    }
    med = interleaved(fns, repeats, warmup, device)
    return rows_with_flops(f"encode {size}, batch {batch}", batch, med, fns, "CLIP (CLIPVisionModel + projection)")


def bench_train(size: str, batch: int, repeats: int, warmup: int, device: str, entity_values: str) -> list[tuple]:
    import copy

    clip, e2, _ = build(size, device)
    # the same E2 encoding every row's entity text, padded (what a step did before `encode_distinct_entity_texts`)
    e2_rows = copy.deepcopy(e2)
    e2_rows.config.encode_distinct_entity_texts = False
    data = inputs(size, batch, device, entity_values)
    clip.train()
    e2.train()
    e2_rows.train()
    opt_clip = torch.optim.Adam(clip.parameters(), lr=1e-6)
    opt_e2 = torch.optim.Adam(e2.parameters(), lr=1e-6)
    opt_e2_rows = torch.optim.Adam(e2_rows.parameters(), lr=1e-6)

    def clip_step():
        opt_clip.zero_grad(set_to_none=True)
        out = clip(
            input_ids=data["input_ids"],
            attention_mask=data["attention_mask"],
            pixel_values=data["pixel_values"],
            return_loss=True,
        )
        out.loss.backward()
        opt_clip.step()

    def e2_step():
        opt_e2.zero_grad(set_to_none=True)
        e2(**data, return_loss=True).loss.backward()
        opt_e2.step()

    def e2_rows_step():
        opt_e2_rows.zero_grad(set_to_none=True)
        e2_rows(**data, return_loss=True).loss.backward()
        opt_e2_rows.step()

    fns = {
        "CLIP contrastive step": clip_step,
        "E2 step, every entity row encoded (before)": e2_rows_step,
        "E2 step (global + 4 regional)": e2_step,
    }
    med = interleaved(fns, repeats, warmup, device)
    setting = f"train {size}, batch {batch}, {entity_values} entity values"
    return rows_with_flops(setting, batch, med, fns, "CLIP contrastive step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", default=["tiny", "b32"], choices=list(SIZES), help="encoding sizes")
    parser.add_argument("--train-sizes", nargs="*", default=["tiny"], choices=list(SIZES), help="training sizes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--entity_values",
        choices=["catalogue", "random"],
        default="catalogue",
        help="catalogue: brands, seasons, subcategories repeat across the batch (ENTITY_VALUES); random: all distinct",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        rows += bench_encode(size, args.batch, args.repeats, args.warmup, args.device)
    for size in args.train_sizes:
        rows += bench_train(size, args.batch, args.repeats, args.warmup, args.device, args.entity_values)

    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"\nE2 vs CLIP on {device}, fp32, medians of {args.repeats} interleaved repeats\n")
    print("| setting | model | median ms / batch | items/s | ratio vs CLIP | GFLOP / batch | FLOPs vs CLIP |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for setting, name, t, rate, ratio, flops, flop_ratio in rows:
        print(
            f"| {setting} | {name} | {t * 1e3:.1f} | {rate:.1f} | {ratio:.2f}x | {flops / 1e9:.1f} | "
            f"{flop_ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
