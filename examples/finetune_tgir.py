#!/usr/bin/env python
"""Fine-tune a pretrained model for text-guided image retrieval (reference image + modification text -> target).

    # H&M colour variants ("in red"): articles sharing a product_code, product-disjoint train / test
    accelerate launch examples/finetune_tgir.py --model_path outputs/pretrain/final --dataset hm:../shared/data/hm
    # FashionIQ (annotations + the Amazon images as <id>.jpg in one folder): train on train, evaluate on val
    accelerate launch examples/finetune_tgir.py --model_path outputs/pretrain/final \
        --fashioniq ../shared/data/fashioniq --fashioniq_images /data/fashioniq/images

Query model (`--head`): `fusion` = `SyncMaskForTextGuidedImageRetrieval` (default for SyncMask: the text cross-attends
to the reference image); `combiner` = `ComposedQueryModel`, normalize(img + txt + MLP([img; txt])) over CLIP's
`get_image_features` / `get_text_features` (default for dual encoders such as E2 / FashionFAE; its untrained state is
the plain image + text baseline). Metric: R@10 / R@50 (`tgir_recall`, reference excluded; FashionIQ per category and
their average), before and after. The model goes to `<output_dir>/final` (+ `tgir_combiner.*` for the combiner),
results to `<output_dir>/final/eval_results.json` (+ .md).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

import syncmask_hf  # noqa: F401  (registers the package's Auto classes)
from syncmask_hf import training
from syncmask_hf.data import FASHIONIQ_CATEGORIES
from syncmask_hf.evaluation import format_results_markdown, save_results
from syncmask_hf.tgir import (
    ComposedQueryModel,
    TripletCollator,
    TripletDataset,
    evaluate_tgir,
    load_tgir_model,
    tgir_sets,
)

logger = get_logger(__name__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_training_arguments(p, output_dir="outputs/finetune_tgir", learning_rate=5e-5)
    p.add_argument("--head", choices=["auto", "fusion", "combiner"], default="auto")
    p.add_argument(
        "--variant_group_by",
        default="product_id",
        help="catalogue columns (comma-separated) whose equal values make colour variants (H&M: product_id)",
    )
    p.add_argument("--max_triplets_per_product", type=int, default=None, help="cap of colour-variant triples")
    p.add_argument("--fashioniq", default=None, help="FashionIQ root (captions/, image_splits/) instead of --dataset")
    p.add_argument("--fashioniq_images", default=None, help="folder of the FashionIQ images as <id>.jpg")
    p.add_argument("--fashioniq_categories", default=",".join(FASHIONIQ_CATEGORIES))
    p.add_argument("--fashioniq_eval_split", default="val", choices=["val", "train"])
    args = p.parse_args(argv)
    training.check_training_arguments(args)
    if bool(args.dataset) == bool(args.fashioniq):
        p.error("pass either --dataset (colour variants of a catalogue) or --fashioniq ROOT (FashionIQ triplets)")
    if args.fashioniq and not args.fashioniq_images:
        p.error("--fashioniq needs --fashioniq_images (the folder holding <image id>.jpg)")
    cats = [c.strip() for c in args.fashioniq_categories.split(",") if c.strip()]
    bad = [c for c in cats if c not in FASHIONIQ_CATEGORIES]
    if bad or not cats:
        p.error(f"--fashioniq_categories: unknown {bad}; choose from {list(FASHIONIQ_CATEGORIES)}")
    args.fashioniq_categories = cats
    return args


def main(argv=None):
    args = parse_args(argv)
    accelerator, _ = training.make_accelerator(args, "finetune_tgir", find_unused_parameters=True)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    model, processor, head = load_tgir_model(args.model_path, args.head, args.trust_remote_code)
    with accelerator.main_process_first():
        try:
            train_set, test_set = tgir_sets(
                dataset=args.dataset,
                fashioniq=args.fashioniq,
                fashioniq_images=args.fashioniq_images,
                fashioniq_categories=args.fashioniq_categories,
                fashioniq_eval_split=args.fashioniq_eval_split,
                test_products=args.test_products,
                val_products=args.val_products,
                seed=args.seed,
                group_by=[c.strip() for c in args.variant_group_by.split(",") if c.strip()],
                max_triplets_per_product=args.max_triplets_per_product,
                skip_bad=args.bad_items == "skip",
            )
        except ValueError as error:  # no colour variants: a usage error, said without a traceback
            raise SystemExit(f"error: {error}") from None
    logger.info(
        f"TGIR ({head} head): {len(train_set)} training triplets, {len(test_set)} test queries over "
        f"{len(test_set.gallery)} images",
        main_process_only=True,
    )
    dataset, collator = TripletDataset(train_set), TripletCollator(processor)

    def evaluate(tag):
        results = evaluate_tgir(
            accelerator.unwrap_model(model),
            processor,
            test_set,
            accelerator.device,
            args.eval_batch_size,
            show_progress=accelerator.is_local_main_process,
        )
        if accelerator.is_main_process:
            print(format_results_markdown(results, title=f"TGIR {tag}"))
        return results

    before = evaluate("before fine-tuning")
    optimizer = torch.optim.AdamW(training.parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    steps_per_epoch = math.ceil(
        len(training.random_batch_loader(dataset, collator, args, accelerator, 0)) / args.gradient_accumulation_steps
    )
    total_steps = args.max_steps or args.num_epochs * steps_per_epoch
    scheduler = training.cosine_with_warmup(
        optimizer, args.warmup_steps, total_steps, num_processes=accelerator.num_processes
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def compute_loss(model, batch):
        return model(**batch, return_loss=True).loss, {}

    progress = training.run_training_loop(
        accelerator,
        args,
        model,
        optimizer,
        scheduler,
        lambda epoch: training.random_batch_loader(dataset, collator, args, accelerator, epoch),
        compute_loss,
        total_steps,
        desc=f"finetune TGIR ({head})",
        logger=logger,
    )
    after = evaluate("after fine-tuning")

    results = {"before": before, "after": after}
    if accelerator.is_main_process:
        final = Path(args.output_dir, "final")
        unwrapped = accelerator.unwrap_model(model)
        if isinstance(unwrapped, ComposedQueryModel):
            unwrapped.model.save_pretrained(final)
            unwrapped.save_combiner(final)
        else:
            unwrapped.save_pretrained(final)
        processor.save_pretrained(final)
        results["training"] = {
            "head": head,
            "model_path": str(args.model_path),
            "data": test_set.info["source"],
            "train_triplets": len(train_set),
            "test_queries": len(test_set),
            "steps": progress.global_step,
            "train_minutes": progress.history[-1]["train_minutes"],
        }
        save_results(results, final / "eval_results.json")
        keys = [k for k in after if k.startswith(("R@", "avg_R@"))]
        print(
            format_results_markdown(
                {when: {k: results[when][k] for k in keys} for when in ("before", "after")},
                title=f"TGIR recall ({test_set.info['source']}, {len(test_set)} queries), before / after",
            )
        )
        print(f"model and processor saved to {final}")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
