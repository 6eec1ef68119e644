#!/usr/bin/env python
"""Fine-tune a pretrained model for cross-modal (image <-> text) retrieval with Accelerate.

    accelerate launch examples/finetune_retrieval.py --model_path outputs/pretrain/final --dataset hm:../shared/data/hm
    accelerate launch examples/finetune_retrieval.py ... --resume_from_checkpoint latest

Objectives (`--objective`):
* `itc_itm` (default for SyncMask): ALBEF's retrieval fine-tuning -- the model's own ITC (multi-positive, momentum
  distillation, queue) + ITM with semi-hard negatives, i.e. SyncMask's pretraining loss with the MLM and MIM weights
  set to 0 (`--config_override` changes more fields).
* `itc` (default for every other model, e.g. E2 / FashionFAE): the multi-positive contrastive loss on CLIP's
  `get_image_features` / `get_text_features` with a learned temperature (`ContrastiveFineTuning`).

The held-out products are those of `product_disjoint_split` with the same `--seed` / `--test_products` /
`--val_products` as pretrain.py, so a pretrained model is never fine-tuned on its test products. Full-gallery and
sample-100 recall are measured before and after; the model and processor go to `<output_dir>/final`, the results to
`<output_dir>/final/eval_results.json` (+ .md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

import syncmask_hf  # noqa: F401  (registers the package's Auto classes)
from syncmask_hf import training
from syncmask_hf.data.collator import FashionCollator
from syncmask_hf.evaluation import format_results_markdown, save_results
from syncmask_hf.specs import load_pretrained, task_head

logger = get_logger(__name__)
DEFAULT_OVERRIDES = {"syncmask": {"mlm_weight": 0.0, "mim_weight": 0.0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_training_arguments(p, output_dir="outputs/finetune_retrieval", learning_rate=2e-5)
    p.add_argument("--objective", choices=["auto", "itc_itm", "itc"], default="auto")
    p.add_argument(
        "--config_override",
        default=None,
        help="JSON of config fields for the itc_itm objective (default for SyncMask: zero MLM / MIM weights)",
    )
    args = p.parse_args(argv)
    training.check_training_arguments(args)
    return args


def load_model(args):
    """(model to train, processor, objective name). `itc_itm` loads the pretraining class (its forward computes the
    losses); `itc` any model with CLIP's interface, wrapped with a learned temperature."""
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor

    config = load_pretrained(AutoConfig, args.model_path, trust_remote_code=args.trust_remote_code)
    objective = args.objective
    if objective == "auto":
        # Models with an ITM head fine-tune it with ITC; the others fine-tune their two towers with ITC alone.
        objective = "itc_itm" if task_head(config, "retrieval") else "itc"
    processor = load_pretrained(AutoProcessor, args.model_path, trust_remote_code=args.trust_remote_code)
    if objective == "itc":
        model = load_pretrained(AutoModel, args.model_path, trust_remote_code=args.trust_remote_code)
        return training.ContrastiveFineTuning(model), processor, objective, config
    overrides = dict(DEFAULT_OVERRIDES.get(config.model_type, {}))
    overrides.update(json.loads(args.config_override) if args.config_override else {})
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise SystemExit(f"error: --config_override: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    try:
        model = load_pretrained(
            AutoModelForPreTraining, args.model_path, config=config, trust_remote_code=args.trust_remote_code
        )
    except ValueError as err:  # no pretraining head registered for this model type
        raise SystemExit(
            f"error: {config.model_type} has no pretraining class with a loss for --objective itc_itm; use --objective itc"
        ) from err
    return model, processor, objective, config


def main(argv=None):
    args = parse_args(argv)
    accelerator, _ = training.make_accelerator(args, "finetune_retrieval")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    model, processor, objective, config = load_model(args)
    skip = args.bad_items == "skip"
    with accelerator.main_process_first():
        splits = training.load_catalog_splits(
            args.dataset, args.test_products, args.val_products, args.seed, skip_bad=skip
        )
    collator = FashionCollator(
        processor,
        mode=training.collator_mode(config),
        skip_bad=skip,
        seed=args.seed,
        e2_text=training.e2_text(config),
    )
    train, test = splits["train"], splits["test"]
    logger.info(f"{objective}: train {len(train)} items, test {len(test)} items", main_process_only=True)

    def evaluate(tag):
        results = training.evaluate_retrieval(
            accelerator.unwrap_model(model),
            test,
            collator,
            accelerator.device,
            seed=args.seed,
            num_workers=args.num_workers,
            show_progress=accelerator.is_local_main_process,
        )
        if accelerator.is_main_process:
            print(training.retrieval_summary_table(results, title=f"{tag}: held-out products"))
        return results

    before = evaluate("before fine-tuning")

    optimizer = torch.optim.AdamW(training.parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    steps_per_epoch = math.ceil(
        len(training.random_batch_loader(train, collator, args, accelerator, 0)) / args.gradient_accumulation_steps
    )
    total_steps = args.max_steps or args.num_epochs * steps_per_epoch
    scheduler = training.cosine_with_warmup(
        optimizer, args.warmup_steps, total_steps, num_processes=accelerator.num_processes
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    def compute_loss(model, batch):
        if objective == "itc":
            return model(**batch), {}
        out = model(**batch, return_loss=True)
        logs = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss_") and v is not None}
        return out.loss, logs

    progress = training.run_training_loop(
        accelerator,
        args,
        model,
        optimizer,
        scheduler,
        lambda epoch: training.random_batch_loader(train, collator, args, accelerator, epoch),
        compute_loss,
        total_steps,
        collator=collator,
        desc=f"finetune retrieval ({objective})",
        state=training.training_state(unwrapped),
        after_step=[lambda progress: unwrapped.update_teacher()] if hasattr(unwrapped, "update_teacher") else None,
        logger=logger,
    )
    after = evaluate("after fine-tuning")

    results = {"before": before, "after": after}
    if accelerator.is_main_process:
        final = Path(args.output_dir, "final")
        to_save = unwrapped.model if isinstance(unwrapped, training.ContrastiveFineTuning) else unwrapped
        to_save.save_pretrained(final)
        processor.save_pretrained(final)
        results["training"] = {
            "objective": objective,
            "model_path": str(args.model_path),
            "steps": progress.global_step,
            "samples_seen": progress.samples_seen,
            "train_minutes": progress.history[-1]["train_minutes"],
            "skipped_bad_items": progress.skipped_items,
            "datasets": args.dataset,
        }
        save_results(results, final / "eval_results.json")
        rows = {
            f"{when} {protocol}": {k: results[when][protocol][k] for k in training.RECALL_COLUMNS}
            for protocol in ("full", "sample100")
            for when in ("before", "after")
        }
        print(format_results_markdown(rows, title="retrieval recall on held-out products, before / after"))
        print(f"model and processor saved to {final}")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
