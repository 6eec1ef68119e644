#!/usr/bin/env python
"""Query latency of the demo's search engine on a large gallery (median of repeated queries), with the dense
similarity matrix as the reference run side by side.

    python examples/benchmarks/bench_demo.py --model outputs/pretrain/final --catalog synthetic:10000 --queries 50

Without --model a randomly initialised tiny SyncMask is saved to a temporary folder (latency does not depend on
training). Prints a Markdown table: indexing time, and per-query latency for text -> products, image -> products,
and text-guided search, each through the FAISS index and through a dense matmul over the same embeddings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

QUERIES = [
    f"{colour} {pattern} {garment}"
    for colour in ("red", "blue", "black", "white", "green")
    for pattern in ("striped", "dotted")
    for garment in ("dress", "shirt", "skirt", "jacket", "trousers")
]


def median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--catalog", default="synthetic:10000")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from syncmask_hf.search import CatalogSearch

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from syncmask_hf.training import save_random_model as save_tiny_model

        model = str(save_tiny_model("syncmask", Path(tmp.name) / "model"))
    start = time.perf_counter()
    engine = CatalogSearch(model, args.catalog, cache_dir=Path(tmp.name) / "cache")
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    CatalogSearch(model, args.catalog, cache_dir=Path(tmp.name) / "cache")
    cached_s = time.perf_counter() - start
    n = len(engine.texts)
    photo = engine.image(0)

    def dense(query):
        return torch.topk(engine.image_embeds @ query, args.k)

    rows = [
        (
            "text → products",
            lambda i: engine.search_text(QUERIES[i % len(QUERIES)], args.k),
            lambda i: dense(engine.encode_texts([QUERIES[i % len(QUERIES)]])[0]),
        ),
        (
            "image → products + texts",
            lambda i: engine.search_image(photo, args.k),
            lambda i: dense(engine.encode_images([photo])[0]),
        ),
        (
            "image + text → products",
            lambda i: engine.search_modified(photo, "in red", args.k),
            lambda i: dense(engine.encode_images([photo])[0] + engine.encode_texts(["in red"])[0]),
        ),
    ]
    print(
        f"### Demo search latency: {n:,}-item gallery, {engine.model.config.model_type}, median of {args.queries} queries, {args.threads} thread(s)\n"
    )
    print(f"Indexing (embed {n:,} images + texts): {index_s:.1f} s; reload from the disk cache: {cached_s:.1f} s\n")
    print("| query | engine (FAISS) ms | dense matmul ms | ratio |")
    print("|---|---:|---:|---:|")
    for name, engine_fn, dense_fn in rows:
        a, b = median_ms(engine_fn, args.queries), median_ms(dense_fn, args.queries)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
