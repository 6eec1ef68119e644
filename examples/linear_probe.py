#!/usr/bin/env python
"""Linear probing of frozen image features (E2's protocol): brand, season, sub-category, composition, ...

    python examples/linear_probe.py --model_path outputs/pretrain/final --dataset myntra:../shared/data/myntra

The model (any of the package's, loaded with `AutoModel.from_pretrained(...)`; another type only with `--trust_remote_code`) stays frozen:
`get_image_features` embeds the training and the held-out products (product-disjoint split, same `--seed` /
`--test_products` / `--val_products` as pretrain.py), and a multinomial logistic-regression probe per attribute
(`syncmask_hf.evaluation.linear_probe`, L2 penalty chosen on a hold-out of the training rows) predicts it. Attributes
with fewer than two classes in the training rows are reported as skipped (H&M has no brand or season; Myntra has
brand, season and sub-category but no composition). Results: `<output_dir>/linear_probe.json` (+ .md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

import syncmask_hf  # noqa: F401  (registers the package's Auto classes)
from syncmask_hf import training
from syncmask_hf.evaluation import format_results_markdown, save_results

DEFAULT_ATTRIBUTES = "brand,season,subcategory,composition"
KNOWN = ("brand", "season", "subcategory", "composition", "category", "color", "gender")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a folder written by save_pretrained (or a Hub id)")
    training.add_trust_remote_code_argument(p)
    p.add_argument("--dataset", action="append", default=None, help="data-layer source(s), e.g. myntra:PATH")
    p.add_argument("--attributes", default=DEFAULT_ATTRIBUTES, help=f"comma-separated, from {list(KNOWN)}")
    p.add_argument("--output_dir", default="outputs/linear_probe")
    p.add_argument("--val_products", type=float, default=0.1)
    p.add_argument("--test_products", type=float, default=0.15)
    p.add_argument("--max_train_items", type=int, default=20000, help="subsample the probe's training rows")
    p.add_argument("--weight_decay", default="1e-4,1e-3,1e-2,1e-1", help="candidate L2 penalties")
    p.add_argument("--max_iter", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    unknown = [a for a in args.attributes if a not in KNOWN]
    if unknown or not args.attributes:
        p.error(f"--attributes: unknown {unknown}; choose from {list(KNOWN)}")
    try:
        args.weight_decay = [float(x) for x in args.weight_decay.split(",")]
    except ValueError:
        p.error(f"--weight_decay must be comma-separated numbers, got {args.weight_decay!r}")
    if not args.dataset:
        p.error("--dataset is required (e.g. myntra:../shared/data/myntra)")
    if args.max_train_items < 2:
        p.error("--max_train_items must be >= 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    model, processor = training.load_model_folder(args.model_path, trust_remote_code=args.trust_remote_code)
    model.to(args.device).eval()
    splits = training.load_catalog_splits(args.dataset, args.test_products, args.val_products, args.seed)
    train, test = splits["train"], splits["test"]
    results, skipped, info = training.probe_attributes(
        model,
        processor,
        train,
        test,
        args.attributes,
        args.device,
        args.batch_size,
        weight_decay=args.weight_decay,
        max_iter=args.max_iter,
        seed=args.seed,
        max_train_items=args.max_train_items,
    )
    if not results:
        raise SystemExit(f"error: no attribute could be probed on this catalogue: {skipped}")
    out = {
        "linear_probe": results,
        "skipped_attributes": skipped,
        "info": {"model_path": str(args.model_path), "datasets": args.dataset, **info},
    }
    path = save_results(out, Path(args.output_dir, "linear_probe.json"), title="linear probe on frozen image features")
    print(
        format_results_markdown(
            {k: {m: v[m] for m in ("top1", "macro_acc", "chance_top1", "num_classes")} for k, v in results.items()},
            title="linear probe accuracy (%) on held-out products (chance = majority class)",
        )
    )
    if skipped:
        print("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    print(f"results written to {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
