"""FashionFAE step time per pre-training task, side by side in one process.

One training step (forward, backward, AdamW update) for each task: ITC, ITM (hard negatives), plain MLM, AETP,
plain MIM and APIR. The runs are interleaved round-robin (task 1, task 2, ..., task 1, ...) so that load on a shared
machine hits every task alike, and each cell is the median over the repeats. Ratios compare each paper idea with its
baseline measured in the same run (AETP vs plain MLM, APIR vs plain MIM), and the task-sampled step (the paper's
schedule) with a step that sums all four objectives.

    python examples/benchmarks/bench_fashionfae.py --size tiny --repeats 10
    python examples/benchmarks/bench_fashionfae.py --size small --batch 16 --repeats 5
    python examples/benchmarks/bench_fashionfae.py --size base --batch 32 --device cuda   # the paper's size
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from syncmask_hf import FashionFAEConfig, FashionFAEForPreTraining, preset_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZES = {
    "small": dict(
        vision_config=dict(
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=3,
            intermediate_size=768,
            image_size=96,
            patch_size=8,
        ),
        text_config=dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768),
        fusion_grid=6,
        apir_num_masked=6,  # 8/49 of 36 cells
        apir_text_layer=2,
        embed_dim=128,
    ),
}


def make_config(size: str, **overrides) -> FashionFAEConfig:
    if size in ("tiny", "base"):
        config = FashionFAEConfig.from_pretrained(preset_path(f"fashionfae-{size}"))
        for key, value in overrides.items():
            setattr(config, key, value)
        config.validate()
        return config
    return FashionFAEConfig(**SIZES[size], **overrides)


def make_batch(config: FashionFAEConfig, batch: int, device: str) -> dict:
    """An attribute-templated batch in the processor's layout: [CLS] title description 5 x (template value .) [SEP]."""
    roles, attrs = [0] + [1] * 6 + [2] * 30, [-1] * 37
    for k in range(5):
        roles += [3] * 4 + [4] * 2 + [3]
        attrs += [-1] * 4 + [k] * 2 + [-1]
    roles.append(0)
    attrs.append(-1)
    length = len(roles)
    ids = torch.randint(1000, config.text_config.vocab_size, (batch, length))
    ids[:, 0], ids[:, -1] = config.cls_token_id, config.sep_token_id
    size = config.vision_config.image_size
    return {
        "pixel_values": torch.randn(batch, 3, size, size, device=device),
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "token_roles": torch.tensor(roles, device=device).expand(batch, -1).contiguous(),
        "attribute_ids": torch.tensor(attrs, device=device).expand(batch, -1).contiguous(),
        "product_ids": torch.arange(batch, device=device) // 2,  # two images per product, as in catalogues
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "base"], default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    paper = make_config(args.size)  # aetp=True, apir=True
    ablation = make_config(args.size, aetp=False, apir=False)  # plain MLM and plain MIM
    models = {"paper": FashionFAEForPreTraining(paper), "ablation": FashionFAEForPreTraining(ablation)}
    models["ablation"].load_state_dict(models["paper"].state_dict())  # same weights: only the task differs
    optimizers = {}
    for name, model in models.items():
        model.to(args.device).train()
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(paper, args.batch, args.device)

    runs = [  # (label, model, task)
        ("ITC", "paper", "itc"),
        ("ITM (hard negatives)", "paper", "itm"),
        ("MLM (plain, 15% random)", "ablation", "mlm"),
        ("AETP", "paper", "aetp"),
        ("MIM (plain, random cells)", "ablation", "apir"),
        ("APIR", "paper", "apir"),
        ("all four summed (no sampling)", "paper", "sum"),
    ]

    def step(model_name: str, task: str) -> float:
        model, optimizer = models[model_name], optimizers[model_name]
        sync(args.device)
        start = time.perf_counter()
        if task == "sum":
            loss = sum(model(**batch, task=t).loss for t in ("itc", "itm", "mlm", "apir"))
        else:
            loss = model(**batch, task=task).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(args.device)
        return time.perf_counter() - start

    times = {label: [] for label, _, _ in runs}
    for repeat in range(args.warmup + args.repeats):
        for label, model_name, task in runs:
            elapsed = step(model_name, task)
            if repeat >= args.warmup:
                times[label].append(elapsed)
    median = {label: statistics.median(values) * 1000 for label, values in times.items()}

    probs = paper.task_probs
    slot = {"itc": "ITC", "itm": "ITM (hard negatives)", "mlm": "AETP", "apir": "APIR"}
    sampled = sum(p * median[slot[t]] for t, p in probs.items())
    itc = median["ITC"]
    params = sum(p.numel() for p in models["paper"].parameters()) / 1e6
    print(
        f"\nFashionFAE step time, size={args.size} ({params:.1f}M params), batch={args.batch}, "
        f"image={paper.vision_config.image_size}px, text={batch['input_ids'].shape[1]} tokens, device={args.device}, "
        f"median of {args.repeats} (after {args.warmup} warm-up), torch threads={torch.get_num_threads()}\n"
    )
    print("| task | step ms (median) | vs ITC | vs its baseline |")
    print("| --- | ---: | ---: | ---: |")
    baseline = {"AETP": "MLM (plain, 15% random)", "APIR": "MIM (plain, random cells)"}
    for label, _, _ in runs:
        versus = f"{median[label] / median[baseline[label]]:.2f}x" if label in baseline else ""
        print(f"| {label} | {median[label]:.1f} | {median[label] / itc:.2f}x | {versus} |")
    print(f"| task-sampled step, expected ({', '.join(f'{t} {p:g}' for t, p in probs.items())}) | {sampled:.1f} | "
          f"{sampled / itc:.2f}x | {sampled / median['all four summed (no sampling)']:.2f}x of the summed step |")  # fmt: skip


if __name__ == "__main__":
    main()
