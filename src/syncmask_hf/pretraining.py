"""Pretraining SyncMask, E2 or FashionFAE with Accelerate: the job `examples/pretrain.py` parses arguments for.

`pretrain(args)` builds the model from its spec and preset, the data and the pretraining batch sampler of each epoch,
then runs the package's one training loop (`training.run_training_loop`) with the model's hooks (the EMA teacher,
E2's stage switch, periodic evaluation), saves `<output_dir>/final` with its processor, evaluates retrieval on the
held-out products and, if asked, publishes to the Hub. Checkpoints (`Accelerator.save_state`, with the feature
queues and the position in the data) go to `<output_dir>/checkpoints/step_N`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from . import training
from .data import GroupedSemiHardBatchSampler, OneImagePerProductSampler, RandomBatchSampler, text_id
from .data.collator import FashionCollator
from .evaluation import save_results
from .models.pretrained import resolve_pretrained
from .specs import get_spec
from .training import (
    TimeBudget,
    adopt_text_checkpoint,
    build_processor,
    check_replicas,
    cosine_with_budget,
    cosine_with_warmup,
    e2_text,
    load_catalog_splits,
    make_accelerator,
    model_classes,
    parameter_groups,
    resolve_config_path,
)

logger = get_logger(__name__)


def build_data(args, processor, mode, accelerator, config=None):
    sources = args.dataset or ["synthetic:2400"]
    skip = args.bad_items == "skip"
    with accelerator.main_process_first():
        splits = load_catalog_splits(sources, args.test_products, args.val_products, args.seed, skip_bad=skip)
    subcategories = sorted({v for part in splits.values() for v in part["subcategory"] if v})
    collator = FashionCollator(
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


def checkpoint_lr_scale(args) -> float:
    """The rate of the weights copied from checkpoints, as a multiple of the run's: ``--checkpoint_lr_scale``, else
    the model's `ModelSpec.checkpoint_lr_scale` (FashionFAE's MiniLM at a fifth of the random ViT's rate learned more
    in 5 minutes over four seeds; SyncMask's did not, one seed: examples/README.md)."""
    given = getattr(args, "checkpoint_lr_scale", None)
    return get_spec(args.model).checkpoint_lr_scale if given is None else given


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
        sampler = GroupedSemiHardBatchSampler(
            products, args.batch_size, group_keys=groups, text_ids=[text_id(t) for t in train["text"]], **common
        )
    elif kind == "one_per_product":
        # Rank r takes every n-th product of one seeded permutation, so step k's batches over all ranks are
        # again one contiguous global batch of that permutation.
        per_product = OneImagePerProductSampler(
            products, seed=args.seed, num_replicas=accelerator.num_processes, rank=accelerator.process_index
        )
        per_product.set_epoch(epoch)
        return torch.utils.data.BatchSampler(per_product, args.batch_size, drop_last=True)
    else:
        sampler = RandomBatchSampler(len(products), args.batch_size, **common)
    sampler.set_epoch(epoch)
    return sampler


# The E2 fields a CLIP checkpoint does not carry: from --config / --config_override when E2 starts from one.
E2_FIELDS = (
    "entities",
    "tokens_per_entity",
    "gumbel_tau",
    "global_loss_weight",
    "regional_loss_weight",
    "use_selection_tokens",
    "use_fusion_blocks",
    "use_regional_loss",
    "projection_init",
    "full_text",
)


def pretrain(args):
    """The pretraining job for parsed `examples/pretrain.py` arguments; returns the held-out results."""
    spec = get_spec(args.model)
    # FashionFAE runs one task per step, so each step leaves the other tasks' heads without gradients; E2's stage 1
    # leaves the CLIP towers without them.
    find_unused = spec.task_per_step or (spec.two_stage and args.e2_stage in ("auto", "1", "both"))
    accelerator, _ = make_accelerator(args, "pretrain", find_unused_parameters=find_unused)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    config_cls, model_cls, mode = model_classes(args.model)
    config_path = resolve_config_path(args.model, args.config or spec.default_preset)
    config = (
        config_cls.from_json_file(str(config_path))
        if config_path.suffix == ".json"
        else config_cls.from_pretrained(config_path.parent)
    )
    overrides = {}
    if args.config_override:
        overrides = json.loads(args.config_override)
        unknown = sorted(k for k in overrides if not hasattr(config, k))
        if unknown:
            raise ValueError(f"--config_override: {type(config).__name__} has no field(s) {unknown}")
        # Rebuilt from a dict so the config's own checks run on the new values.
        config = config_cls.from_dict({**config.to_dict(), **overrides})
    text_source = resolve_pretrained(args.text_pretrained) if args.text_pretrained else None
    if spec.vision_checkpoint == "clip" and args.vision_pretrained:
        # E2 starts from a whole CLIP checkpoint (both towers; or an E2 folder's CLIP part); the new parameters are
        # added on top, with the E2 fields of --config and --config_override (the towers are the checkpoint's).
        e2_fields = {k: getattr(config, k) for k in E2_FIELDS}
        if "fusion_layers" in overrides:  # else the default for the checkpoint's depth
            e2_fields["fusion_layers"] = overrides["fusion_layers"]
        model = model_cls.from_clip(args.vision_pretrained, **e2_fields)
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
    args.checkpoint_lr_scale = checkpoint_lr_scale(args)  # resolved, so the run's records show the rate used
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
    # The feature queues and FashionFAE's task sequence are part of an exact resume (safetensors / JSON, no pickle).
    state = training.training_state(accelerator.unwrap_model(model))
    progress = training.resume_progress(accelerator, args, logger, state)
    if budget is not None:
        budget.spent = progress.train_seconds
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
        if stage["two"]:  # resumed inside stage 2: the LR is in the checkpoint
            enter_e2_stage2(unwrapped, scheduler, scale_lr=False)

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
            if accelerator.is_main_process:
                append_eval_history(args.output_dir, progress.global_step, val)
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
        state=state,
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
        # The run's arguments beside its results, without the Hub token: the card (pretrain's --push_to_hub, or
        # push_to_hub.py on this folder later) lists them. Kept as their JSON values, so both cards read the same.
        training_args_json = json.dumps(
            {k: v for k, v in vars(args).items() if k != "hub_token"}, indent=2, default=str
        )
        (final / "training_args.json").write_text(training_args_json)
        print(summary_table(results))
        warn_if_collapsed(results, "held-out test products")
        if progress.skipped_items:
            print(f"skipped {progress.skipped_items} bad items (see the log for which)")
        print(f"model and processor saved to {final}")
        if args.push_to_hub:
            from .hub import publish

            repo_id = args.hub_model_id or f"{args.model}-fashion"
            # The same card as `push_to_hub.py FOLDER` writes from the folder's eval_results.json and
            # training_args.json.
            training_args = json.loads(training_args_json)
            urls = publish(final, repo_id, metrics=results, training_args=training_args, token=args.hub_token)
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


EVAL_HISTORY = "eval_history.jsonl"


def append_eval_history(output_dir, step: int, results: dict) -> None:
    """One JSON line per periodic validation in `<output_dir>/eval_history.jsonl` (step, recall per protocol,
    spread), readable without TensorBoard: the learning curves of examples/ablations/ are drawn from it. A resumed
    run appends again from its checkpoint's step; readers keep the last line of each step."""
    row = {"step": int(step)}
    for name in ("full", "sample100", "spread", "chance"):
        if name in results:
            row[name] = {k: v for k, v in results[name].items() if isinstance(v, (int, float))}
    path = Path(output_dir, EVAL_HISTORY)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_eval_history(output_dir) -> list[dict]:
    """The rows of `append_eval_history`, one per step (the last written wins, as after a resume), by step."""
    path = Path(output_dir, EVAL_HISTORY)
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


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
