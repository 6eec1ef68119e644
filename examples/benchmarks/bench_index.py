"""The catalogue index (LanceDB, as `CatalogIndex` stores it) against an in-memory flat FAISS index, side by side.

    python examples/benchmarks/bench_index.py                               # 1,000,000 vectors of 512 dims
    python examples/benchmarks/bench_index.py --num_vectors 100000 --dim 256

Random unit vectors with a `category` column of 100 values (a filter on one value keeps 1% of the rows). Per
backend: build time (for LanceDB writing the table and training its IVF-PQ index), size on disk, query latency p50 /
p99 one query at a time (median of `--queries` queries after a warm-up) without and with the 1% filter, recall@10
against exact search (for the filtered queries, exact search among the matching rows), and how many of the k
results a filtered query returned (`--filter_shares`: filters keeping other shares of the rows). The table is
written in catalogue order (a filter's rows scattered) and measured, then sorted by the filter column as
`CatalogIndex.optimize` does ("sorted"), and the vector indexes are built on it. Flat FAISS is exact and in memory;
it is the reference row.

With `--model_path M --catalog SOURCE` it also indexes a real catalogue with the model, as `CatalogIndex.build` does
(files read, decoded, embedded, written, the approximate index built), and reports
- indexing throughput against the encoder's own (the same images already decoded in memory, the same batches, the
  text encoded too): the share tells whether reading and decoding, not the model, bound the indexer;
- recall@10 of the index's approximate search (its HNSW graph, forced on at any size) against exact search on the real
  embeddings, with the catalogue's own texts as queries (real embeddings cluster; random vectors do not).

    python examples/benchmarks/bench_index.py --num_vectors 0 --model_path outputs/e2/final \
        --catalog hm:../shared/data/hm --catalog_items 5000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from syncmask_hf.evaluation import format_results_markdown


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices: float64 draws of 1M x 512 would need 4 GB at once
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_vectors(n: int, dim: int, clusters: int, cosine: float, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres (products, with their colour variants and look-alikes), each at
    an expected cosine `cosine` with its centre: what a catalogue's embeddings look like, unlike uniform vectors,
    whose neighbours are all nearly equidistant."""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(clusters, dim, seed + 1)
    # For noise of norm r (a Gaussian scaled to r / sqrt(dim)) around a unit centre, cos ~= 1 / sqrt(1 + r^2).
    r = np.sqrt(1.0 / cosine**2 - 1.0)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, clusters, m)]
        block = block + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(r / np.sqrt(dim))
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None = None) -> set[int]:
    scores = vectors @ query if rows is None else vectors[rows] @ query
    top = np.argpartition(-scores, k)[:k]
    return set((top if rows is None else rows[top]).tolist())


def percentiles(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    return {"p50 ms": statistics.median(ms), "p99 ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def folder_size(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512, help="512: E2 at ViT-B/32 (CLIP's projection)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="0: uniform random unit vectors; N: vectors around N centres (a catalogue-like structure)",
    )
    p.add_argument("--cluster_cosine", type=float, default=0.8, help="expected cosine of a vector with its centre")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobes", type=int, default=20, help="IVF partitions searched per query")
    p.add_argument("--refine_factor", type=int, default=10, help="IVF indexes: candidates re-ranked exactly: k x this")
    p.add_argument("--ef", type=int, default=128, help="HNSW graphs: candidates kept while searching (>= k)")
    p.add_argument("--hnsw_m", type=int, default=20, help="HNSW graphs: neighbours per node")
    p.add_argument("--ef_construction", type=int, default=150, help="HNSW graphs: candidates kept while building")
    p.add_argument(
        "--faiss_hnsw", action="store_true", help="also an in-memory FAISS HNSW graph (M = --hnsw_m, efSearch = --ef)"
    )
    p.add_argument(
        "--skip_exact",
        action="store_true",
        help="leave out LanceDB's unfiltered exact search (a full scan: ~3 s a query at 1M vectors)",
    )
    p.add_argument(
        "--filter_shares",
        type=int,
        nargs="+",
        default=[1],
        help="filters measured, as the % of rows each keeps (1: one category of 100; 5: five of them)",
    )
    p.add_argument("--output_dir", default=None, help="where the LanceDB table goes (default: a temporary folder)")
    p.add_argument(
        "--indexes",
        nargs="+",
        default=["IVF-PQ", "IVF-HNSW-SQ"],
        choices=["IVF-PQ", "IVF-HNSW-SQ", "HNSW-SQ"],
        help="the approximate indexes to build and measure (HNSW-SQ: one graph over every vector, no IVF partitions)",
    )
    p.add_argument("--model_path", default=None, help="a model folder: also index --catalog with it")
    p.add_argument("--catalog", action="append", default=None, help="a data-layer source (repeat)")
    p.add_argument("--catalog_items", type=int, default=5000, help="the first N items of the catalogue(s)")
    p.add_argument("--batch_size", type=int, default=64)
    args = p.parse_args(argv)
    rows = {}
    if args.model_path:
        rows.update(real_catalogue(args))
    if args.num_vectors:
        rows.update(random_vectors(args))
    return rows


def real_catalogue(args) -> dict:
    """Indexing throughput against the encoder's, and recall of the approximate index on real embeddings."""
    import datasets

    from syncmask_hf.catalog_index import CatalogIndex, FeatureEncoder
    from syncmask_hf.data import load_catalog

    parts = [load_catalog(source, skip_bad=True) for source in args.catalog or ["synthetic:1000"]]
    catalog = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    catalog = catalog.shuffle(seed=0).select(range(min(args.catalog_items, len(catalog))))
    n, bs = len(catalog), args.batch_size

    encoder = FeatureEncoder(args.model_path)
    images = [im.convert("RGB") for im in catalog["image"]]  # decoded beforehand: not timed
    texts = list(catalog["text"])
    encoder.images(images[:bs]), encoder.texts(texts[:bs])  # warm-up
    t = time.perf_counter()
    for start in range(0, n, bs):
        encoder.images(images[start : start + bs])
        encoder.texts(texts[start : start + bs])
    encode_s = time.perf_counter() - t
    del images

    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_index_"))
    shutil.rmtree(root / "catalog_db", ignore_errors=True)
    # ann_threshold=1: the approximate index is built whatever the size, to measure its recall. The model's
    # loading (create) is not timed; the upsert is what `build` and index_catalog.py spend per item.
    index = CatalogIndex.create(args.model_path, root / "catalog_db", ann_threshold=1, overwrite=True)
    t = time.perf_counter()
    index.upsert(catalog, batch_size=bs)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    index.optimize()
    optimize_s = time.perf_counter() - t

    table = index._table.to_arrow()
    image_vecs = np.stack(table["image_vec"].to_numpy(zero_copy_only=False)).astype(np.float32)
    text_vecs = np.stack(table["text_vec"].to_numpy(zero_copy_only=False)).astype(np.float32)
    ids = np.asarray(table["item_id"].to_pylist())
    picks = np.random.default_rng(0).choice(len(ids), size=min(args.queries, len(ids)), replace=False)
    recall, times = [], []
    for i in picks:
        truth = set(ids[np.argsort(-(image_vecs @ text_vecs[i]))[: args.k]].tolist())
        t = time.perf_counter()
        got = index.search_vector(text_vecs[i], k=args.k, group_by_product=False)
        times.append(time.perf_counter() - t)
        recall.append(len(truth & {h["item_id"] for h in got}) / args.k)
    spread = float(np.mean(image_vecs @ image_vecs[picks].T))
    print(
        f"real catalogue: {n:,} items ({', '.join(args.catalog or ['synthetic:1000'])}), model {args.model_path} "
        f"({image_vecs.shape[1]} dims, image mean cosine {spread:.3f}); batch {bs}; "
        f"{len(index.skipped)} skipped; the approximate index built in {optimize_s:.1f} s"
    )
    rows = {
        "encoder alone (decoded images, in memory)": {"items/s": n / encode_s, "share of encoder": 1.0},
        "CatalogIndex upsert (files -> index)": {
            "items/s": n / index_s,
            "share of encoder": encode_s / index_s,
            **percentiles(times),
            f"recall@{args.k}": float(np.mean(recall)),
        },
    }
    print(format_results_markdown(rows, digits=3))
    if args.output_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def random_vectors(args) -> dict:

    import faiss
    import lancedb
    import pyarrow as pa
    from lancedb.index import Bitmap, IvfHnswSq, IvfPq

    from syncmask_hf.catalog_index import cluster_table, filter_sql

    n, dim, k = args.num_vectors, args.dim, args.k
    t = time.perf_counter()
    if args.clusters:  # queries are drawn like the catalogue (a new photo or text of a known kind of product)
        both = clustered_vectors(n + args.queries + 10, dim, args.clusters, args.cluster_cosine, seed=0)
        vectors, queries = both[:n], both[n:]
    else:
        vectors = unit_vectors(n, dim, seed=0)
        queries = unit_vectors(args.queries + 10, dim, seed=1)
    categories = np.arange(n) % 100
    qcat = np.arange(len(queries)) % 100
    print(f"{n:,} vectors of {dim} dims generated in {time.perf_counter() - t:.1f} s")
    truth = [exact_top(vectors, q, k) for q in queries]

    def kept(i: int, share: int) -> list[str]:  # a filter keeping `share`% of the rows: that many categories
        return [str((qcat[i] + j) % 100) for j in range(share)]

    truth_filtered = {
        share: [
            exact_top(vectors, q, k, np.flatnonzero(np.isin(categories, np.int64(kept(i, share)))))
            for i, q in enumerate(queries)
        ]
        for share in args.filter_shares
    }

    rows = {}
    # -- flat FAISS (exact, in memory): the reference
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    build = time.perf_counter() - t
    times, recall = [], []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, ids = flat.search(q[None], k)
        if i >= 10:  # after a warm-up
            times.append(time.perf_counter() - t)
            recall.append(len(truth[i] & set(ids[0].tolist())) / k)
    rows["FAISS flat (memory)"] = {
        "build s": build,
        "disk MiB": n * dim * 4 / 2**20,
        **percentiles(times),
        f"recall@{k}": float(np.mean(recall)),
    }

    if args.faiss_hnsw:  # an in-memory graph: what a graph index can do here without LanceDB's per-query costs
        t = time.perf_counter()
        graph = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = args.ef_construction
        graph.add(vectors)
        build = time.perf_counter() - t
        graph.hnsw.efSearch = max(args.ef, k)
        times, recall = [], []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            _, ids = graph.search(q[None], k)
            if i >= 10:
                times.append(time.perf_counter() - t)
                recall.append(len(truth[i] & set(ids[0].tolist())) / k)
        rows["FAISS HNSW (memory)"] = {
            "build s": build,
            "disk MiB": float("nan"),
            **percentiles(times),
            f"recall@{k}": float(np.mean(recall)),
        }
        print(f"FAISS HNSW built in {build:.1f} s", flush=True)

    # -- LanceDB with an IVF-PQ index (what CatalogIndex builds above its threshold)
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_index_"))
    shutil.rmtree(root / "db", ignore_errors=True)
    db = lancedb.connect(str(root / "db"))
    t = time.perf_counter()
    table = pa.table(
        {
            "item_id": pa.array(np.arange(n).astype(str)),
            "category": pa.array(categories.astype(str)),
            "image_vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
    )
    tbl = db.create_table("catalog", data=table, mode="overwrite")
    write = time.perf_counter() - t
    # A bitmap index on the filter column: a 1% filter reads 1% of the rows.
    tbl.create_index("category", config=Bitmap())
    write = time.perf_counter() - t

    def lance(share: int = 0, exact: bool = False, graph: bool = False):
        times, recall, returned = [], [], []
        for i, q in enumerate(queries):
            query = tbl.search(q, vector_column_name="image_vec").distance_type("dot").limit(k).select(["item_id"])
            if exact:  # brute force over the (filtered) rows: CatalogIndex's choice for selective filters
                query = query.bypass_vector_index()
            elif graph:  # one partition: the whole graph is searched, `ef` sets the breadth
                query = query.nprobes(1).ef(max(args.ef, k))
            else:
                query = query.nprobes(args.nprobes).refine_factor(args.refine_factor)
            if share:  # the clause CatalogIndex writes
                query = query.where(filter_sql({"category": kept(i, share)}), prefilter=True)
            t = time.perf_counter()
            got = query.to_list()
            if i >= 10:
                times.append(time.perf_counter() - t)
                ids = {int(r["item_id"]) for r in got}
                recall.append(len((truth_filtered[share] if share else truth)[i] & ids) / k)
                returned.append(len(got))
        return {**percentiles(times), f"recall@{k}": float(np.mean(recall)), "returned": min(returned)}

    size = folder_size(root / "db")
    print(f"LanceDB table written in {write:.1f} s; exact queries ...", flush=True)
    if not args.skip_exact:
        rows["LanceDB exact (no vector index)"] = {"build s": write, "disk MiB": size, **lance(exact=True)}
    for share in args.filter_shares:
        rows[f"LanceDB exact, {share}% filter"] = {"build s": write, "disk MiB": size, **lance(share, exact=True)}
    # CatalogIndex.optimize sorts the table by its filter columns: a filter's rows are read as one run, not
    # thousands of single rows
    t = time.perf_counter()
    cluster_table(db, tbl, ["category"], cleanup=True)
    tbl.create_index("category", config=Bitmap())
    write += time.perf_counter() - t
    size = folder_size(root / "db")
    print(f"table sorted by category in {time.perf_counter() - t:.1f} s", flush=True)
    for share in args.filter_shares:
        rows[f"LanceDB exact, {share}% filter, sorted"] = {
            "build s": write,
            "disk MiB": size,
            **lance(share, exact=True),
        }
    partitions = max(1, int(np.sqrt(n)))
    configs = {
        "IVF-PQ": IvfPq(distance_type="dot", num_partitions=partitions, num_sub_vectors=max(1, dim // 8)),
        "IVF-HNSW-SQ": IvfHnswSq(distance_type="dot", num_partitions=max(1, partitions // 8)),
        "HNSW-SQ": IvfHnswSq(
            distance_type="dot", num_partitions=1, m=args.hnsw_m, ef_construction=args.ef_construction
        ),
    }
    for name in args.indexes:
        config = configs[name]
        print(f"building {name} ...", flush=True)
        t = time.perf_counter()
        tbl.create_index("image_vec", config=config, replace=True)
        index_s = time.perf_counter() - t
        print(f"{name} built in {index_s:.1f} s; queries ...", flush=True)
        size = folder_size(root / "db")
        graph = name == "HNSW-SQ"
        rows[f"LanceDB {name}"] = {"build s": write + index_s, "disk MiB": size, **lance(graph=graph)}
        for share in args.filter_shares:
            rows[f"LanceDB {name}, {share}% filter"] = {
                "build s": write + index_s,
                "disk MiB": size,
                **lance(share, graph=graph),
            }
    ref = rows["FAISS flat (memory)"]["p50 ms"]
    for row in rows.values():
        row["p50 vs FAISS"] = row["p50 ms"] / ref
    print(
        f"{n:,} unit vectors, {dim} dims"
        + (f" around {args.clusters:,} centres (cosine {args.cluster_cosine})" if args.clusters else " (uniform)")
        + f", k={k}, {args.queries} queries one at a time; IVF-PQ with "
        f"{partitions} partitions and {max(1, dim // 8)} sub-vectors, IVF-HNSW-SQ with {max(1, partitions // 8)} "
        f"partitions; nprobes {args.nprobes}, refine_factor {args.refine_factor}; HNSW m {args.hnsw_m}, "
        f"ef_construction {args.ef_construction}, ef {args.ef}"
    )
    print(format_results_markdown(rows, digits=3))
    if args.output_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
