#!/usr/bin/env python
"""Fine-tune a pretrained model for product category / sub-category classification with Accelerate.

    accelerate launch examples/finetune_classification.py --model_path outputs/pretrain/final \
        --dataset myntra:../shared/data/myntra --task both

Heads (`--head`): `fusion` = `SyncMaskForProductClassification` (default for SyncMask: classifies the fused [CLS] of
image and text); `linear` = a linear layer per task on `get_image_features` (default for every other model, e.g. E2 /
FashionFAE; image only, the encoder is fine-tuned too unless `--freeze_encoder`). Classes are the categories /
sub-categories of the training products (product-disjoint split as in pretrain.py); test items whose class never
occurs in training are counted as ignored. Accuracy (top-1, top-5, macro) via `classification_accuracy`, before
(untrained head: chance) and after. Model + processor + `label_maps.json` go to `<output_dir>/final`.
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
from torch import nn
from tqdm.auto import tqdm

import syncmask_hf  # noqa: F401  (registers the package's Auto classes)
from syncmask_hf import training
from syncmask_hf.data.collator import FashionCollator
from syncmask_hf.evaluation import classification_accuracy, format_results_markdown, save_results
from syncmask_hf.specs import load_pretrained, models_with_head, task_head

logger = get_logger(__name__)
TASKS = {"category": ("category",), "subcategory": ("subcategory",), "both": ("category", "subcategory")}
HEAD_WEIGHTS = "classification_head.safetensors"


class ImageFeatureClassifier(nn.Module):
    """Linear heads on a dual encoder's `get_image_features` (model-agnostic classification)."""

    def __init__(self, model: nn.Module, num_classes: dict[str, int], freeze_encoder: bool = False):
        super().__init__()
        self.model = model
        dim = int(getattr(model.config, "embed_dim", 0) or getattr(model.config, "projection_dim", 0))
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in num_classes.items() if n})
        if freeze_encoder:
            model.requires_grad_(False)

    def forward(self, pixel_values, category_labels=None, subcategory_labels=None, **kwargs):
        features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        labels = {"category": category_labels, "subcategory": subcategory_labels}
        out, losses = {}, []
        for name, head in self.heads.items():
            logits = head(features)
            out[f"{name}_logits"] = logits
            y = labels[name]
            if y is not None and (y != -100).any():
                losses.append(nn.functional.cross_entropy(logits.float(), y, ignore_index=-100))
        out["loss"] = torch.stack(losses).sum() if losses else None
        return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_training_arguments(p, output_dir="outputs/finetune_classification", learning_rate=5e-5)
    p.add_argument("--task", choices=sorted(TASKS), default="both")
    p.add_argument("--head", choices=["auto", "fusion", "linear"], default="auto")
    p.add_argument("--freeze_encoder", action="store_true", help="linear head: train the heads only")
    args = p.parse_args(argv)
    training.check_training_arguments(args)
    return args


def label_maps(train, tasks) -> dict[str, list[str]]:
    maps = {}
    for name in tasks:
        classes = sorted({v for v in train[name] if v})
        if len(classes) < 2:
            raise SystemExit(
                f"error: the training products have {len(classes)} {name} value(s) ({classes}); classification "
                f"needs at least 2 -- pick another --task or a catalogue with {name} labels"
            )
        maps[name] = classes
    return maps


def build_model(args, maps):
    from transformers import AutoConfig, AutoModel

    config = load_pretrained(AutoConfig, args.model_path, trust_remote_code=args.trust_remote_code)
    head = args.head
    fusion_head = task_head(config, "classification")
    if head == "auto":
        head = "fusion" if fusion_head else "linear"
    if head == "fusion":
        if fusion_head is None:
            raise SystemExit(
                f"error: the fusion head exists for {', '.join(models_with_head('classification'))} only, not "
                f"{config.model_type}; use --head linear"
            )
        model = fusion_head.from_pretrained(
            args.model_path,
            num_categories=len(maps.get("category", [])),
            num_subcategories=len(maps.get("subcategory", [])),
        )
        return model, head, config
    base = load_pretrained(AutoModel, args.model_path, trust_remote_code=args.trust_remote_code)
    sizes = {name: len(maps.get(name, [])) for name in ("category", "subcategory")}
    return ImageFeatureClassifier(base, sizes, args.freeze_encoder), head, config


@torch.no_grad()
def evaluate(model, dataset, collator, tasks, args, accelerator, tag):
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.eval_batch_size, collate_fn=collator)
    logits = {name: [] for name in tasks}
    labels = {name: [] for name in tasks}
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc=f"classify ({tag})", disable=not accelerator.is_local_main_process):
        if batch is None:
            continue
        batch = training.move_to_device(batch, accelerator.device)
        out = model(**{k: v for k, v in batch.items() if not k.endswith("_labels")})
        for name in tasks:
            logits[name].append(out[f"{name}_logits"].float().cpu())
            labels[name].append(batch[f"{name}_labels"].cpu())
    model.train(was_training)
    results = {}
    for name in tasks:
        scores = torch.cat(logits[name])
        ks = (1, 5) if scores.shape[1] > 5 else (1,)
        results[name] = classification_accuracy(scores, torch.cat(labels[name]), ks=ks)
        results[name]["num_classes"] = scores.shape[1]
        results[name]["chance_top1"] = round(100.0 / scores.shape[1], 2)
    if accelerator.is_main_process:
        print(format_results_markdown(results, title=f"classification accuracy {tag}"))
    return results


def main(argv=None):
    args = parse_args(argv)
    accelerator, _ = training.make_accelerator(args, "finetune_classification", find_unused_parameters=True)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    tasks = TASKS[args.task]
    skip = args.bad_items == "skip"
    with accelerator.main_process_first():
        splits = training.load_catalog_splits(
            args.dataset, args.test_products, args.val_products, args.seed, skip_bad=skip
        )
    train, test = splits["train"], splits["test"]
    maps = label_maps(train, tasks)
    model, head, config = build_model(args, maps)
    from transformers import AutoProcessor

    processor = load_pretrained(AutoProcessor, args.model_path, trust_remote_code=args.trust_remote_code)
    collator = FashionCollator(
        processor,
        mode=training.collator_mode(config),
        skip_bad=skip,
        seed=args.seed,
        category_label_map=maps.get("category"),
        subcategory_label_map=maps.get("subcategory"),
        e2_text=training.e2_text(config),
    )
    logger.info(
        f"{head} head, tasks {list(tasks)} ({ {k: len(v) for k, v in maps.items()} } classes): train {len(train)}, "
        f"test {len(test)} items",
        main_process_only=True,
    )
    before = evaluate(model, test, collator, tasks, args, accelerator, "before fine-tuning")

    optimizer = torch.optim.AdamW(training.parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    steps_per_epoch = math.ceil(
        len(training.random_batch_loader(train, collator, args, accelerator, 0)) / args.gradient_accumulation_steps
    )
    total_steps = args.max_steps or args.num_epochs * steps_per_epoch
    scheduler = training.cosine_with_warmup(
        optimizer, args.warmup_steps, total_steps, num_processes=accelerator.num_processes
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def compute_loss(model, batch):
        out = model(**batch)
        loss = out["loss"]
        if loss is None:  # a batch without any known label: a zero loss that still touches the graph
            loss = sum(out[f"{name}_logits"].sum() for name in tasks) * 0.0
        return loss, {}

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
        desc=f"finetune classification ({head})",
        logger=logger,
    )
    unwrapped = accelerator.unwrap_model(model)
    after = evaluate(unwrapped, test, collator, tasks, args, accelerator, "after fine-tuning")

    results = {"before": before, "after": after}
    if accelerator.is_main_process:
        final = Path(args.output_dir, "final")
        if isinstance(unwrapped, ImageFeatureClassifier):
            from safetensors.torch import save_file

            unwrapped.model.save_pretrained(final)
            save_file({k: v.contiguous() for k, v in unwrapped.heads.state_dict().items()}, str(final / HEAD_WEIGHTS))
        else:
            unwrapped.save_pretrained(final)
        processor.save_pretrained(final)
        (final / "label_maps.json").write_text(json.dumps(maps, indent=1))
        results["training"] = {
            "head": head,
            "model_path": str(args.model_path),
            "steps": progress.global_step,
            "train_minutes": progress.history[-1]["train_minutes"],
            "skipped_bad_items": progress.skipped_items,
            "datasets": args.dataset,
        }
        save_results(results, final / "eval_results.json")
        rows = {
            f"{when} {name}": {k: results[when][name][k] for k in ("top1", "macro_acc", "chance_top1")}
            for name in tasks
            for when in ("before", "after")
        }
        print(format_results_markdown(rows, title="classification accuracy on held-out products, before / after"))
        print(f"model and processor saved to {final}")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
