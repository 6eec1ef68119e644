"""Throughput of FashionProcessor / FashionCollator on real H&M photos (items per second, decode included).

    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_processing.py --data ../shared/data --items 256 --size 224

Rows point at the JPEG files (as a `datasets.Image(decode=False)` column would), so each number includes JPEG decoding,
mode conversion, resizing and normalisation, and tokenisation. The reference row runs the bare transformers image
processor + tokenizer on the same files, to show the overhead of the collator's checks, ids and extra texts.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from syncmask_hf.data.collator import FashionCollator
from syncmask_hf.models.processing_fashion import FashionProcessor


def hm_rows(root: Path, n: int) -> list[dict]:
    rows = []
    with open(root / "hm" / "articles.csv", newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            path = root / "hm" / "images" / record["article_id"][:3] / f"{record['article_id']}.jpg"
            if path.is_file():
                rows.append(
                    {
                        "image": str(path),
                        "text": f"{record['prod_name']}. {record['detail_desc']}",
                        "product_id": record["product_code"],
                        "item_id": record["article_id"],
                        "category": record["product_group_name"],
                        "subcategory": record["product_type_name"],
                        "brand": "",
                        "season": "",
                        "color": record["colour_group_name"],
                        "composition": "",
                        "gender": record["index_group_name"],
                    }
                )
            if len(rows) == n:
                break
    return rows


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = hm_rows(Path(args.data), args.items)
    processor = FashionProcessor.from_text_model("minilm", image_size=args.size, max_length=64)
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def reference():
        for batch in batches:
            images = [Image.open(row["image"]).convert("RGB") for row in batch]
            processor.image_processor(images, return_tensors="pt")
            processor.tokenizer([row["text"] for row in batch], padding=True, truncation=True, max_length=64)

    reference()  # warm-up: the file cache and lazy imports should not count against the first row
    results = [("reference: image processor + tokenizer", 0, timed(reference, args.repeats))]
    for mode in FashionCollator.MODES:
        for workers in args.workers:
            collator = FashionCollator(processor, mode=mode, seed=0)
            if workers == 0:

                def run(collator=collator):
                    for batch in batches:
                        collator(batch)
            else:
                loader = torch.utils.data.DataLoader(
                    rows, batch_size=args.batch_size, num_workers=workers, collate_fn=collator
                )

                def run(loader=loader):
                    for _ in loader:
                        pass

            results.append((f"FashionCollator mode={mode}", workers, timed(run, args.repeats)))

    reference_time = results[0][2]
    print(f"{len(rows)} H&M items, {args.size} px, batch {args.batch_size}, median of {args.repeats}")
    print(f"{'pipeline':<42} {'workers':>7} {'items/s':>9} {'time vs ref':>12}")
    for name, workers, seconds in results:
        print(f"{name:<42} {workers:>7} {len(rows) / seconds:>9.1f} {seconds / reference_time:>11.2f}x")


if __name__ == "__main__":
    main()
