#!/usr/bin/env python
"""Evaluate a saved model folder: cross-modal retrieval, text-guided image retrieval and classification.

    python examples/evaluate.py --model_path outputs/pretrain/final --dataset hm:../shared/data/hm
    python examples/evaluate.py --model_path outputs/pretrain/final --dataset hm:../shared/data/hm --rerank_k 16
    python examples/evaluate.py --model_path outputs/finetune_tgir/final --tasks tgir \
        --fashioniq ../shared/data/fashioniq --fashioniq_images /data/fashioniq/images

Any of the package's models loads (`AutoModel` + `AutoProcessor`; another type only with `--trust_remote_code`).
The evaluated products are the `--split` (default: test) of `product_disjoint_split` with the same `--seed` /
`--test_products` / `--val_products` as pretrain.py, so they are the products it held out.

Tasks (`--tasks`, comma-separated; default all that the data allows):
* `retrieval`: full-gallery and sample-100 (negatives from the query's sub-category) I2T / T2I R@1/5/10 and SumR,
  several images per product counted correctly; exact FAISS search from `--faiss_threshold` gallery items on.
  `--rerank_k K` (SyncMask): the top K by ITC are re-ranked by the ITM head (`SyncMaskForImageTextRetrieval`), reported
  as `full_itm` / `sample100_itm` beside the embedding-only rows.
* `tgir`: R@10 / R@50 of composed queries on the colour variants of the split (`colour_variant_triplets`), and on
  FashionIQ triplets with `--fashioniq` (its `--fashioniq_split` gallery). A SyncMask folder saved by
  finetune_tgir.py uses its fusion TGIR head; any other folder `ComposedQueryModel` (the combiner finetune_tgir.py
  saved, else the zero-shot normalize(image + text) baseline).
* `classification`: category / sub-category accuracy of a linear probe on frozen image features (probe fit on the
  training products, scored on the split).
Results: `<output_dir>/eval_results.json` and `.md`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

import syncmask_hf  # noqa: F401  (registers the package's Auto classes)
from syncmask_hf import training
from syncmask_hf.data import FASHIONIQ_CATEGORIES
from syncmask_hf.data.collator import FashionCollator
from syncmask_hf.evaluation import format_results_markdown, save_results
from syncmask_hf.evaluation.evaluator import RetrievalEmbeddings
from syncmask_hf.evaluation.retrieval import DEFAULT_FAISS_THRESHOLD
from syncmask_hf.specs import models_with_head, task_head

TASKS = ("retrieval", "tgir", "classification")
logger = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a folder written by save_pretrained (or a Hub id)")
    training.add_trust_remote_code_argument(p)
    p.add_argument("--dataset", action="append", default=None, help="data-layer source(s), e.g. hm:PATH")
    p.add_argument("--split", choices=["test", "validation", "train"], default="test")
    p.add_argument("--val_products", type=float, default=0.1, help="as pretrain.py")
    p.add_argument("--test_products", type=float, default=0.15, help="as pretrain.py")
    p.add_argument("--seed", type=int, default=42, help="as pretrain.py's --seed: same value, same held-out products")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {list(TASKS)}")
    p.add_argument("--rerank_k", type=int, default=0, help="SyncMask: re-rank the top K by ITM (0: off)")
    p.add_argument("--num_queries", type=int, default=1000, help="sample-100 queries per draw")
    p.add_argument("--faiss_threshold", type=int, default=DEFAULT_FAISS_THRESHOLD, help="FAISS from this gallery size")
    p.add_argument("--tgir_head", choices=["auto", "fusion", "combiner"], default="auto")
    p.add_argument("--variant_group_by", default="product_id", help="columns making colour variants (comma-separated)")
    p.add_argument("--fashioniq", default=None, help="FashionIQ root (captions/, image_splits/)")
    p.add_argument("--fashioniq_images", default=None, help="folder of the FashionIQ images as <id>.jpg")
    p.add_argument("--fashioniq_categories", default=",".join(FASHIONIQ_CATEGORIES))
    p.add_argument("--fashioniq_split", default="val", choices=["val", "train"])
    p.add_argument("--probe_attributes", default="category,subcategory")
    p.add_argument("--probe_max_train_items", type=int, default=20000, help="subsample the probe's training rows")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--output_dir", default="outputs/evaluate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        p.error(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
    if not args.dataset and not args.fashioniq:
        p.error("pass --dataset (a catalogue source such as hm:PATH or synthetic:2000) and/or --fashioniq ROOT")
    if args.fashioniq and not args.fashioniq_images:
        p.error("--fashioniq needs --fashioniq_images (the folder holding <image id>.jpg)")
    if not args.dataset and set(args.tasks) - {"tgir"}:
        p.error(f"--tasks {args.tasks} need --dataset; without a catalogue only --tasks tgir (FashionIQ) runs")
    if args.rerank_k < 0 or args.batch_size < 1 or args.num_queries < 1:
        p.error("--rerank_k must be >= 0, --batch_size and --num_queries >= 1")
    args.fashioniq_categories = [c.strip() for c in args.fashioniq_categories.split(",") if c.strip()]
    bad = [c for c in args.fashioniq_categories if c not in FASHIONIQ_CATEGORIES]
    if bad:
        p.error(f"--fashioniq_categories: unknown {bad}; choose from {list(FASHIONIQ_CATEGORIES)}")
    return args


# ------------------------------------------------------------------------------------------------------ retrieval
class ITMReranker:
    """Embeddings + hidden states of a held-out set from `SyncMaskForImageTextRetrieval`, and the ITM re-ranking
    callbacks `retrieval_recall` / `sample100_recall` call (query row, candidate rows) -> match probabilities."""

    def __init__(self, model, batches, device, show_progress=True):
        from tqdm.auto import tqdm

        self.model, self.device = model, device
        images, texts, image_hidden, text_hidden, masks, pids, tids, subs = [], [], [], [], [], [], [], []
        for batch in tqdm(batches, desc="embedding (ITM)", disable=not show_progress):
            ie, ih = model.encode_images(batch["pixel_values"].to(device))
            te, th = model.encode_texts(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            images.append(ie.float().cpu())
            texts.append(te.float().cpu())
            image_hidden.append(ih.cpu())
            text_hidden.extend(th.cpu())
            masks.extend(batch["attention_mask"].cpu())
            pids.extend(batch["product_ids"].tolist())
            tids.extend(batch["text_ids"].tolist())
            if "subcategory_labels" in batch:
                subs.extend(batch["subcategory_labels"].tolist())
        length = max(m.shape[0] for m in masks)
        self.text_hidden = torch.stack(
            [torch.nn.functional.pad(h, (0, 0, 0, length - h.shape[0])) for h in text_hidden]
        )
        self.text_mask = torch.stack([torch.nn.functional.pad(m, (0, length - m.shape[0])) for m in masks])
        self.image_hidden = torch.cat(image_hidden)
        self.embeddings = RetrievalEmbeddings(
            image_embeds=torch.cat(images),
            text_embeds=torch.cat(texts),
            product_ids=np.asarray(pids, dtype=np.int64),
            text_ids=np.asarray(tids),
            subcategories=np.asarray(subs, dtype=object) if subs else None,
        )

    @torch.no_grad()
    def _scores(self, image_rows, text_rows):
        m = self.model.syncmask
        logits = m.itm_logits(
            self.image_hidden[image_rows].to(self.device),
            self.text_hidden[text_rows].to(self.device),
            self.text_mask[text_rows].to(self.device),
        )
        return logits.softmax(dim=-1)[:, 1].float().cpu()

    def i2t(self, query_row, candidate_rows):
        return self._scores(torch.full_like(candidate_rows, query_row), candidate_rows)

    def t2i(self, query_row, candidate_rows):
        return self._scores(candidate_rows, torch.full_like(candidate_rows, query_row))


def run_retrieval(args, model, config, split, collator):
    show = not args.no_progress
    common = {"full_kwargs": {"faiss_threshold": args.faiss_threshold}, "sample100_kwargs": {}}
    s100_queries = {"num_queries": min(args.num_queries, len(split))}
    results = training.evaluate_retrieval(
        model,
        split,
        collator,
        args.device,
        seed=args.seed,
        show_progress=show,
        full_kwargs=common["full_kwargs"],
        sample100_kwargs=s100_queries,
    )
    if args.rerank_k:
        itm_class = task_head(config, "retrieval")
        if itm_class is None:
            raise SystemExit(
                f"error: --rerank_k needs an ITM head ({', '.join(models_with_head('retrieval'))}); "
                f"{config.model_type} has none"
            )
        itm_model = itm_class.from_pretrained(args.model_path).to(args.device).eval()
        loader = torch.utils.data.DataLoader(split, batch_size=args.batch_size, collate_fn=collator)
        reranker = ITMReranker(itm_model, [b for b in loader if b is not None], args.device, show)
        num_products = len(set(split["product_id"]))
        k = min(args.rerank_k, num_products)
        if k < 10:
            raise SystemExit(f"error: --rerank_k {args.rerank_k} must be >= 10 (recall@10 is reported)")
        itm = training.evaluate_retrieval(
            model,  # only its interface is checked: the embeddings (from the ITM model's encoders) are given
            split,
            collator,
            args.device,
            seed=args.seed,
            embeddings=reranker.embeddings,
            full_kwargs={
                "rerank_i2t": reranker.i2t,
                "rerank_t2i": reranker.t2i,
                "rerank_k": k,
                **common["full_kwargs"],
            },
            sample100_kwargs={"rerank_i2t": reranker.i2t, "rerank_t2i": reranker.t2i, "rerank_k": k, **s100_queries},
        )
        results["full_itm"], results["sample100_itm"] = itm["full"], itm["sample100"]
        results["full_itm"]["rerank_k"] = results["sample100_itm"]["rerank_k"] = k
    return results


# --------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    show = not args.no_progress
    model, processor = training.load_model_folder(args.model_path, trust_remote_code=args.trust_remote_code)
    model.to(args.device).eval()
    config = model.config
    splits = split = None
    if args.dataset:
        splits = training.load_catalog_splits(args.dataset, args.test_products, args.val_products, args.seed)
        split = splits[args.split]
        if len(split) == 0:
            raise SystemExit(f"error: the {args.split} split is empty; raise --{args.split}_products")

    results: dict = {}
    if "retrieval" in args.tasks:
        subcategories = sorted({v for part in splits.values() for v in part["subcategory"] if v})
        collator = FashionCollator(
            processor,
            mode=training.collator_mode(config),
            skip_bad=True,
            subcategory_label_map=subcategories,
            e2_text=training.e2_text(config),
        )
        results.update(run_retrieval(args, model, config, split, collator))
        print(training.retrieval_summary_table(results))

    if "tgir" in args.tasks:
        from syncmask_hf.tgir import colour_variant_set, evaluate_tgir, fashioniq_set, load_tgir_model

        head = args.tgir_head
        if head == "auto":  # the fusion head only when it was trained (finetune_tgir.py saved it), else image + text
            trained = any("TextGuided" in a for a in (getattr(config, "architectures", None) or []))
            head = "fusion" if trained else "combiner"
        tgir_model, tgir_processor, head = load_tgir_model(args.model_path, head, args.trust_remote_code)
        tgir_model.to(args.device).eval()
        sets = {}
        if split is not None:
            group_by = [c.strip() for c in args.variant_group_by.split(",") if c.strip()]
            sets["tgir_colour_variants"] = colour_variant_set(split, group_by, seed=args.seed)
        if args.fashioniq:
            sets["tgir_fashioniq"] = fashioniq_set(
                args.fashioniq, args.fashioniq_images, args.fashioniq_categories, args.fashioniq_split
            )
        for name, data in sets.items():
            if len(data) == 0:
                results[name] = {"skipped": f"no triplets ({data.info})"}
                print(f"{name}: skipped, the split has no colour variants")
                continue
            r = evaluate_tgir(tgir_model, tgir_processor, data, args.device, args.batch_size, show_progress=show)
            r["head"] = head
            results[name] = r
            print(format_results_markdown(r, title=f"{name} ({head} head)"))

    if "classification" in args.tasks:
        attributes = [a.strip() for a in args.probe_attributes.split(",") if a.strip()]
        train = splits["train"] if args.split != "train" else splits["validation"]
        probe, skipped, info = training.probe_attributes(
            model,
            processor,
            train,
            split,
            attributes,
            args.device,
            args.batch_size,
            seed=args.seed,
            show_progress=show,
            max_train_items=args.probe_max_train_items,
        )
        for name, r in probe.items():
            results[f"classification_{name}"] = r
        if skipped:
            results["classification_skipped"] = skipped
        if probe:
            print(
                format_results_markdown(
                    {
                        k: {m: v[m] for m in ("top1", "macro_acc", "chance_top1", "num_classes")}
                        for k, v in probe.items()
                    },
                    title=f"classification: linear probe on frozen image features ({info['num_train']} train, {info['num_test']} test images)",
                )
            )

    results["info"] = {
        "model_path": str(args.model_path),
        "model_type": config.model_type,
        "datasets": args.dataset,
        "split": args.split,
        "seed": args.seed,
        "num_items": len(split) if split is not None else 0,
        "num_products": len(set(split["product_id"])) if split is not None else 0,
    }
    path = save_results(results, Path(args.output_dir, "eval_results.json"), title=f"evaluation of {args.model_path}")
    print(f"results written to {path} (+ .md)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
