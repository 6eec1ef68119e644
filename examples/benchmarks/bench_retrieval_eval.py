"""Full-gallery retrieval evaluation: dense torch top-k vs exact FAISS (IndexFlatIP), same inputs, same results.

Prints a table of medians over repeats and the FAISS/dense time ratio, plus the sample-100 protocol's time.
Usage: python examples/benchmarks/bench_retrieval_eval.py [--products 5000 --images_per_product 4 --dim 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from syncmask_hf.evaluation import format_results_markdown, retrieval_recall, sample100_recall


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=5000)
    parser.add_argument("--images_per_product", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    proto = torch.randn(args.products, args.dim, generator=g)
    pids = np.repeat(np.arange(args.products), args.images_per_product)
    images = proto[pids] + 1.5 * torch.randn(len(pids), args.dim, generator=g)
    texts = (proto + 1.5 * torch.randn(args.products, args.dim, generator=g))[pids]
    text_ids = pids  # one text per product, repeated per image

    rows, outputs = {}, {}
    for backend, use_faiss in (("dense", False), ("faiss", True)):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            outputs[backend] = retrieval_recall(images, texts, pids, pids, text_ids=text_ids, use_faiss=use_faiss)
            times.append(time.perf_counter() - t)
        rows[backend] = {"median_s": statistics.median(times)}
    rows["faiss"]["ratio_vs_dense"] = rows["faiss"]["median_s"] / rows["dense"]["median_s"]
    rows["dense"]["ratio_vs_dense"] = 1.0
    same = all(outputs["dense"][k] == outputs["faiss"][k] for k in outputs["dense"] if k != "backend")
    t = time.perf_counter()
    s100 = sample100_recall(images, texts, pids, pids, image_subcategories=pids % 20, text_ids=text_ids)
    rows["sample100 (5 draws)"] = {"median_s": time.perf_counter() - t}
    print(f"{len(pids)} images, {args.products} distinct texts, dim {args.dim}; identical results: {same}")
    print(format_results_markdown(rows, digits=3))
    print(format_results_markdown({"full": outputs["dense"], "sample100": s100}))


if __name__ == "__main__":
    main()
