"""Product search over a catalogue with any of the package's dual encoders: the engine behind the Gradio demo.

`CatalogSearch` loads a model folder or Hub id (remote code is fine), embeds a catalogue once (cached on disk, keyed
by the model's weights and the catalogue's fingerprint), and answers text -> products, image -> products / texts,
reference image + modification text -> products (with the folder's fine-tuned TGIR head when it has one), zero-shot
attributes, captions (with a captioner, else the closest catalogue text, labelled as such) and, for E2, the patches
each selection token picked. Product searches go through a `CatalogIndex` (module `catalog_index`, re-exported
here: a LanceDB table with metadata filters, product grouping, upserts and deletions) written beside the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError

from .catalog_index import (
    CatalogIndex,  # noqa: F401  (re-exported: syncmask_hf.search.CatalogIndex)
    FeatureEncoder,
    image_token,
)
from .data.schema import STRING_COLUMNS
from .models import image_loading as _image_loading

logger = logging.getLogger(__name__)

# Uploads larger than this (in pixels) are refused before decoding: a decompression bomb must not take the server
# (the loader's own cap; a large JPEG is decoded reduced, `image_loading.DECODE_SIDE`).
MAX_UPLOAD_PIXELS = _image_loading.MAX_IMAGE_PIXELS
# Longest side of the thumbnails the demo serves (the only files it serves).
THUMBNAIL_SIDE = 512
# Rows embedded between two writes of the partial cache (what an interrupted indexing run can lose at most).
INDEX_CHUNK = 1024
ATTRIBUTES = ("category", "subcategory", "color", "season", "brand", "gender")


class BadImageError(ValueError):
    """An upload that is not a usable image; the message says what to do."""


def open_image(source, name: str = "the upload") -> Image.Image:
    """Decode an upload (path, bytes, file object, numpy array or PIL image) to RGB with the package's one image
    loader (`load_image`: EXIF orientation, 16-bit and float images, transparency on white, as in training), after
    refusing empty files and images over `MAX_UPLOAD_PIXELS` before decoding. Raises `BadImageError` saying what
    to do."""
    from .models.image_loading import FashionInputError, load_image

    if source is None:
        raise BadImageError(f"No image given for {name}: upload a JPEG or PNG photo.")
    if hasattr(source, "read"):
        source = source.read()
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        empty = os.path.getsize(source) == 0 if isinstance(source, (str, os.PathLike)) else not source
        if empty:
            raise BadImageError(f"{name} is an empty file: upload a JPEG or PNG photo.")
        try:  # the header alone: a decompression bomb is refused before its pixels are decoded
            with Image.open(source if isinstance(source, (str, os.PathLike)) else io.BytesIO(source)) as header:
                _check_pixels(header.size, name)
        except BadImageError:
            raise
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise BadImageError(
                f"{name} is not an image this demo can read ({_scrub(err, source, name)}): upload a JPEG or PNG photo."
            ) from None
    try:
        image = load_image(source)
    except FashionInputError as err:
        reason = _scrub(err.__cause__ or err, source, name)
        raise BadImageError(
            f"{name} is not an image this demo can read ({reason}): upload a JPEG or PNG photo."
        ) from None
    _check_pixels(image.size, name)
    return image


def _scrub(err: Exception, source, name: str) -> str:
    """An error's text without the server's file paths (an upload's temporary path says where uploads live)."""
    text = str(err)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        for part in (path, os.path.dirname(path)):
            if part:
                text = text.replace(part, name)
    return text


def _check_pixels(size: tuple[int, int], name: str) -> None:
    if size[0] * size[1] > MAX_UPLOAD_PIXELS:
        raise BadImageError(
            f"{name} is {size[0]}x{size[1]} pixels, more than the {MAX_UPLOAD_PIXELS:,} this demo accepts: resize it "
            "to a few megapixels and try again."
        )


_CACHE_KEYS = ("image", "image_rows", "text", "skipped_rows", "skipped_items", "skipped_reasons")


def _load_part(path: Path) -> dict[str, np.ndarray] | None:
    """A cached .npz with every expected array, or None (missing, truncated or of another format: rebuild it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {name: data[name] for name in _CACHE_KEYS}
    except Exception as err:  # noqa: BLE001  (zip, zlib, format and key errors: all mean "rebuild")
        logger.warning("ignoring unreadable cache file %s (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None
    return part


def _load_cache(path: Path, num_rows: int) -> dict[str, np.ndarray] | None:
    data = _load_part(path)
    if data is None:
        return None
    image, rows, text = data["image"], data["image_rows"], data["text"]
    fits = (
        image.ndim == 2
        and text.ndim == 2
        and len(text) == num_rows
        and len(image) == len(rows)
        and image.shape[1] == text.shape[1]
        and len(rows) + len(data["skipped_rows"]) == num_rows
    )
    if not fits:
        logger.warning(
            "ignoring cache file %s: its shapes do not fit this catalogue of %d rows; rebuilding", path, num_rows
        )
        return None
    return data


@dataclass
class Hit:
    index: int
    score: float
    text: str
    product_id: str
    item_id: str = ""

    def caption(self) -> str:
        return f"{self.score:.3f} · {self.product_id} · {self.text[:120]}"


def _fingerprint(model_path: str, catalog_key: str, revision: str | None = None) -> str:
    """Cache key of a gallery: the catalogue (its source and content, see `CatalogSearch`), and the model: for a
    folder its weights, config and processor files (size + mtime), for a Hub id the commit it resolved to, so a new
    push or a retrained folder is re-indexed."""
    h = hashlib.sha256(catalog_key.encode())
    folder = Path(model_path)
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(f"{model_path}@{revision or ''}".encode())
    return h.hexdigest()[:16]


def _catalog_digest(texts: list[str], product_ids: list[str], images) -> str:
    """Digest of what the gallery shows (texts, products and images, in order): an edited catalogue, or one whose
    photos were replaced, is re-indexed. Images are hashed by their encoded bytes, or for files by path, size and
    modification time (no decoding)."""
    h = hashlib.sha256()
    for text, product in zip(texts, product_ids):
        h.update(f"{product}\x1f{text}\x1e".encode())
    for image in images:
        h.update(image_token(image))
    return h.hexdigest()[:16]


def _undecoded(catalog):
    """The catalogue with its `datasets.Image` column left encoded ({"bytes", "path"} dicts): fingerprinting needs no
    decoding, and one missing or corrupt file fails only its own row, when that row is read."""
    import datasets

    feature = catalog.features.get("image") if hasattr(catalog, "features") else None
    if isinstance(feature, datasets.Image) and feature.decode:
        return catalog.cast_column("image", datasets.Image(decode=False))
    return catalog


def _images_in_batches(catalog, size: int = 1024):
    for start in range(0, len(catalog), size):
        yield from catalog[start : start + size]["image"]


class CatalogSearch:
    """Embeds a catalogue with a model once and searches it.

    Args:
        model: a model folder or Hub id (any model of this package, loaded with the package's classes).
        catalog: a `datasets.Dataset` in the catalogue schema, or a data-layer source string (`"synthetic:2000"`, `"hm:PATH"`).
        cache_dir: where the gallery embeddings are cached (default `~/.cache/syncmask_hf/search`).
        captioner: an optional captioning model folder (the package's DeCap-style captioner).
        trust_remote_code: let a folder of another `model_type` run its own Python code (off: such a folder is
            refused, naming it).
        index_uri: where the product index (`CatalogIndex`, LanceDB) lives (default: `<cache_dir>/<key>.lance`); it
            is written from the cached embeddings (nothing embedded twice) and rewritten when the catalogue or the
            model changes.
        onnx: a folder `examples/export_onnx.py` wrote from `model`: the catalogue and the queries are embedded by
            ONNX Runtime from its files (`onnx_precision` "fp32" or "int8"); the PyTorch model still serves what
            the export does not hold (E2's patch overlay, the fine-tuned text-guided head, the captioner).

    An imperfect catalogue is indexed anyway: rows the loader cannot use (`load_report`, for a source string) and
    images that do not decode (`skipped`: (row, item_id, reason)) are skipped, counted and logged; their texts stay
    searchable. Embeddings are cached chunk by chunk, so an interrupted indexing run resumes where it stopped.
    """

    def __init__(
        self,
        model,
        catalog,
        *,
        cache_dir=None,
        captioner=None,
        device="cpu",
        batch_size=64,
        max_items=None,
        trust_remote_code=False,
        index_uri=None,
        onnx=None,
        onnx_precision="fp32",
    ):
        from transformers import AutoModel

        from .specs import load_pretrained

        self.device = torch.device(device)
        self.model_path = str(model)
        remote = {"trust_remote_code": trust_remote_code}
        torch_encoder = FeatureEncoder(self.model_path, device, trust_remote_code)
        self.model, self.processor = torch_encoder.model, torch_encoder.processor
        self.encoder = torch_encoder
        if onnx is not None:
            from .serving import OnnxFeatureEncoder

            self.encoder = OnnxFeatureEncoder(onnx, onnx_precision)
        self.load_report = None
        if isinstance(catalog, str):
            from .data import load_catalog

            # a missing image file or an unreadable row is skipped and counted, never a failed start-up
            catalog_key = catalog
            catalog, self.load_report = load_catalog(catalog, skip_bad=True, return_report=True)
        else:
            catalog_key = getattr(catalog, "_fingerprint", None) or str(len(catalog))
        if max_items is not None:
            catalog = catalog.select(range(min(max_items, len(catalog))))
            catalog_key += f"[:{max_items}]"
        self.catalog = catalog
        self.texts = list(catalog["text"])
        self.product_ids = list(catalog["product_id"])
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "syncmask_hf" / "search")
        self.batch_size = batch_size
        if len(catalog) == 0:
            raise ValueError("the catalogue is empty: nothing to search")
        self._encoded = _undecoded(catalog)
        digest = _catalog_digest(self.texts, self.product_ids, _images_in_batches(self._encoded))
        self._build_index(f"{catalog_key}#{len(catalog)}:{digest}", index_uri)
        self.tgir_head, self._tgir = self._load_tgir_head(trust_remote_code)
        self.captioner = None
        if captioner:
            self.captioner = load_pretrained(AutoModel, captioner, **remote).to(self.device).eval()
        self._attribute_cache: dict[str, tuple[list[str], torch.Tensor]] = {}

    # -- encoding ------------------------------------------------------------------------------------------
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encoder.image_features(images)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.text_features(texts)

    def _build_index(self, catalog_key: str, index_uri=None) -> None:
        """Embed the catalogue (or load its cached embeddings), write the product index and the FAISS index of the
        texts. Unreadable images are skipped and counted (`self.skipped`: (row, item_id, reason)); their texts stay
        searchable. Embeddings are written chunk by chunk, so a killed or failed indexing run resumes where it
        stopped."""
        from .evaluation import EmbeddingIndex

        commit = getattr(self.model.config, "_commit_hash", None)
        # ONNX Runtime's features (int8's above all) are not PyTorch's: their cache and index are their own
        encoder = "" if self.encoder.key == "torch" else f"|{self.encoder.key}"
        key = _fingerprint(self.model_path + encoder, catalog_key, commit)
        # Thumbnails live apart from the embeddings: the demo serves this folder and nothing else of the cache.
        self.thumbnail_root = self.cache_dir / "thumbnails"
        self.image_dir = self.thumbnail_root / key
        cache = self.cache_dir / f"{key}.npz"
        data = _load_cache(cache, len(self.catalog))
        if data is None:
            data = self._embed_catalog(self.cache_dir / f"{key}-partial")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **data)
            os.replace(tmp, cache)  # atomic: a killed indexing run never leaves a truncated cache
            (self.cache_dir / f"{key}.json").write_text(json.dumps({"model": self.model_path, "catalog": catalog_key}))
            import shutil

            shutil.rmtree(self.cache_dir / f"{key}-partial", ignore_errors=True)
        else:
            logger.info("loaded cached gallery embeddings from %s", cache)
        self.skipped = [
            (int(i), str(item), str(reason))
            for i, item, reason in zip(data["skipped_rows"], data["skipped_items"], data["skipped_reasons"])
        ]
        first = "; ".join(reason for _, _, reason in self.skipped[:3])
        if self.skipped:
            logger.warning(
                "%d of %d catalogue images could not be read and are left out of image search (first: %s)",
                len(self.skipped),
                len(self.catalog),
                first,
            )
        if len(data["image_rows"]) == 0:
            raise ValueError(f"none of the {len(self.catalog)} catalogue images could be read: {first}")
        self.image_rows = data["image_rows"]
        self.image_embeds = torch.from_numpy(data["image"])
        self.text_embeds = torch.from_numpy(data["text"])
        # image -> texts covers every catalogue text, those whose photo failed included (not in the product index)
        self.text_index = EmbeddingIndex.from_embeddings(data["text"], index_type="auto")
        self.index = self._product_index(Path(index_uri) if index_uri else self.cache_dir / f"{key}.lance", key)

    def _product_index(self, uri, key: str) -> CatalogIndex:
        """The `CatalogIndex` of the items with a readable photo, written once from the embeddings just computed or
        loaded, and reopened while the catalogue and the model are unchanged (`key` in its metadata)."""
        from .catalog_index import _has_index, _lancedb, _to_arrow

        ids = [str(i) for i in (self.catalog["item_id"] if "item_id" in self.catalog.column_names else [])]
        if len(ids) != len(self.catalog) or "" in ids or len(set(ids)) != len(ids):
            # The index is keyed by item id; a catalogue without unique ids gets its row numbers instead.
            logger.warning("catalogue item ids are missing or repeated: the product index uses row numbers")
            ids = [f"row{i}" for i in range(len(self.catalog))]
        self.item_ids = ids
        self._row_of_item = {item: row for row, item in enumerate(ids)}
        if _has_index(_lancedb().connect(str(uri))):
            index = CatalogIndex.open(uri)
            if index.meta.get("search_key") == key and index.meta["model_path"] == self.model_path:
                index._encoder = self.encoder
                return index
        index = CatalogIndex.create(
            self.model_path, uri, dim=int(self.image_embeds.shape[1]), overwrite=True, encoder=self.encoder,
            extra_meta={"search_key": key},
        )  # fmt: skip
        columns = [c for c in STRING_COLUMNS if c in self.catalog.column_names]
        for start in range(0, len(self.image_rows), INDEX_CHUNK):
            rows_here = [int(r) for r in self.image_rows[start : start + INDEX_CHUNK]]
            meta = self._encoded.select(rows_here).select_columns(columns).to_list()
            image_vecs = self.image_embeds[start : start + len(rows_here)].numpy()
            text_vecs = self.text_embeds[rows_here].numpy()
            rows = [
                {c: str(values.get(c) or "") for c in STRING_COLUMNS}
                | {"item_id": ids[row], "content_hash": key, "image_ref": "", "image_vec": iv, "text_vec": tv}
                for row, values, iv, tv in zip(rows_here, meta, image_vecs, text_vecs)
            ]
            index.ingest(_to_arrow(rows))
        index.optimize(cleanup=True)  # written anew: nothing else reads its older versions
        return index

    def _load_tgir_head(self, trust_remote_code: bool):
        """The text-guided head fine-tuned into the model folder by `examples/finetune_tgir.py`, if any: the
        combiner (`tgir_combiner.safetensors`, over this model) or SyncMask's fusion head (a folder saved as
        `SyncMaskForTextGuidedImageRetrieval`). Both match their queries against the same normalised image
        features the index holds. (None, None) without one: queries are then the zero-shot image + text sum."""
        from .tgir import COMBINER_CONFIG, COMBINER_WEIGHTS, ComposedQueryModel, TGIRAdapter, load_tgir_model

        folder = _model_files(self.model_path, (COMBINER_CONFIG, COMBINER_WEIGHTS))
        if folder is not None:
            return "combiner", TGIRAdapter(ComposedQueryModel.from_folder(self.model, folder).eval())
        if "SyncMaskForTextGuidedImageRetrieval" in (getattr(self.model.config, "architectures", None) or []):
            head, _, _ = load_tgir_model(self.model_path, "fusion", trust_remote_code)
            return "fusion", TGIRAdapter(head.to(self.device).eval())
        return None, None

    def _embed_catalog(self, partial: Path) -> dict[str, np.ndarray]:
        from tqdm.auto import tqdm

        parts, n, chunk = [], len(self.catalog), INDEX_CHUNK
        bar = tqdm(total=n, desc="indexing catalogue")
        for start in range(0, n, chunk):
            path = partial / f"{start:010d}.npz"
            part = _load_part(path)
            if part is None:
                part = self._embed_rows(start, min(start + chunk, n))
                partial.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, **part)
                os.replace(tmp, path)
            parts.append(part)
            bar.update(min(chunk, n - start))
        bar.close()
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _embed_rows(self, start: int, end: int) -> dict[str, np.ndarray]:
        from .models.image_loading import FashionInputError, load_image

        rows = self._encoded[start:end]
        item_ids = rows.get("item_id") or [""] * (end - start)
        images, kept, skipped = [], [], []
        for offset, (image, item_id) in enumerate(zip(rows["image"], item_ids)):
            try:
                images.append(load_image(image, item_id=item_id))
                kept.append(start + offset)
            except FashionInputError as err:
                skipped.append((start + offset, str(item_id), f"catalogue row {start + offset}: {err}"))
        image_chunks = [
            self.encode_images(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)
        ]
        texts = rows["text"]
        text_chunks = [
            self.encode_texts(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        dim = text_chunks[0].shape[1]
        return {
            "image": torch.cat(image_chunks).numpy() if image_chunks else np.zeros((0, dim), np.float32),
            "image_rows": np.asarray(kept, dtype=np.int64),
            "text": torch.cat(text_chunks).numpy(),
            "skipped_rows": np.asarray([r for r, _, _ in skipped], dtype=np.int64),
            "skipped_items": np.asarray([i for _, i, _ in skipped], dtype=str),
            "skipped_reasons": np.asarray([m for _, _, m in skipped], dtype=str),
        }

    # -- queries -------------------------------------------------------------------------------------------
    def _products(self, query: torch.Tensor, k: int, filters=None, group_by_product: bool = True) -> list[Hit]:
        """The product index's `k` best items for a query embedding, among those matching `filters` ({column:
        value or values}; empty values ignored), one per product with `group_by_product`."""
        filters = {c: v for c, v in (filters or {}).items() if v not in (None, "", [], ())}
        found = self.index.search_vector(query.numpy().astype(np.float32), filters, k, group_by_product)
        return [
            Hit(self._row_of_item[h["item_id"]], h["score"], h["text"], h["product_id"], h["item_id"]) for h in found
        ]

    def _hits(self, index, query: torch.Tensor, k: int) -> list[Hit]:
        scores, ids = index.search(query.numpy().reshape(1, -1), min(k, len(index)))
        return [
            Hit(int(i), float(s), self.texts[int(i)], self.product_ids[int(i)])
            for s, i in zip(scores[0], ids[0])
            if i >= 0
        ]

    def search_text(self, query: str, k: int = 12, filters=None, group_by_product: bool = True) -> list[Hit]:
        """Products whose photos match a description, among those matching `filters` (e.g. {"gender": "women"})."""
        query = (query or "").strip()
        if not query:
            raise ValueError("Type a description to search for, e.g. 'red striped dress'.")
        return self._products(self.encode_texts([query])[0], k, filters, group_by_product)

    def search_image(
        self, image, k: int = 12, filters=None, group_by_product: bool = True
    ) -> tuple[list[Hit], list[Hit]]:
        """Products whose photos look alike (filtered, grouped), and the catalogue texts that describe it best."""
        emb = self.encode_images([open_image(image)])[0]
        products = self._products(emb, k, filters, group_by_product)
        return products, _unique_texts(self._hits(self.text_index, emb, 4 * k), k)

    def modified_query(self, image, modification: str) -> torch.Tensor:
        """The query embedding of 'this one, but in red': the folder's fine-tuned TGIR head when it has one
        (`tgir_head`), else the normalised sum of the image's and the text's embeddings (the zero-shot composition
        E2 and CLIP-based TGIR use)."""
        modification = (modification or "").strip()
        if not modification:
            raise ValueError("Describe the change you want, e.g. 'in red' or 'with long sleeves'.")
        picture = open_image(image, "the reference image")
        if self._tgir is None:
            return F.normalize(self.encode_images([picture])[0] + self.encode_texts([modification])[0], dim=-1)
        pixels = self.processor(images=[picture], return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.processor(text=[modification], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            query = self._tgir.query(
                pixels, tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            )
        return query[0].float().cpu()

    def search_modified(
        self, image, modification: str, k: int = 12, filters=None, group_by_product: bool = True
    ) -> list[Hit]:
        """Text-guided retrieval: 'this one, but in red' (`modified_query`), filtered and grouped."""
        return self._products(self.modified_query(image, modification), k, filters, group_by_product)

    def filter_values(self, columns=("gender", "category", "color", "brand")) -> dict[str, list[str]]:
        """The catalogue's values of each filter column (the demo's choices)."""
        return {c: sorted({str(v) for v in self.catalog[c] if v}) for c in columns if c in self.catalog.column_names}

    def attribute_scores(self, image, top: int = 3) -> dict[str, dict[str, float]]:
        """Zero-shot attributes: each attribute's catalogue values scored against the image (softmax over the
        values); the `top` most likely values of each, with their probabilities."""
        emb = self.encode_images([open_image(image)])[0]
        # The model's own contrastive scale (CLIP's `logit_scale`, which all three models keep); 100 without one.
        scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0
        out = {}
        for attribute in ATTRIBUTES:
            if attribute not in self.catalog.column_names:
                continue
            if attribute not in self._attribute_cache:
                values = self.filter_values((attribute,))[attribute]
                if len(values) < 2:
                    continue
                self._attribute_cache[attribute] = (values, self.encode_texts(values))
            values, embeds = self._attribute_cache[attribute]
            probs = torch.softmax(min(scale, 100.0) * embeds @ emb, dim=0)
            best = probs.topk(min(top, len(values)))
            out[attribute] = {values[int(i)]: float(p) for p, i in zip(best.values, best.indices)}
        return out

    def attributes(self, image) -> dict[str, tuple[str, float]]:
        """The most likely value of each attribute and its probability (`attribute_scores`)."""
        return {name: next(iter(scores.items())) for name, scores in self.attribute_scores(image, top=1).items()}

    def caption(self, image, max_new_tokens: int = 40, num_beams: int = 3) -> str:
        emb = self.encode_images([open_image(image)])
        if self.captioner is None:
            hit = self._hits(self.text_index, emb[0], 1)[0]
            return f"(closest catalogue text) {hit.text}"
        return self.captioner.caption(
            emb.to(self.device), self.processor.tokenizer, num_beams=num_beams, max_new_tokens=max_new_tokens
        )[0]

    def selection_overlay(self, image) -> tuple[Image.Image, dict[str, list[int]]] | None:
        """For E2: the image with the patch each selection token picked (last fusion block) drawn on it, one colour
        per entity. None for models without selection tokens."""
        if not hasattr(self.model.config, "tokens_per_entity"):
            return None
        picture = open_image(image)
        inputs = self.processor(images=[picture], return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        picked = getattr(out, "selected_patches", None)
        if picked is None:  # the selection tokens or fusion blocks are switched off in this checkpoint
            return None
        box = model_view_box(picture.size, getattr(self.processor, "image_processor", None))
        return draw_selected_patches(picture, picked[0].cpu(), self.model.config, box)

    def image(self, index: int) -> Image.Image:
        return open_image(self.catalog[int(index)]["image"], f"catalogue item {index}")

    def image_path(self, index: int) -> str:
        """A JPEG thumbnail (at most `THUMBNAIL_SIDE` px a side) of catalogue item `index` in `thumbnail_root`,
        written once (atomically) and reused: servers hand out paths instead of re-encoding the same picture for
        every request (which also races under concurrent queries)."""
        path = self.image_dir / f"{int(index)}.jpg"
        if not path.is_file():
            self.image_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            picture = self.image(index)
            picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            picture.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        return str(path)


def _model_files(model_path: str, names) -> Path | None:
    """The folder holding all of `names` beside a model: the folder itself, or for a Hub id the snapshot they are
    downloaded into; None when one is missing."""
    folder = Path(model_path)
    if folder.is_dir():
        return folder if all((folder / n).is_file() for n in names) else None
    try:
        from huggingface_hub import hf_hub_download

        paths = [Path(hf_hub_download(model_path, n)) for n in names]
    except Exception:  # noqa: BLE001  (not on the Hub, no such file, offline: no head)
        return None
    return paths[0].parent


def _unique_texts(hits: list[Hit], k: int) -> list[Hit]:
    seen, out = set(), []
    for hit in hits:
        if hit.text not in seen:
            seen.add(hit.text)
            out.append(hit)
    return out[:k]


ENTITY_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]


def model_view_box(size: tuple[int, int], image_processor) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the part of an image of `size` (width, height) that the model sees after the
    image processor's resize and centre crop, in the image's own pixels (the whole image without a crop)."""
    width, height = size
    if image_processor is None or not getattr(image_processor, "do_center_crop", False):
        return 0.0, 0.0, float(width), float(height)
    target = dict(getattr(image_processor, "size", None) or {})
    if getattr(image_processor, "do_resize", True) and "shortest_edge" in target:
        scale_x = scale_y = target["shortest_edge"] / min(width, height)
    elif getattr(image_processor, "do_resize", True) and {"height", "width"} <= set(target):
        scale_x, scale_y = target["width"] / width, target["height"] / height
    else:
        scale_x = scale_y = 1.0
    crop = dict(getattr(image_processor, "crop_size", None) or {})
    crop_w = min(crop.get("width", width * scale_x), width * scale_x)
    crop_h = min(crop.get("height", height * scale_y), height * scale_y)
    left = (width * scale_x - crop_w) / 2 / scale_x
    top = (height * scale_y - crop_h) / 2 / scale_y
    return left, top, crop_w / scale_x, crop_h / scale_y


def colour_key(config) -> dict[str, str]:
    """The colour each entity's selection tokens are drawn in (`draw_selected_patches`)."""
    return {entity: ENTITY_COLOURS[i % len(ENTITY_COLOURS)] for i, entity in enumerate(config.entities)}


def draw_selected_patches(
    picture: Image.Image, picked: torch.Tensor, config, box: tuple[float, float, float, float] | None = None
) -> tuple[Image.Image, dict[str, list[int]]]:
    """Draw each selection token's picked patch (last fusion block) as a box coloured by entity. `box` is the region
    of `picture` the model saw (`model_view_box`; default the whole picture), over which the patch grid lies."""
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    entities = list(config.entities)
    per_entity = int(config.tokens_per_entity)
    shown = picture.copy()
    draw = ImageDraw.Draw(shown)
    left, top, view_w, view_h = box or (0.0, 0.0, float(shown.width), float(shown.height))
    cell_w, cell_h = view_w / grid, view_h / grid
    legend: dict[str, list[int]] = {}
    colours = colour_key(config)
    last = picked[..., -1] if picked.dim() == 2 else picked
    for token, patch in enumerate(last.tolist()):
        entity = entities[token // per_entity] if token // per_entity < len(entities) else f"token {token}"
        row, col = divmod(int(patch), grid)
        colour = colours.get(entity, ENTITY_COLOURS[(token // per_entity) % len(ENTITY_COLOURS)])
        draw.rectangle(
            [left + col * cell_w, top + row * cell_h, left + (col + 1) * cell_w - 1, top + (row + 1) * cell_h - 1],
            outline=colour,
            width=max(2, shown.width // 100),
        )
        legend.setdefault(entity, []).append(int(patch))
    return shown, legend
