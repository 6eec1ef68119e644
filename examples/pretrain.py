#!/usr/bin/env python
"""Pretrain SyncMask, E2 or FashionFAE with Accelerate.

    accelerate launch examples/pretrain.py                       # offline: tiny E2 on the synthetic catalogue, ~2 min
    accelerate launch examples/pretrain.py --model e2 --dataset hm:../shared/data/hm --dataset myntra:../shared/data/myntra
    accelerate launch --mixed_precision bf16 examples/pretrain.py --model syncmask --config syncmask-base ...
    accelerate launch examples/pretrain.py ... --resume_from_checkpoint latest   # continue a killed run exactly

With no arguments it trains the tiny E2 config on the embedded synthetic catalogue for 200 steps (a few minutes on CPU)
and prints retrieval recall on held-out products. Checkpoints (`Accelerator.save_state`, with the feature queues and
the position in the data) go to `<output_dir>/checkpoints/step_N`; the final model and its processor to
`<output_dir>/final` (`AutoModel.from_pretrained(<output_dir>/final)` with the package installed).

This script only parses arguments; the job is `syncmask_hf.pretraining.pretrain` over the package's one training loop.
"""

from __future__ import annotations

import argparse
import sys

from syncmask_hf.pretraining import pretrain
from syncmask_hf.specs import SPECS, get_spec
from syncmask_hf.training import add_torch_compile_argument


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
    add_torch_compile_argument(p)
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
        default=None,
        help="learning rate of the parameters copied from --text_pretrained / --vision_pretrained, as a multiple "
        "of --learning_rate (the new parameters take --learning_rate); 1 = one rate for all, as ALBEF. Default: "
        "0.2 for FashionFAE (MiniLM's weights at 1e-4 beside a random ViT at 5e-4), 1 otherwise",
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


def main(argv=None):
    return pretrain(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
