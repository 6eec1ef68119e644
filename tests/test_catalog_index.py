"""CatalogIndex (LanceDB): a round trip on disk, pre-filtered and product-grouped queries, upserts that re-embed
only what changed, deletions, bad images skipped and counted."""

from __future__ import annotations

import pytest

pytest.importorskip("lancedb")

from syncmask_hf import training  # noqa: E402
from syncmask_hf.catalog_index import CatalogIndex, filter_sql  # noqa: E402
from syncmask_hf.data import load_catalog  # noqa: E402
from syncmask_hf.search import CatalogIndex as ReExported  # noqa: E402


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("synthetic:300")


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog):
    root = tmp_path_factory.mktemp("index")
    training.save_random_model("e2", root / "model")
    CatalogIndex.build(root / "model", catalog, root / "db", progress=False)
    return root


def test_round_trip_on_disk(built, catalog):
    assert ReExported is CatalogIndex
    index = CatalogIndex.open(built / "db")  # a new object: everything comes from disk
    assert len(index) == len(catalog)
    hits = index.search(text="red striped dress", k=5)
    assert len(hits) == 5
    for h in hits:
        assert {"item_id", "product_id", "score", "text", "gender", "color", "category"} <= set(h)
        assert -1.0 <= h["score"] <= 1.0
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The catalogue's own image finds itself first (exact search below the ANN threshold).
    first = catalog[0]
    top = index.search(image=first["image"], k=1, group_by_product=False)[0]
    assert top["item_id"] == first["item_id"] and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_product_grouping(built, catalog):
    index = CatalogIndex.open(built / "db")
    per_product = len(catalog) / len(set(catalog["product_id"]))
    assert per_product > 1  # several images per product: grouping has something to do
    grouped = index.search(text="a dress", k=20)
    assert len({h["product_id"] for h in grouped}) == 20 == len(grouped)
    flat = index.search(text="a dress", k=60, group_by_product=False)
    assert len(flat) == 60 and len({h["product_id"] for h in flat}) < 60


def test_filters_pre_filter_and_keep_k_at_one_percent(built, catalog):
    index = CatalogIndex.open(built / "db")
    product = catalog[0]["product_id"]
    matching = [i for i, p in zip(catalog["item_id"], catalog["product_id"]) if p == product]
    assert len(matching) / len(catalog) <= 0.01
    hits = index.search(text="anything", filters={"product_id": product}, k=len(matching), group_by_product=False)
    assert sorted(h["item_id"] for h in hits) == sorted(matching)  # k matches, k results
    women = index.search(text="a dress", filters={"gender": "women", "color": ["red", "blue"]}, k=10)
    assert women and all(h["gender"] == "women" and h["color"] in ("red", "blue") for h in women)
    assert index.search(text="x", filters={"gender": "x' OR '1'='1"}, k=5) == []  # quoted, not injected
    with pytest.raises(ValueError, match="cannot filter on 'price'"):
        filter_sql({"price": "10"})


def test_upsert_re_embeds_only_changed_items_and_delete(built, catalog, tmp_path):
    """An upsert of 100 changed items (70 new texts, 30 new images) among 150 re-embeds exactly those 100: counted
    both by `upsert` and at the encoder itself."""
    import shutil

    from datasets import concatenate_datasets

    shutil.copytree(built / "db", tmp_path / "db")
    index = CatalogIndex.open(tmp_path / "db")
    seen = {"images": 0, "texts": 0}
    for name in seen:
        method = getattr(index.encoder, name)

        def counted(batch, method=method, name=name):
            batch = list(batch)
            seen[name] += len(batch)
            return method(batch)

        setattr(index.encoder, name, counted)
    new_text = catalog.select(range(70)).map(lambda r: {"text": r["text"] + " now in velvet"})
    # A new photo of the item: another item's image (different bytes), same id and text.
    images = catalog.select(range(200, 230))["image"]
    new_image = catalog.select(range(70, 100)).map(lambda r, i: {"image": images[i]}, with_indices=True)
    same = catalog.select(range(100, 150))
    counts = index.upsert(concatenate_datasets([new_text, new_image, same]))
    assert counts == {"embedded": 100, "unchanged": 50, "skipped": 0}
    assert seen == {"images": 100, "texts": 100}
    assert len(index) == len(catalog)
    hit = index.search(text="x", filters={"item_id": new_text[0]["item_id"]}, k=1)[0]
    assert hit["text"].endswith("now in velvet")
    moved = index.search(image=images[0], k=2, group_by_product=False)
    assert new_image[0]["item_id"] in {h["item_id"] for h in moved}  # the new photo is what is indexed now
    before = dict(seen)
    assert index.upsert(new_text)["embedded"] == 0 and seen == before  # nothing changed since: nothing encoded
    added = catalog.select(range(5, 7)).map(lambda r: {"item_id": r["item_id"] + "-new"})
    assert index.upsert(added) == {"embedded": 2, "unchanged": 0, "skipped": 0}
    assert len(index) == len(catalog) + 2
    gone = [catalog[i]["item_id"] for i in range(250, 253)]
    assert index.delete([*gone, "no-such-item"]) == 3
    assert len(index) == len(catalog) - 1
    assert index.search(text="x", filters={"item_id": gone}, k=3) == []


def test_bad_images_are_skipped_and_counted(tmp_path, catalog):
    training.save_random_model("e2", tmp_path / "model")
    rows = catalog.select(range(6)).cast_column("image", __import__("datasets").Image(decode=False))
    rows = rows.map(
        lambda r, i: {"image": {"bytes": b"not an image", "path": None}} if i == 2 else {}, with_indices=True
    )
    index = CatalogIndex.build(tmp_path / "model", rows, tmp_path / "db", progress=False)
    assert len(index) == 5 and index.last_update["skipped"] == 1
    assert index.skipped[0][0] == catalog[2]["item_id"]


def test_query_errors_name_the_fix(built):
    index = CatalogIndex.open(built / "db")
    with pytest.raises(ValueError, match="needs the image"):
        index.search(modification="in red")
    with pytest.raises(ValueError, match="give a text, an image"):
        index.search()
    with pytest.raises(FileNotFoundError, match="no catalogue index"):
        CatalogIndex.open(built / "nothing-here")


def test_approximate_index_above_the_threshold(tmp_path, catalog):
    """Above `ann_threshold` rows the image vectors get an IVF-PQ index; queries re-rank exactly (refine_factor),
    so a catalogue image still finds itself first."""
    training.save_random_model("e2", tmp_path / "model")
    index = CatalogIndex.build(tmp_path / "model", catalog, tmp_path / "db", ann_threshold=256, progress=False)
    assert any("image_vec" in str(i) for i in index._table.list_indices())
    reopened = CatalogIndex.open(tmp_path / "db")
    for row in (catalog[0], catalog[150]):
        top = reopened.search(image=row["image"], k=1, group_by_product=False)[0]
        assert top["item_id"] == row["item_id"]
    assert len(reopened.search(text="a dress", filters={"gender": "women"}, k=10)) == 10


def test_optimize_sorts_rows_by_the_cluster_columns(tmp_path, catalog):
    """Above `ann_threshold`, `optimize` rewrites the table sorted by `cluster_by` (a filter's rows lie together):
    the same rows and the same exact answers as an index left in catalogue order; `build` keeps no second copy on
    disk; upserts after it work, and a reader of the index keeps answering while it is sorted again."""
    training.save_random_model("e2", tmp_path / "model")
    plain = CatalogIndex.build(tmp_path / "model", catalog, tmp_path / "plain", ann_threshold=256, cluster_by=())
    index = CatalogIndex.build(tmp_path / "model", catalog, tmp_path / "db", ann_threshold=256, progress=False)
    assert index.meta["cluster_by"] == ["category", "gender", "color", "brand"]
    table = CatalogIndex.open(tmp_path / "db")._table.to_arrow()
    keys = list(zip(*(table[c].to_pylist() for c in index.meta["cluster_by"])))
    assert keys == sorted(keys) and len(set(keys)) > 10  # sorted, and there was something to sort
    unsorted = plain._table.to_arrow()
    assert unsorted["item_id"].to_pylist() != table["item_id"].to_pylist()
    by_id = lambda t: sorted(t.to_pylist(), key=lambda r: r["item_id"])  # noqa: E731
    assert by_id(unsorted) == by_id(table)
    data_mib = {n: sum(f.stat().st_size for f in (tmp_path / n).rglob("data/*.lance")) for n in ("db", "plain")}
    assert data_mib["db"] <= 1.1 * data_mib["plain"]  # the rewrite's older version was removed, not kept beside it
    for filters in ({"gender": "women"}, {"color": ["red", "blue"]}, {"category": catalog[7]["category"]}):
        a = index.search(text="a striped dress", filters=filters, k=8, group_by_product=False)
        b = plain.search(text="a striped dress", filters=filters, k=8, group_by_product=False)
        assert [h["item_id"] for h in a] == [h["item_id"] for h in b] and len(a) == 8  # exact among the filter's rows
    changed = catalog.select(range(5)).map(lambda r: {"text": r["text"] + " now in teal"})
    assert index.upsert(changed)["embedded"] == 5 and len(index) == len(catalog)
    reader = CatalogIndex.open(tmp_path / "db")  # another process serving the index while it is sorted again
    before = reader.search(text="a dress", k=5, group_by_product=False)
    index.optimize()  # the changed rows were appended unsorted; the previous layout is kept (cleanup=False)
    assert reader.search(text="a dress", k=5, group_by_product=False) == before
    table = CatalogIndex.open(tmp_path / "db")._table.to_arrow()
    keys = list(zip(*(table[c].to_pylist() for c in index.meta["cluster_by"])))
    assert keys == sorted(keys) and table.num_rows == len(catalog)
    with pytest.raises(ValueError, match="cannot cluster by"):
        CatalogIndex.create(tmp_path / "model", tmp_path / "other", cluster_by=("price",))


def test_index_benchmark_runs_small():
    """examples/benchmarks/bench_index.py at 3,000 vectors: every row measured, exact rows exact, and a 1% filter
    returns all k results (pre-filtering)."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("faiss")
    path = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "bench_index.py"
    spec = importlib.util.spec_from_file_location("bench_index", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--num_vectors", "3000", "--dim", "32", "--queries", "20"])
    assert set(rows) >= {"FAISS flat (memory)", "LanceDB exact, 1% filter", "LanceDB IVF-HNSW-SQ, 1% filter"}
    assert rows["FAISS flat (memory)"]["recall@10"] == 1.0
    assert rows["LanceDB exact (no vector index)"]["recall@10"] == 1.0
    assert rows["LanceDB exact, 1% filter"]["recall@10"] == 1.0
    assert all(r["returned"] == 10 for name, r in rows.items() if "LanceDB" in name)
    assert all(r["p50 ms"] > 0 for r in rows.values())
    # Catalogue-like vectors (around 30 centres), the single-graph index and FAISS's graph: exact rows stay exact,
    # every query gets k, the graphs find the neighbours.
    clustered = bench.main(["--num_vectors", "3000", "--dim", "32", "--queries", "20", "--clusters", "30",
                            "--indexes", "HNSW-SQ", "--faiss_hnsw", "--skip_exact"])  # fmt: skip
    assert clustered["LanceDB exact, 1% filter"]["recall@10"] == 1.0
    assert "LanceDB IVF-PQ" not in clustered and "LanceDB exact (no vector index)" not in clustered
    assert clustered["LanceDB HNSW-SQ"]["returned"] == 10 and clustered["LanceDB HNSW-SQ, 1% filter"]["returned"] == 10
    assert clustered["FAISS HNSW (memory)"]["recall@10"] >= 0.9 and clustered["LanceDB HNSW-SQ"]["recall@10"] >= 0.5


def test_index_benchmark_real_catalogue_mode(tmp_path):
    """bench_index.py --model_path: indexing throughput against the encoder's and the approximate index's recall
    on the model's own embeddings of a catalogue."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "bench_index.py"
    spec = importlib.util.spec_from_file_location("bench_index", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    training.save_random_model("e2", tmp_path / "model")
    argv = ["--num_vectors", "0", "--model_path", str(tmp_path / "model"), "--catalog", "synthetic:300"]
    rows = bench.main([*argv, "--catalog_items", "256", "--queries", "20", "--batch_size", "32"])
    encoder, indexer = rows["encoder alone (decoded images, in memory)"], rows["CatalogIndex upsert (files -> index)"]
    assert encoder["items/s"] > 0 and indexer["items/s"] > 0
    assert indexer["share of encoder"] == pytest.approx(indexer["items/s"] / encoder["items/s"])
    assert indexer["recall@10"] >= 0.8  # approximate, but on 256 items it finds nearly all of the exact top 10


def test_search_vector_checks_its_size(built):
    index = CatalogIndex.open(built / "db")
    with pytest.raises(ValueError, match="query vector of"):
        index.search_vector([0.0, 1.0], k=3)
