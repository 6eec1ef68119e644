"""`CatalogIndex`: a persistent catalogue index on LanceDB (on disk or object storage), with metadata filters,
product grouping and incremental updates. Re-exported as `syncmask_hf.search.CatalogIndex`.

    index = CatalogIndex.build("outputs/pretrain/final", "hm:../shared/data/hm", "outputs/hm.lance")
    index = CatalogIndex.open("outputs/hm.lance")                     # later, in another process
    index.search(text="red striped dress", filters={"gender": "Women"}, k=10)
    index.upsert(changed_rows)                                         # re-embeds only rows whose image or text changed
    index.delete(["0108775015"])

One table row per catalogue item: its image embedding, its text's embedding, the catalogue schema's string columns,
and a content hash (image bytes, or path + size + mtime for files, and the text) that tells an upsert which rows to
embed again. Queries pre-filter (the filter runs before the nearest-neighbour search, so a filter matching k items
returns k), group hits by product (the best image of each), and search exactly below `ann_threshold` rows and with
one approximate HNSW graph above it, where `optimize` also sorts the rows by the most-filtered columns so that a
filter's rows are read together. LanceDB is an optional dependency (`pip install syncmask_hf[index]`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.schema import STRING_COLUMNS

logger = logging.getLogger("syncmask_hf.catalog_index")

TABLE = "catalog"
META_TABLE = "index_meta"
#: Metadata columns a query may filter on (the catalogue schema's, less the free text).
FILTER_COLUMNS = tuple(c for c in STRING_COLUMNS if c != "text")
#: From this many rows on, `build` (and `optimize`) adds an approximate (HNSW) vector index; below it search is exact.
DEFAULT_ANN_THRESHOLD = 100_000
#: A filtered query whose filter keeps at most this many rows searches them exactly (no vector index); above it, the
#: graph with the filter applied first. At 1M rows of 512 dims sorted by the filter column (p50 of 300 queries,
#: interleaved): 10k rows exact 14.6 ms (recall 1.0) vs the graph 17.5 ms (0.976); 20k rows 27 vs 22 ms; 50k 88 vs
#: 37 ms.
EXACT_FILTERED_ROWS = 15_000
#: The approximate index: one HNSW graph over every image vector (scalar-quantised), no IVF partitions. Neighbours
#: per node, candidates kept while building, and while searching (at least the query's limit).
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF = 20, 150, 128
#: `optimize` rewrites the table sorted by these columns, so that the rows a filter keeps lie together instead of
#: scattered over the table: LanceDB then reads a few runs of rows, not thousands of single ones (1M rows, 1% filter,
#: exact search among its rows: p50 92 ms in catalogue order, 15.7 ms sorted; bench_index.py). A filter on the first
#: column reads one run; on a later one, a run per value of the columns before it. Most-filtered first.
DEFAULT_CLUSTER_BY = ("category", "gender", "color", "brand")
#: Rows read and written at a time while `optimize` sorts the table.
CLUSTER_CHUNK_ROWS = 32_768


def _lancedb():
    try:
        import lancedb
    except ImportError as err:  # pragma: no cover - the message is the point
        raise ImportError(
            "CatalogIndex needs LanceDB: pip install 'syncmask_hf[index]' (or pip install lancedb)"
        ) from err
    return lancedb


def image_token(image) -> bytes:
    """What identifies an image without decoding it: its encoded bytes' digest, or a file's path, size and
    modification time (shared with `CatalogSearch`'s catalogue digest)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return hashlib.sha256(image).digest()
    if isinstance(image, (str, os.PathLike)):
        try:
            st = os.stat(image)
            return f"{image}:{st.st_size}:{st.st_mtime_ns}".encode()
        except OSError:
            return f"{image}:missing".encode()
    if hasattr(image, "tobytes"):  # a decoded PIL image
        return hashlib.sha256(image.tobytes()).digest() + repr((image.mode, image.size)).encode()
    return repr(image).encode()


def content_hash(image, text: str) -> str:
    """What an upsert compares: the image (`image_token`) and the text."""
    h = hashlib.sha256(image_token(image))
    h.update(b"\x1e" + (text or "").encode())
    return h.hexdigest()[:32]


def _sql_string(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _metadata_columns(columns: Iterable[str], action: str) -> tuple[str, ...]:
    """`columns` as a tuple, checked to be the catalogue's metadata columns (what filters and sorting may use)."""
    columns = (columns,) if isinstance(columns, str) else tuple(columns)
    for column in columns:
        if column not in FILTER_COLUMNS:
            raise ValueError(f"cannot {action} {column!r}: choose among {list(FILTER_COLUMNS)}")
    return columns


def filter_sql(filters: dict | None) -> str | None:
    """A LanceDB `where` clause from {column: value or list of values}; only the catalogue's metadata columns."""
    if not filters:
        return None
    _metadata_columns(filters, "filter on")
    clauses = []
    for column, value in filters.items():
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        if not values:
            raise ValueError(f"filter {column!r} has no values")
        clauses.append(f"{column} IN ({', '.join(_sql_string(v) for v in values)})")
    return " AND ".join(clauses)


def cluster_table(
    db, table, columns: Sequence[str], chunk_rows: int = CLUSTER_CHUNK_ROWS, cleanup: bool = False
) -> bool:
    """Rewrite a LanceDB table (of connection `db`) sorted by `columns`: a new version of the same table, committed
    at once at the end (a kill leaves the old one). Only the sort keys are held in memory; rows are read and
    written `chunk_rows` at a time. Indexes do not survive the rewrite: build them after it. `cleanup`: remove the
    older versions' files afterwards (else the table takes twice its size on disk until LanceDB's own cleanup; a
    process still reading an older version fails once they are gone). Not safe against concurrent writers.
    Returns whether the table was rewritten (False: sorted already)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = list(columns)
    keys = table.search().select(columns).with_row_id(True).limit(None).to_arrow()
    if keys.num_rows < 2:
        return False
    order = pc.sort_indices(keys, sort_keys=[(c, "ascending") for c in columns])
    row_ids = keys["_rowid"].take(order).to_numpy()
    if np.all(row_ids[1:] > row_ids[:-1]):
        return False  # sorted already
    schema = table.schema
    source = db.open_table(table.name)  # pinned to this version: the rewrite reads from it
    source.checkout(table.version)

    def batches():
        for start in range(0, len(row_ids), chunk_rows):
            ids = row_ids[start : start + chunk_rows]
            part = source.take_row_ids(ids.tolist(), with_row_id=True).to_arrow()
            got = part["_rowid"].to_numpy()
            by_id = np.argsort(got)  # a take returns rows in storage order: put them back in the sort order
            rows = part.take(pa.array(by_id[np.searchsorted(got[by_id], ids)])).select(schema.names)
            yield from rows.cast(schema).to_batches()

    table.add(pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite")
    if cleanup:  # LanceDB's optimize: compacts (nothing to do after a rewrite) and removes the older versions
        with warnings.catch_warnings():  # its warning says just that: older versions go (the docstring says so)
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than")
            table.optimize(cleanup_older_than=datetime.timedelta(0), delete_unverified=True)
    return True


class FeatureEncoder:
    """A model folder's one feature contract (`get_image_features` / `get_text_features`), unit-normalised: what
    `CatalogIndex` and `CatalogSearch` embed with. `int8`: torch.ao's dynamic int8 quantisation of the model's
    linear layers (CPU serving; ONNX Runtime's is `serving.OnnxFeatureEncoder`)."""

    def __init__(self, model_path: str, device="cpu", trust_remote_code: bool = False, int8: bool = False):
        from transformers import AutoModel, AutoProcessor

        from .specs import load_pretrained

        remote = {"trust_remote_code": trust_remote_code}
        self.device = torch.device(device)
        self.model = load_pretrained(AutoModel, model_path, **remote).to(self.device).eval()
        self.processor = load_pretrained(AutoProcessor, model_path, **remote)
        if int8:
            from .serving import torch_int8

            if self.device.type != "cpu":
                raise ValueError("int8=True is torch.ao's dynamic quantisation, which runs on CPU only")
            self.model = torch_int8(self.model)
        #: what tells a cache which features these are (an int8 model's differ from fp32's)
        self.key = "torch-int8" if int8 else "torch"

    @torch.no_grad()
    def image_features(self, images) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt")
        out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return F.normalize(out.pooler_output.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        out = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        )
        return F.normalize(out.pooler_output.float(), dim=-1).cpu()

    def images(self, images) -> np.ndarray:
        return self.image_features(images).numpy()

    def texts(self, texts) -> np.ndarray:
        return self.text_features(texts).numpy()


class CatalogIndex:
    """A catalogue embedded by one model, in a LanceDB table at `uri`. Build with `build`, reopen with `open`."""

    def __init__(self, db, table, meta: dict, encoder: FeatureEncoder | None = None):
        self._db, self._table, self.meta = db, table, meta
        self._encoder = encoder
        #: counts of the last `build` / `upsert`: embedded, unchanged, skipped (bad images), deleted
        self.last_update: dict = {}
        self.skipped: list[tuple[str, str]] = []

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        model_path,
        uri,
        *,
        dim: int | None = None,
        device="cpu",
        trust_remote_code: bool = False,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        cluster_by: Sequence[str] = DEFAULT_CLUSTER_BY,
        overwrite: bool = False,
        encoder: FeatureEncoder | None = None,
        extra_meta: dict | None = None,
    ) -> CatalogIndex:
        """An empty index at `uri` for the model at `model_path` (its embedding size measured when `dim` is None).
        An index already there is reopened when it was built with the same model, refused otherwise, unless
        `overwrite`. `cluster_by`: the columns `optimize` sorts the rows by (() keeps the order they came in);
        `encoder`: the model already loaded (not loaded again); `extra_meta`: kept in the index's metadata
        (`meta`), e.g. what the caller needs to tell whether the index is current."""
        cluster_by = _metadata_columns(cluster_by, "cluster by")
        lancedb = _lancedb()
        db = lancedb.connect(str(uri))
        if not overwrite and _has_index(db):
            index = cls.open(uri, device=device, trust_remote_code=trust_remote_code)
            if index.meta["model_path"] != str(model_path):
                raise ValueError(
                    f"{uri} holds an index of {index.meta['model_path']}, not {model_path}: choose another "
                    "--index_uri, or overwrite it"
                )
            if encoder is not None:
                index._encoder = encoder
            return index
        encoder = encoder or FeatureEncoder(str(model_path), device, trust_remote_code)
        if dim is None:
            dim = int(encoder.texts(["a"]).shape[1])
        meta = {
            "model_path": str(model_path),
            "trust_remote_code": bool(trust_remote_code),
            "ann_threshold": int(ann_threshold),
            "cluster_by": list(cluster_by),
            "dim": int(dim),
            **(extra_meta or {}),
        }
        table = db.create_table(TABLE, schema=_schema(dim), mode="overwrite")
        db.create_table(META_TABLE, data=[{"key": "meta", "value": json.dumps(meta)}], mode="overwrite")
        return cls(db, table, meta, encoder)

    @classmethod
    def build(
        cls,
        model_path,
        dataset,
        uri,
        *,
        batch_size: int = 64,
        device="cpu",
        trust_remote_code: bool = False,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        cluster_by: Sequence[str] = DEFAULT_CLUSTER_BY,
        progress: bool = True,
    ) -> CatalogIndex:
        """Embed `dataset` (a `datasets.Dataset` in the catalogue schema, or a data-layer source string such as
        "hm:PATH") with the model at `model_path` into a new index at `uri` (an existing one there is replaced).
        Images that do not decode are skipped and counted (`index.skipped`). For several processes and resumable
        runs, `examples/index_catalog.py`."""
        index = cls.create(
            model_path,
            uri,
            device=device,
            trust_remote_code=trust_remote_code,
            ann_threshold=ann_threshold,
            cluster_by=cluster_by,
            overwrite=True,
        )
        index.upsert(dataset, batch_size=batch_size, progress=progress)
        if len(index) == 0:
            raise ValueError(f"no catalogue item could be embedded ({len(index.skipped)} skipped): nothing to index")
        index.optimize(cleanup=True)  # a new index: nothing else reads its older versions
        return index

    @classmethod
    def open(
        cls, uri, *, device="cpu", trust_remote_code: bool | None = None, encoder: FeatureEncoder | None = None
    ) -> CatalogIndex:
        """An index `build` wrote at `uri`; the model it was built with is loaded when a query needs it, unless
        `encoder` serves its features (e.g. `serving.OnnxFeatureEncoder` over that model's ONNX export)."""
        lancedb = _lancedb()
        db = lancedb.connect(str(uri))
        if not _has_index(db):
            raise FileNotFoundError(f"no catalogue index at {uri} (build one with CatalogIndex.build)")
        meta = json.loads(db.open_table(META_TABLE).to_arrow().to_pylist()[0]["value"])
        if trust_remote_code is not None:
            meta["trust_remote_code"] = bool(trust_remote_code)
        index = cls(db, db.open_table(TABLE), meta, encoder)
        index._device = device
        return index

    @property
    def encoder(self) -> FeatureEncoder:
        if self._encoder is None:
            self._encoder = FeatureEncoder(
                self.meta["model_path"], getattr(self, "_device", "cpu"), self.meta.get("trust_remote_code", False)
            )
        return self._encoder

    def __len__(self) -> int:
        return self._table.count_rows()

    # -- embedding -----------------------------------------------------------------------------------------
    def _embed(self, items: Iterable[dict], batch_size: int, progress: bool) -> tuple[list[dict], list]:
        """Embed `items` in batches; the next batch's images are read and decoded in a background thread while
        the model encodes the current one (PIL releases the GIL), so file reading is not what bounds the indexer."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        from .models.image_loading import FashionInputError, load_image

        rows, skipped = [], []

        def decode(batch):
            images, kept, bad = [], [], []
            for item in batch:
                try:
                    images.append(load_image(item["image"], item_id=item["item_id"]))
                    kept.append(item)
                except FashionInputError as err:
                    bad.append((item["item_id"], str(err)))
            return images, kept, bad

        def encode(images, kept, bad):
            skipped.extend(bad)
            if kept:
                image_vecs = self.encoder.images(images)
                text_vecs = self.encoder.texts([item["text"] or "" for item in kept])
                for item, iv, tv in zip(kept, image_vecs, text_vecs):
                    rows.append({**{c: item[c] for c in STRING_COLUMNS}, "content_hash": item["content_hash"],
                                 "image_ref": item["image_ref"], "image_vec": iv, "text_vec": tv})  # fmt: skip

        def batches():
            batch = []
            for item in tqdm(items, desc="embedding catalogue", unit="item", disable=not progress):
                batch.append(item)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-decode") as pool:
            pending = None
            for batch in batches():
                ahead = pool.submit(decode, batch)
                if pending is not None:
                    encode(*pending.result())
                pending = ahead
            if pending is not None:
                encode(*pending.result())
        for item_id, reason in skipped:
            logger.warning("catalogue index: skipped %s: %s", item_id, reason)
        return rows, skipped

    # -- updates -------------------------------------------------------------------------------------------
    def _hashes(self, item_ids: Sequence[str]) -> dict[str, str]:
        out = {}
        ids = list(item_ids)
        for start in range(0, len(ids), 1000):
            where = f"item_id IN ({', '.join(_sql_string(i) for i in ids[start : start + 1000])})"
            for r in self._table.search().where(where).select(["item_id", "content_hash"]).to_list():
                out[r["item_id"]] = r["content_hash"]
        return out

    def embed_changed(self, items: list[dict], batch_size: int = 64, progress: bool = False):
        """The embedded rows (an Arrow table, or None) of the `items` (from `catalog_rows`) that are new or whose
        image or text changed, with the counts: embedded, unchanged, skipped."""
        known = self._hashes([i["item_id"] for i in items])
        changed = [i for i in items if known.get(i["item_id"]) != i["content_hash"]]
        new_rows, skipped = self._embed(changed, batch_size, progress)
        self.skipped = skipped
        counts = {"embedded": len(new_rows), "unchanged": len(items) - len(changed), "skipped": len(skipped)}
        return (_to_arrow(new_rows) if new_rows else None), counts

    def ingest(self, table) -> None:
        """Insert or replace (by `item_id`) rows embedded already (an Arrow table from `embed_changed`)."""
        self._table.merge_insert("item_id").when_matched_update_all().when_not_matched_insert_all().execute(table)

    def upsert(self, rows, *, batch_size: int = 64, progress: bool = False) -> dict:
        """Add new items and replace changed ones (by `item_id`); only items whose image or text changed (content
        hash) are embedded again. Returns and keeps in `last_update` the counts: embedded, unchanged, skipped."""
        table, counts = self.embed_changed(list(catalog_rows(rows)), batch_size, progress)
        if table is not None:
            self.ingest(table)
        self.last_update = counts
        return counts

    def delete(self, item_ids: Sequence[str]) -> int:
        """Remove items by id; returns how many were there."""
        ids = [str(i) for i in item_ids]
        present = len(self._hashes(ids))
        for start in range(0, len(ids), 1000):
            self._table.delete(f"item_id IN ({', '.join(_sql_string(i) for i in ids[start : start + 1000])})")
        self.last_update = {"deleted": present}
        return present

    def optimize(self, cleanup: bool = False) -> None:
        """Below `ann_threshold` rows search is exact; from it on the rows are sorted by the index's `cluster_by`
        columns (`cluster_table`: a filter's rows lie together), the image vectors get one HNSW graph (LanceDB's
        IVF-HNSW-SQ with a single partition: on catalogue-like vectors IVF partitions cost recall and latency, each
        probed partition being a graph search of its own; examples/benchmarks/bench_index.py), and the filter
        columns scalar indexes, so a selective filter reads only its rows. Rows added later are appended unsorted
        until the next `optimize`. `cleanup`: remove the files of the table's layout before sorting (its older
        versions); leave it off while other processes serve this index (they read their version until they reopen
        it), on when nothing else reads it (`build` and `CatalogSearch`, which write their index anew)."""
        n = len(self)
        if n < self.meta["ann_threshold"]:
            return
        from lancedb.index import Bitmap, BTree, IvfHnswSq

        cluster_by = self.meta.get("cluster_by", DEFAULT_CLUSTER_BY)
        if cluster_by:
            cluster_table(self._db, self._table, cluster_by, cleanup=cleanup)

        graph = IvfHnswSq(distance_type="dot", num_partitions=1, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        self._table.create_index("image_vec", config=graph, replace=True)
        for column in FILTER_COLUMNS:  # ids: a B-tree (unique values); the rest: few values, a bitmap
            self._table.create_index(column, config=BTree() if column in ("product_id", "item_id") else Bitmap())

    # -- queries -------------------------------------------------------------------------------------------
    def query_vector(self, text=None, image=None, modification=None) -> np.ndarray:
        """The query embedding: a text (text-to-image), an image (look-alikes), or an image and a modification
        ("this one, but in red": the normalised sum of their embeddings, the zero-shot composition)."""
        from .search import open_image

        text = (text or "").strip()
        modification = (modification or "").strip()
        if image is None:
            if modification:
                raise ValueError("a modification ('in red') needs the image it modifies")
            if not text:
                raise ValueError("give a text, an image, or an image and a modification to search for")
            return self.encoder.texts([text])[0]
        vec = self.encoder.images([open_image(image)])[0]
        extra = " ".join(t for t in (text, modification) if t)
        if extra:
            vec = vec + self.encoder.texts([extra])[0]
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return vec

    def search(
        self, text=None, image=None, modification=None, filters=None, k: int = 10, group_by_product: bool = True
    ) -> list[dict]:
        """The `k` best items (or products, with `group_by_product`: each product's best image) for a query, among
        the items that match `filters` ({column: value or list of values}, e.g. {"gender": "Women"}). Each hit is a
        dict with `item_id`, `product_id`, `score` (cosine), `text`, `image_ref` and the catalogue's metadata."""
        return self.search_vector(self.query_vector(text, image, modification), filters, k, group_by_product)

    def search_vector(
        self, vec, filters=None, k: int = 10, group_by_product: bool = True, column: str = "image_vec"
    ) -> list[dict]:
        """`search` for a query embedding already computed (unit norm, the model's embedding size). `column`:
        `image_vec` (the items' photos) or `text_vec` (their texts: which catalogue texts describe a photo)."""
        if column not in ("image_vec", "text_vec"):
            raise ValueError(f"column must be 'image_vec' or 'text_vec' (got {column!r})")
        if k < 1:
            raise ValueError(f"k must be >= 1 (got {k})")
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (self.meta["dim"],):
            raise ValueError(f"a query vector of {self.meta['dim']} values is needed (got shape {vec.shape})")
        where = filter_sql(filters)
        limit = k * 4 if group_by_product else k
        # only the image vectors get an approximate index (`optimize`); text vectors are searched exactly
        indexed = column == "image_vec" and len(self) >= self.meta["ann_threshold"]
        approximate = indexed
        if approximate and where and self._table.count_rows(where) <= EXACT_FILTERED_ROWS:
            # A selective filter: exact search among its rows cannot miss, and is the faster there (1M rows, 1%
            # selectivity: 14.6 ms at recall 1.0; the prefiltered graph 17.5 ms at 0.976; an IVF index lost matches).
            approximate = False
        while True:
            query = self._table.search(vec, vector_column_name=column).distance_type("dot")
            if where:
                query = query.where(where, prefilter=True)
            if approximate:
                query = query.nprobes(1).ef(max(HNSW_EF, limit))
            elif indexed:
                query = query.bypass_vector_index()
            hits = query.limit(limit).select([*STRING_COLUMNS, "image_ref", "_distance"]).to_list()
            out, seen = [], set()
            for h in hits:
                if group_by_product and h["product_id"] in seen:
                    continue
                seen.add(h["product_id"])
                h = {c: h[c] for c in (*STRING_COLUMNS, "image_ref")} | {"score": 1.0 - float(h["_distance"])}
                out.append(h)
            # Grouped: several images of one product can fill the first `limit` hits; fetch more until k products
            # or every match is seen.
            if len(out) >= k or len(hits) < limit:
                return out[:k]
            limit *= 4


def _has_index(db) -> bool:
    listed = db.list_tables()
    names = set(getattr(listed, "tables", listed))
    return TABLE in names and META_TABLE in names


def _schema(dim: int):
    import pyarrow as pa

    fields = [pa.field(c, pa.string()) for c in (*STRING_COLUMNS, "content_hash", "image_ref")]
    fields += [pa.field(n, pa.list_(pa.float32(), dim)) for n in ("image_vec", "text_vec")]
    return pa.schema(fields)


def _to_arrow(rows: list[dict]):
    """Rows as an Arrow table whose vectors are fixed-size lists (what LanceDB searches)."""
    import pyarrow as pa

    dim = len(rows[0]["image_vec"])
    columns = {c: pa.array([r[c] for r in rows], pa.string()) for c in (*STRING_COLUMNS, "content_hash", "image_ref")}
    for name in ("image_vec", "text_vec"):
        vecs = np.stack([r[name] for r in rows]).astype(np.float32)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1])
    return pa.table(columns, schema=_schema(dim))


def catalog_rows(dataset) -> Iterable[dict]:
    """Catalogue rows as dicts with `content_hash` and `image_ref`, images left encoded (decoded only to embed).
    `dataset`: a `datasets.Dataset` / `IterableDataset` in the catalogue schema, a list of row dicts, or a data-layer
    source string."""
    import datasets

    if isinstance(dataset, str):
        from .data import load_catalog

        dataset = load_catalog(dataset, skip_bad=True)
    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)) and dataset.features is not None:
        feature = dataset.features.get("image")
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
    for row in dataset:
        item = {c: str(row.get(c) or "") for c in STRING_COLUMNS}
        if not item["item_id"]:
            raise ValueError(f"catalogue row without item_id (product {item['product_id']!r}): every item needs one")
        image = row.get("image")
        item["image"] = image
        item["image_ref"] = str(image.get("path") or "") if isinstance(image, dict) else ""
        item["content_hash"] = content_hash(image, item["text"])
        yield item
