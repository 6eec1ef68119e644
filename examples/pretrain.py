#!/usr/bin/env python
"""Pretrain SyncMask, E2 or FashionFAE with Accelerate.

    accelerate launch examples/pretrain.py                       # offline: tiny E2 on the synthetic catalogue, ~2 min
    accelerate launch examples/pretrain.py --model e2 --dataset hm:../shared/data/hm --dataset myntra:../shared/data/myntra
    accelerate launch --mixed_precision bf16 examples/pretrain.py --model syncmask --config syncmask-base ...
    accelerate launch examples/pretrain.py ... --resume_from_checkpoint latest   # continue a killed run exactly

With no arguments it trains the tiny E2 config on the embedded synthetic catalogue for 200 steps (a few minutes on CPU)
and prints retrieval recall on held-out products. Checkpoints (`Accelerator.save_state`, with the feature queues and
the position in the data) go to `<output_dir>/checkpoints/step_N`; the final model and its processor to
`<output_dir>/final` (`AutoModel.from_pretrained(<output_dir>/final, trust_remote_code=True)`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    set_seed,
)

import syncmask_hf
from syncmask_hf import training
from syncmask_hf.data import text_id
from syncmask_hf.evaluation import save_results
from syncmask_hf.models.pretrained import resolve_pretrained
from syncmask_hf.specs import SPECS, get_spec
from syncmask_hf.training import (
    TimeBudget,
    TrainingBuffers,
    adopt_text_checkpoint,
    build_processor,
    check_replicas,
    cosine_with_budget,
    cosine_with_warmup,
    e2_text,
    load_catalog_splits,
    model_classes,
    multi_cpu_launch,
    parameter_groups,
    resolve_config_path,
)

logger = get_logger(__name__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SPECS), default="e2")
    p.add_argument(
        "--config",
        default=None,
        help="a preset name (syncmask_hf.list_presets()), a folder with config.json, or a JSON file (default: syncmask-small, e2-tiny, fashionfae-tiny)",
    )
    p.add_argument(
        "--config_override",
        default=None,
        help='JSON of config fields to change, e.g. \'{"masking_strategy": "random"}\' (the ablations)',
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="a data-layer source (repeat to mix), e.g. synthetic:2000, hm:PATH, myntra:PATH (default: synthetic:2400)",
    )
    p.add_argument(
        "--text_pretrained",
        default=None,
        help="initialise the text tower from a BERT folder / Hub id ('minilm' = the offline all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--vision_pretrained", default=None, help="initialise the vision tower from a checkpoint folder / Hub id"
    )
    p.add_argument("--output_dir", default="outputs/pretrain")
    p.add_argument(
        "--num_epochs",
        type=int,
        default=None,
        help="default: 200 optimizer steps when neither --num_epochs nor --max_steps is given",
    )
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="stop after this much training time, over resumes too (then evaluate and save); without --max_steps "
        "/ --num_epochs the cosine LR schedule runs over the budget's time",
    )
    p.add_argument("--batch_size", type=int, default=32, help="per-process batch size")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="default: 5e-4 (E2; SyncMask and FashionFAE with a random-init tower), 1e-4 (SyncMask, FashionFAE with "
        "both towers from checkpoints)",
    )
    p.add_argument(
        "--checkpoint_lr_scale",
        type=float,
        default=1.0,
        help="learning rate of the parameters copied from --text_pretrained / --vision_pretrained, as a multiple "
        "of --learning_rate (the new parameters take --learning_rate); 1 = one rate for all, as ALBEF",
    )
    p.add_argument("--weight_decay", type=float, default=0.02)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--warmup_steps", type=int, default=20)
    p.add_argument("--max_grad_norm", type=float, default=5.0)
    p.add_argument(
        "--sampler",
        choices=["default", "curriculum", "semi_hard", "random", "one_per_product"],
        default="default",
        help="default: for SyncMask curriculum, or semi_hard when both towers start pretrained; one_per_product "
        "for E2; random for FashionFAE. curriculum = random batches for --random_epochs epochs, then semi_hard",
    )
    p.add_argument(
        "--random_epochs",
        type=float,
        default=1.0,
        help="curriculum sampler: epochs of random batches before semi-hard ones (a model at step 0 cannot tell the "
        "items of one sub-category apart, and SyncMask collapses on such batches)",
    )
    p.add_argument(
        "--e2_stage",
        choices=["auto", "1", "2", "both"],
        default="auto",
        help="E2: stage 1 trains only the new parameters, stage 2 everything; 'both' spends the first fifth of the steps in stage 1",
    )
    p.add_argument("--val_products", type=float, default=0.1, help="share of products held out for validation")
    p.add_argument(
        "--test_products", type=float, default=0.15, help="share of products held out for the final evaluation"
    )
    p.add_argument(
        "--eval_every",
        type=int,
        default=0,
        help="evaluate on the validation products every N steps (0: only at the end)",
    )
    p.add_argument("--checkpoint_every", type=int, default=50, help="save_state every N optimizer steps (0: never)")
    p.add_argument("--keep_checkpoints", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    p.add_argument(
        "--bad_items",
        choices=["skip", "error"],
        default="skip",
        help="a corrupt or missing image: skip and count it, or stop with a clear error",
    )
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--report_to", default="auto", help="'tensorboard', 'none' or 'auto' (TensorBoard when installed)")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)
    p.add_argument("--hub_token", default=None)
    args = p.parse_args(argv)
    if args.text_pretrained and not get_spec(args.model).text_checkpoint:
        p.error(
            f"--text_pretrained is for the BERT text towers of {', '.join(n for n in SPECS if SPECS[n].text_checkpoint)}; "
            f"{args.model} starts from a whole CLIP checkpoint: --vision_pretrained openai/clip-vit-base-patch32 "
            "(or a local CLIP folder)"
        )
    return args


def build_data(args, processor, mode, accelerator, config=None):
    sources = args.dataset or ["synthetic:2400"]
    skip = args.bad_items == "skip"
    with accelerator.main_process_first():
        splits = load_catalog_splits(sources, args.test_products, args.val_products, args.seed, skip_bad=skip)
    subcategories = sorted({v for part in splits.values() for v in part["subcategory"] if v})
    collator = syncmask_hf.FashionCollator(
        processor,
        mode=mode,
        skip_bad=skip,
        seed=args.seed,
        subcategory_label_map=subcategories,
        e2_text=e2_text(config),
    )
    return splits, collator


def both_towers_pretrained(args) -> bool:
    """Both towers start from checkpoints: a text and a vision one, or one whole CLIP (E2)."""
    spec = get_spec(args.model)
    return bool(args.vision_pretrained) and (spec.vision_checkpoint == "clip" or bool(args.text_pretrained))


def sampler_kind(args, epoch: int) -> str:
    """The batch sampler of `epoch`. SyncMask: a curriculum, random batches first, then semi-hard ones (batches of
    one sub-category give a random-init model nothing it can contrast: ITC stays at chance and both towers collapse
    within ~40 steps; random batches learn). With both towers pretrained, semi-hard from the start."""
    kind = args.sampler
    if kind == "default":
        # Both towers must start trained: a random-init image tower cannot tell one sub-category's items apart either.
        spec = get_spec(args.model)
        pretrained = both_towers_pretrained(args) and spec.pretrained_sampler
        kind = spec.pretrained_sampler if pretrained else spec.default_sampler
    if kind == "curriculum":
        # Whole epochs only: the sampler is built once per epoch (a fractional count rounds up).
        kind = "random" if epoch < math.ceil(args.random_epochs) else "semi_hard"
    return kind


def epoch_steps(args, train, accelerator) -> int:
    """Optimizer steps in `--num_epochs` epochs, counted epoch by epoch: the curriculum's random and semi-hard
    epochs differ in length (the semi-hard sampler drops the tail it cannot fill)."""
    return sum(
        math.ceil(len(build_batch_sampler(args, train, accelerator, epoch)) / args.gradient_accumulation_steps)
        for epoch in range(args.num_epochs)
    )


def build_batch_sampler(args, train, accelerator, epoch):
    """Rank-aware batch samplers that cut the same global batches in every process (so N processes with batch B
    see exactly the batches one process with batch N*B would)."""
    kind = sampler_kind(args, epoch)
    common = dict(
        num_replicas=accelerator.num_processes, rank=accelerator.process_index, seed=args.seed, drop_last=True
    )
    products = train["product_id"]
    if kind == "semi_hard":
        groups = [sub or cat for sub, cat in zip(train["subcategory"], train["category"])]
        sampler = syncmask_hf.GroupedSemiHardBatchSampler(
            products, args.batch_size, group_keys=groups, text_ids=[text_id(t) for t in train["text"]], **common
        )
    elif kind == "one_per_product":
        # Rank r takes every n-th product of one seeded permutation, so step k's batches over all ranks are
        # again one contiguous global batch of that permutation.
        per_product = syncmask_hf.OneImagePerProductSampler(
            products, seed=args.seed, num_replicas=accelerator.num_processes, rank=accelerator.process_index
        )
        per_product.set_epoch(epoch)
        return torch.utils.data.BatchSampler(per_product, args.batch_size, drop_last=True)
    else:
        sampler = syncmask_hf.RandomBatchSampler(len(products), args.batch_size, **common)
    sampler.set_epoch(epoch)
    return sampler


def main(argv=None):
    args = parse_args(argv)
    spec = get_spec(args.model)
    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs"))
    report_to = args.report_to
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401

            report_to = "tensorboard"
        except ImportError:
            report_to = None
    accelerator = Accelerator(
        cpu=multi_cpu_launch(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if report_to in (None, "none") else report_to,
        project_config=project,
        # Our batch samplers are rank-aware already: Accelerate must not shard their batches again.
        dataloader_config=DataLoaderConfiguration(split_batches=False, dispatch_batches=False),
        # FashionFAE runs one task per step, so each step leaves the other tasks' heads without gradients; E2's
        # stage 1 leaves the CLIP towers without them.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=spec.task_per_step
                or (spec.two_stage and args.e2_stage in ("auto", "1", "both"))
            )
        ],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    config_cls, model_cls, mode = model_classes(args.model)
    config_path = resolve_config_path(args.model, args.config or spec.default_preset)
    config = (
        config_cls.from_json_file(str(config_path))
        if config_path.suffix == ".json"
        else config_cls.from_pretrained(config_path.parent)
    )
    if args.config_override:
        overrides = json.loads(args.config_override)
        unknown = sorted(k for k in overrides if not hasattr(config, k))
        if unknown:
            raise ValueError(f"--config_override: {type(config).__name__} has no field(s) {unknown}")
        # Rebuilt from a dict so the config's own checks run on the new values.
        config = config_cls.from_dict({**config.to_dict(), **overrides})
    text_source = resolve_pretrained(args.text_pretrained) if args.text_pretrained else None
    if spec.vision_checkpoint == "clip" and args.vision_pretrained:
        # E2 starts from a whole CLIP checkpoint (both towers); the new parameters are added on top.
        model = model_cls.from_clip(args.vision_pretrained, entities=list(config.entities))
        config = model.config
    elif text_source or args.vision_pretrained:
        if text_source:
            config = adopt_text_checkpoint(config, text_source)  # the config's text tower takes the checkpoint's shape
        model = model_cls.from_encoders(config, text=text_source, vision=args.vision_pretrained)
    else:
        model = model_cls(config)
    processor = build_processor(args.model, config, text_source)

    splits, collator = build_data(args, processor, mode, accelerator, config)
    train = splits["train"]
    logger.info(
        f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''} ({accelerator.distributed_type}); train {len(train)} items, validation {len(splits['validation'])}, test {len(splits['test'])}",
        main_process_only=True,
    )

    # ALBEF's 1e-4 is tuned for initialised encoders; from random init it leaves retrieval near chance in a few
    # hundred steps, where 5e-4 learns (synthetic catalogue, 200-400 steps: examples/README.md). One random-init
    # tower is enough to need the higher rate (SyncMask, MiniLM text + random ViT, 71 steps on the real catalogue:
    # held-out T2I R@10 3.5x chance at 5e-4, 2.8x at 1e-4).
    lr = args.learning_rate or (spec.pretrained_lr if both_towers_pretrained(args) else spec.scratch_lr)
    if args.e2_stage == "auto":
        # Two stages only make sense from a pretrained CLIP; a from-scratch tower trains everything from the start.
        args.e2_stage = "both" if args.vision_pretrained else "2"
    e2_two_stage = spec.two_stage and args.e2_stage in ("1", "both")
    # A lower rate for copied weights made no difference beyond the seed's at 5 minutes (examples/README.md), so
    # one rate for all stays the default.
    groups = parameter_groups(model, args.weight_decay, lr=lr, checkpoint_lr_scale=args.checkpoint_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=lr, eps=args.adam_epsilon)

    sampler0 = build_batch_sampler(args, train, accelerator, 0)
    steps_per_epoch = math.ceil(len(sampler0) / args.gradient_accumulation_steps)
    if getattr(config, "alpha_warmup_epochs", None) is not None:
        # SyncMask's distillation weight ramps over the first epoch(s) (ALBEF); only here are epochs known in steps.
        model.config.alpha_warmup_steps = round(config.alpha_warmup_epochs * steps_per_epoch)
    budget = None
    if args.max_train_minutes and not (args.max_steps or args.num_epochs):
        # A time budget alone: the schedule runs over the budget's time, not over a guessed number of steps.
        budget = TimeBudget(60 * args.max_train_minutes)
        total_steps = math.inf
        scheduler = cosine_with_budget(optimizer, args.warmup_steps, budget, accelerator.num_processes)
    else:
        total_steps = args.max_steps or (epoch_steps(args, train, accelerator) if args.num_epochs else 200)
        scheduler = cosine_with_warmup(
            optimizer, args.warmup_steps, total_steps, num_processes=accelerator.num_processes
        )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if e2_two_stage:
        # Frozen only after `prepare`: DDP registers (and all-reduces) just the parameters that require gradients
        # when it wraps the model, so towers frozen before it would never be synchronised in stage 2.
        accelerator.unwrap_model(model).freeze_pretrained(True)
    checksums = {}
    accelerator.register_for_checkpointing(TrainingBuffers(accelerator.unwrap_model(model)))
    if hasattr(accelerator.unwrap_model(model), "task_sampler"):
        # FashionFAE's task sequence is part of an exact resume.
        accelerator.register_for_checkpointing(accelerator.unwrap_model(model).task_sampler)

    progress = training.resume_progress(accelerator, args, logger)
    if budget is not None:
        budget.spent = progress.train_seconds
    if report_to not in (None, "none"):
        accelerator.init_trackers(
            "pretrain", {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        )
    unwrapped = accelerator.unwrap_model(model)

    def make_loader(epoch: int):
        # The loader gets its own generator: creating its iterator must not draw from the global RNG, or a resumed
        # run (whose iterator is created after load_state) would see different masks / negatives from then on.
        return torch.utils.data.DataLoader(
            train,
            batch_sampler=build_batch_sampler(args, train, accelerator, epoch),
            collate_fn=collator,
            num_workers=args.num_workers,
            generator=torch.Generator().manual_seed(args.seed + epoch),
        )

    def compute_loss(model, batch):
        outputs = model(**batch, return_loss=True)
        # Every scalar the model returns: the loss terms and diagnostics such as SyncMask's itm_negative_share.
        logs = {
            k: float(v.detach())
            for k, v in outputs.items()
            if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1
        }
        return outputs.loss, logs

    # What runs after each optimizer step, in order: the EMA teacher, E2's stage switch, the periodic evaluation.
    after_step = []
    if hasattr(unwrapped, "update_teacher"):
        after_step.append(lambda progress: unwrapped.update_teacher())  # one EMA step per optimizer step
    if e2_two_stage and args.e2_stage == "both":

        def stage2_due(progress) -> bool:  # after the first fifth of the steps (or of the time budget)
            if budget is not None:
                return budget.fraction >= 0.2
            return progress.global_step >= max(1, total_steps // 5)

        stage = {"two": stage2_due(progress)}
        if stage["two"]:
            enter_e2_stage2(
                unwrapped, scheduler, scale_lr=False
            )  # resumed inside stage 2: the LR is in the checkpoint

        def switch_stage(progress) -> None:
            if not stage["two"] and stage2_due(progress):
                checksums[f"stage1_end_step{progress.global_step}"] = check_replicas(
                    accelerator, model, f"E2 stage 1 end (step {progress.global_step})"
                )
                enter_e2_stage2(unwrapped, scheduler)
                stage["two"] = True

        after_step.append(switch_stage)
    if args.eval_every and len(splits["validation"]):

        def validate(progress) -> None:
            if progress.global_step % args.eval_every:
                return
            val = evaluate_split(accelerator, unwrapped, splits["validation"], collator, args)
            keys = [k for k in ("i2t_R@1", "t2i_R@1", "sumR") if k in val["full"]]
            metrics = {f"val/{k}": val["full"][k] for k in keys}
            metrics.update({f"val/sample100_{k}": val["sample100"][k] for k in keys})
            # Collapse is visible in any run: mean pairwise cosines near 1 mean every item embeds alike.
            metrics.update({f"val/{k}": v for k, v in val.get("spread", {}).items() if v is not None})
            warn_if_collapsed(val, f"step {progress.global_step}")
            accelerator.log(metrics, step=progress.global_step)
            logger.info(
                f"step {progress.global_step}: validation "
                + ", ".join(f"{k[4:]} {v:.2f}" for k, v in metrics.items()),
                main_process_only=True,
            )
            model.train()

        after_step.append(validate)

    def epoch_end(progress) -> None:
        checksums[f"epoch{progress.epoch}_end"] = check_replicas(accelerator, model, f"epoch {progress.epoch} end")

    progress = training.run_training_loop(
        accelerator,
        args,
        model,
        optimizer,
        scheduler,
        make_loader,
        compute_loss,
        total_steps,
        collator=collator,
        desc=f"pretrain {args.model}",
        after_step=after_step,
        after_epoch=epoch_end,
        progress=progress,
        budget=budget,
        logger=logger,
    )
    checksums["run_end"] = check_replicas(accelerator, model, f"run end (step {progress.global_step})")
    train_minutes = progress.train_seconds / 60

    final = Path(args.output_dir, "final")
    if accelerator.is_main_process:
        # Saved before the evaluation, so nothing trained is lost if the evaluation fails.
        unwrapped.save_pretrained(final)
        processor.save_pretrained(final)
    results = evaluate_split(accelerator, unwrapped, splits["test"], collator, args)
    if accelerator.is_main_process:
        results["training"] = {
            "model": args.model,
            "config": str(config_path),
            "steps": progress.global_step,
            "samples_seen": progress.samples_seen,
            "train_minutes": round(train_minutes, 2),
            "skipped_bad_items": progress.skipped_items,
            "num_processes": accelerator.num_processes,
            "weight_checksums": checksums,
            "datasets": args.dataset or ["synthetic:2400"],
        }
        save_results(results, final / "eval_results.json")
        print(summary_table(results))
        warn_if_collapsed(results, "held-out test products")
        if progress.skipped_items:
            print(f"skipped {progress.skipped_items} bad items (see the log for which)")
        print(f"model and processor saved to {final}")
        if args.push_to_hub:
            from syncmask_hf.hub import publish

            repo_id = args.hub_model_id or f"{args.model}-fashion"
            summary = {
                name: {k: results[name][k] for k in training.RECALL_COLUMNS if k in results[name]}
                for name in ("full", "sample100")
            }
            training_args = {k: v for k, v in vars(args).items() if k != "hub_token"}
            urls = publish(
                final,
                repo_id,
                metrics=summary,
                training_args=training_args,
                datasets=args.dataset or ["synthetic"],
                token=args.hub_token,
            )
            print(f"pushed to {urls['model']}")
    accelerator.end_training()
    return results


def enter_e2_stage2(model, scheduler, scale_lr=True):
    """E2 stage 2: everything trains, at a tenth of the stage-1 rate (paper: 5e-4 then 5e-5)."""
    model.freeze_pretrained(False)
    if scale_lr:
        inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate wraps the scheduler
        inner.base_lrs = [lr * 0.1 for lr in inner.base_lrs]


def warn_if_collapsed(results: dict, where: str, bound: float = 0.95) -> None:
    """A loud line when the held-out embeddings have collapsed (mean pairwise cosine across products >= `bound`)."""
    spread = results.get("spread") or {}
    high = {k: v for k, v in spread.items() if v is not None and v >= bound}
    if high:
        logger.warning(
            f"{where}: held-out embeddings look collapsed ({', '.join(f'{k} {v:.3f}' for k, v in high.items())}: "
            "every item embeds nearly alike, so recall sits at chance); see examples/README.md on SyncMask's pooling "
            "and sampler",
            main_process_only=True,
        )


def summary_table(results: dict) -> str:
    return training.retrieval_summary_table(results)


def evaluate_split(accelerator, model, dataset, collator, args):
    return training.evaluate_retrieval(
        model,
        dataset,
        collator,
        accelerator.device,
        seed=args.seed,
        num_workers=args.num_workers,
        show_progress=accelerator.is_local_main_process,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
