"""Train the DeCap-style zero-shot captioner on the product texts of a catalogue, over any of the package's encoders.

Text only: each training text is embedded by the frozen encoder's text tower and the decoder learns to rebuild the
text from that embedding. At inference an image embedding is projected onto the memory of training-text embeddings
and decoded (greedy or beam search). Evaluation captions one image per held-out product and scores the captions
against the product texts (BLEU-4, CIDEr-D, ROUGE-L; offline implementations).

    # after `python examples/pretrain.py` (writes outputs/pretrain/final):
    python examples/train_captioner.py
    accelerate launch examples/train_captioner.py --model_path outputs/hm_e2/final --dataset hm:../shared/data/hm
    # evaluate a trained captioner again (same encoder and held-out split), e.g. with beam search:
    python examples/train_captioner.py --captioner_path outputs/captioner --output_dir outputs/captioner_beam5 --num_beams 5

The held-out products are the ones pretrain.py held out given the same --dataset / --test_products /
--val_products / --seed, so the captions are of products neither the encoder nor the captioner saw.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

import syncmask_hf  # noqa: F401  (registers the package's models with the Auto classes)
from syncmask_hf import FashionDeCapConfig, FashionDeCapForCaptioning
from syncmask_hf.captioner import caption_images, encode_images, encode_texts, train_decap
from syncmask_hf.evaluation import caption_metrics, format_results_markdown
from syncmask_hf.models.image_loading import FashionInputError, load_image
from syncmask_hf.models.processing_fashion import normalize_text
from syncmask_hf.training import (
    add_trust_remote_code_argument,
    load_catalog_splits,
    load_model_folder,
    multi_cpu_launch,
)

logger = get_logger("train_captioner")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model_path", "--encoder", default="outputs/pretrain/final", help="encoder folder or Hub id (kept frozen)"
    )
    p.add_argument("--dataset", action="append", help="data-layer source(s); default synthetic:2400")
    add_trust_remote_code_argument(p)
    p.add_argument("--output_dir", default="outputs/captioner")
    p.add_argument(
        "--captioner_path",
        default=None,
        help="evaluate this trained captioner folder (over --model_path) instead of training one; results go to "
        "--output_dir/caption_results.json with the folder's training record",
    )
    p.add_argument("--epochs", type=int, default=None, help="passes over the training texts (default: 10)")
    p.add_argument("--max_steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--max_length", type=int, default=48, help="tokens per training text (longer texts are cut)")
    p.add_argument("--decoder_width", type=int, default=256)
    p.add_argument("--decoder_layers", type=int, default=3)
    p.add_argument("--decoder_heads", type=int, default=4)
    p.add_argument("--memory_temperature", type=float, default=0.01, help="DeCap's projection temperature (1/100)")
    p.add_argument("--noise_std", type=float, default=0.0, help="training noise on the text embedding (CapDec)")
    p.add_argument("--num_beams", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument(
        "--no_repeat_ngram_size", type=int, default=0, help="generate(): forbid repeated n-grams (0: off, as DeCap)"
    )
    p.add_argument(
        "--meteor",
        choices=["auto", "on", "off"],
        default="auto",
        help="METEOR by the COCO caption toolkit's Java jar: auto = when pycocoevalcap and java are installed",
    )
    p.add_argument("--max_eval_images", type=int, default=500, help="held-out products captioned (one image each)")
    p.add_argument("--val_products", type=float, default=0.1)
    p.add_argument("--test_products", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42, help="as pretrain.py's --seed: same value, same held-out products")
    p.add_argument("--num_examples", type=int, default=8, help="example captions printed and saved")
    args = p.parse_args(argv)
    if args.epochs is None and args.max_steps is None:
        args.epochs = 10
    for name in ("batch_size", "max_length", "decoder_width", "decoder_layers", "decoder_heads", "num_beams"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.decoder_width % args.decoder_heads:
        p.error("--decoder_width must be a multiple of --decoder_heads")
    if args.memory_temperature <= 0:
        p.error("--memory_temperature must be > 0")
    return args


def unique_texts(split) -> list[str]:
    """The distinct non-empty product texts of a split, in first-seen order (colour variants share one text)."""
    seen, out = set(), []
    for text in split["text"]:
        key = normalize_text(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def held_out_images(split, limit: int):
    """One decodable image per held-out product with its text as the reference; undecodable images are counted."""
    rows, skipped, seen = [], 0, set()
    for row in split:
        if row["product_id"] in seen or not row["text"]:
            continue
        try:
            image = load_image(row["image"], item_id=row["item_id"])
        except FashionInputError as err:
            skipped += 1
            logger.warning(f"skipping held-out image: {err}")
            continue
        seen.add(row["product_id"])
        rows.append((image, row["text"], row["product_id"]))
        if len(rows) >= limit:
            break
    return rows, skipped


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(cpu=multi_cpu_launch())
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)
    out_dir = Path(args.output_dir)

    encoder, processor = load_model_folder(args.model_path, trust_remote_code=args.trust_remote_code)
    encoder.requires_grad_(False).eval().to(accelerator.device)
    tokenizer = processor.tokenizer
    with accelerator.main_process_first():
        splits = load_catalog_splits(
            args.dataset or ["synthetic:2400"], args.test_products, args.val_products, args.seed
        )

    if args.captioner_path:
        evaluate_only(args, accelerator, encoder, processor, splits)
        return
    texts = unique_texts(splits["train"])
    if not texts:
        raise ValueError("the training split has no product texts: the captioner learns from texts only")
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
    text_embeds = encode_texts(
        encoder, tokens["input_ids"], tokens["attention_mask"], progress=accelerator.is_local_main_process
    )
    logger.info(f"{len(texts)} training texts embedded ({text_embeds.shape[1]}-d)", main_process_only=True)

    decoder = {
        "n_embd": args.decoder_width,
        "n_layer": args.decoder_layers,
        "n_head": args.decoder_heads,
        "n_positions": max(64, args.max_length + args.max_new_tokens + 2),
    }
    config = FashionDeCapConfig(
        text_config=decoder,
        prefix_dim=text_embeds.shape[1],
        memory_temperature=args.memory_temperature,
        noise_std=args.noise_std,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    captioner = FashionDeCapForCaptioning(config)
    started = time.monotonic()
    losses = train_decap(
        captioner,
        text_embeds,
        tokens["input_ids"],
        tokens["attention_mask"],
        epochs=args.epochs,
        steps=args.max_steps,
        lr=args.learning_rate,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        accelerator=accelerator,
        seed=args.seed,
    )
    train_seconds = time.monotonic() - started
    captioner = accelerator.unwrap_model(captioner)

    if accelerator.is_main_process:
        captioner.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        training = {
            "train_texts": len(texts),
            "train_steps": len(losses),
            "train_seconds": round(train_seconds, 1),
            "first_loss": losses[0],
            "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        }
        evaluate_and_report(args, encoder, processor, captioner, splits["test"], training, out_dir)
        print(f"captioner saved to {out_dir}")
    accelerator.wait_for_everyone()


#: the training record a captioner folder's caption_results.json carries over to a re-evaluation
TRAINING_KEYS = ("train_texts", "train_steps", "train_seconds", "first_loss", "last_loss")


def evaluate_only(args, accelerator, encoder, processor, splits):
    """Caption the held-out products with the trained captioner in --captioner_path (its saved text memory)."""
    folder = Path(args.captioner_path)
    captioner = FashionDeCapForCaptioning.from_pretrained(folder).to(accelerator.device).eval()
    # An encoder of another width is refused by the captioner itself (ValueError naming config.prefix_dim).
    record = folder / "caption_results.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    training = {key: previous[key] for key in TRAINING_KEYS if key in previous}
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        evaluate_and_report(args, encoder, processor, captioner, splits["test"], training, Path(args.output_dir))
    accelerator.wait_for_everyone()


def evaluate_and_report(args, encoder, processor, captioner, test_split, training: dict, out_dir: Path) -> dict:
    """Caption one image per held-out product, score against the product texts, write caption_results.json."""
    rows, skipped = held_out_images(test_split, args.max_eval_images)
    if not rows:
        raise ValueError("no decodable held-out image to caption: check the catalogue's images")
    pixels = processor(images=[image for image, _, _ in rows], return_tensors="pt")["pixel_values"]
    image_embeds = encode_images(encoder, pixels, progress=True)
    captions = caption_images(
        captioner,
        image_embeds,
        processor.tokenizer,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        progress=True,
        **({"no_repeat_ngram_size": args.no_repeat_ngram_size} if args.no_repeat_ngram_size else {}),
    )
    references = [[text] for _, text, _ in rows]
    # METEOR (the COCO toolkit's Java jar) when pycocoevalcap and java are there, unless --meteor off.
    metrics = caption_metrics(captions, references, meteor=args.meteor != "off")
    if args.meteor == "on" and "METEOR" not in metrics:
        raise SystemExit("error: --meteor on needs pycocoevalcap (pip install pycocoevalcap) and java on the PATH")
    metrics["skipped_images"] = skipped
    examples = [
        {"product_id": pid, "reference": text, "caption": caption}
        for (_, text, pid), caption in zip(rows[: args.num_examples], captions)
    ]
    summary = {
        "encoder": str(args.model_path),
        "captioner": str(args.captioner_path or out_dir),
        "dataset": args.dataset or ["synthetic:2400"],
        **training,
        "decoding": {
            "num_beams": args.num_beams,
            "max_new_tokens": args.max_new_tokens,
            "no_repeat_ngram_size": args.no_repeat_ngram_size,
        },
        "metrics": metrics,
        "examples": examples,
    }
    (out_dir / "caption_results.json").write_text(json.dumps(summary, indent=2))
    shown = ("BLEU-4", "CIDEr-D", "ROUGE-L", "METEOR")
    table = {"held-out": {k: round(v, 2) for k, v in metrics.items() if k in shown}}
    table["held-out"]["images"] = metrics["num_images"]
    print(format_results_markdown(table, title=f"captions of held-out products ({args.model_path})"))
    for ex in examples:
        print(f"- {ex['caption']!r}  <- reference: {ex['reference'][:100]!r}")
    return summary


if __name__ == "__main__":
    main()
