"""`FashionProcessor`: product records (image, text, attributes) -> model inputs, plus `FashionCollator` for batches.

One processor serves the three models of the package, following the input contract of the project:

- SyncMask / any dual encoder: `pixel_values` (B,3,H,W) and `input_ids` / `attention_mask` (B,L).
- E2: per-entity value texts `entity_input_ids` / `entity_attention_mask` (B,E,Le) and `entity_valid` (B,E), the
  entities in `self.entities` order (an empty value is an all-padding row and `entity_valid=False`).
- FashionFAE: the attribute-templated text (title + description + shuffled "the image category is dresses ."
  templates for the non-empty attributes) with `token_roles` (B,L) (0 special/pad, 1 title, 2 description,
  3 template word, 4 attribute value) and `attribute_ids` (B,L) (-1, or the index of the attribute occurrence in the
  row for value tokens, so that one whole value can be masked).
- `product_ids` / `text_ids` (B,) int64: `stable_id` hashes of the product id and of the normalised text.

The processor is built from existing transformers parts (a PIL-backend ViT/CLIP image processor and a fast tokenizer)
and saves / loads like any transformers processor; this file imports only transformers, torch, numpy and PIL (and its
sibling `pretrained.py` lazily) so a Hub copy loads with `trust_remote_code=True` without the package installed.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .modeling_utils import ROLE_DESCRIPTION, ROLE_SPECIAL, ROLE_TEMPLATE, ROLE_TITLE, ROLE_VALUE

DEFAULT_ENTITIES = ["brand", "season", "subcategory", "description"]

# FashionFAE's AETP templates (REFERENCE.md: "the image category is ...", sub category, gender, season, composition).
# `{value}` is replaced by the attribute value; the words around it get role 3, the value role 4.
DEFAULT_ATTRIBUTE_TEMPLATES = {
    "category": "the image category is {value} .",
    "subcategory": "the sub category is {value} .",
    "gender": "the gender is {value} .",
    "season": "the season is {value} .",
    "composition": "the composition is {value} .",
}

_INT63_MASK = (1 << 63) - 1


def stable_id(value: Any) -> int:
    """Stable 63-bit id of a string: blake2b (8-byte digest) of its UTF-8 bytes, big-endian, top bit cleared.

    The same definition as `syncmask_hf.data.ids.stable_id` (kept here too because this file may run as Hub remote
    code, which cannot import the data package). Non-strings are hashed as `str(value)`. Equal strings give equal ids
    in every process and Python version (unlike `hash()`), so ids can be stored and compared across runs.
    """
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _INT63_MASK


def normalize_text(text: str | None) -> str:
    """The text that `text_ids` hashes: NFKC, lower case, whitespace collapsed (so trivial variants count as equal)."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


class FashionInputError(ValueError):
    """A bad input item; the message names the item (batch index and/or item_id) and what to do about it."""

    def __init__(self, message: str, index: int | None = None, item_id: str | None = None):
        super().__init__(message)
        self.index = index
        self.item_id = item_id


def _where(index: int | None, item_id: Any = None) -> str:
    parts = []
    if item_id not in (None, ""):
        parts.append(f"item_id={item_id!r}")
    if index is not None:
        parts.append(f"batch index {index}")
    return "item " + " / ".join(parts) if parts else "item"


# ----------------------------------------------------------------------------------------------------- images
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HxW, HxWxC or CxHxW (C in 1, 2, 3, 4: L, LA, RGB, RGBA) arrays of uint8, uint16, bool, other ints or floats
    (0-1 or 0-255). The alpha channel is kept (an LA / RGBA image); `_pil_to_rgb` composites it on white."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first (torch layout)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"an image array must be HxW, HxWxC or CxHxW with C in (1, 2, 3, 4); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"the image array is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float32))
        scale = 255.0 if float(array.max()) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = array.astype(np.int64)
        if int(array.max()) > 255:  # 16-bit data stored in a wider integer type
            array = array / 257.0
        array = np.clip(array, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white (catalogue cut-outs are shot on white)."""
    image.load()  # decode now, so that truncated / corrupt files fail here, with the item named by the caller
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _array_to_pil(np.asarray(image)).convert("RGB")
    if mode == "1":
        image = image.convert("L")
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: Any, index: int | None = None, item_id: Any = None) -> Image.Image:
    """One image input -> RGB PIL image, or `FashionInputError` naming the item.

    Accepts a PIL image of any mode (RGB, L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...), a path, encoded bytes, a
    file-like object, a numpy array / torch tensor, or a `datasets.Image(decode=False)` dict {"bytes", "path"}.
    """
    where = _where(index, item_id)
    if image is None:
        raise FashionInputError(
            f"{where}: no image (None). Drop the row or pass skip_bad=True to the collator.", index, item_id
        )
    try:
        if isinstance(image, Mapping) and ("bytes" in image or "path" in image):
            if image.get("bytes"):
                image = image["bytes"]
            elif image.get("path"):
                image = image["path"]
            else:
                raise FashionInputError(f"{where}: the image dict has neither bytes nor a path.", index, item_id)
        if isinstance(image, Image.Image):
            return _pil_to_rgb(image)
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if re.match(r"^https?://", path):
                raise FashionInputError(
                    f"{where}: {path!r} is a URL; the processor does not download. Fetch the image first.",
                    index,
                    item_id,
                )
            if not os.path.isfile(path):
                raise FashionInputError(
                    f"{where}: image file {path!r} does not exist. Check the image folder / path column.",
                    index,
                    item_id,
                )
            with Image.open(path) as opened:
                return _pil_to_rgb(opened).copy()
        if isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) == 0:
                raise FashionInputError(f"{where}: the image bytes are empty.", index, item_id)
            with Image.open(io.BytesIO(bytes(image))) as opened:
                return _pil_to_rgb(opened).copy()
        if hasattr(image, "read"):
            with Image.open(image) as opened:
                return _pil_to_rgb(opened).copy()
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            # through `_pil_to_rgb`, so that an alpha channel is composited on white exactly like a PIL RGBA image
            pil = _array_to_pil(image)
            rgb = _pil_to_rgb(pil)
            return rgb.copy() if rgb is pil else rgb  # never share memory with the caller's array
    except FashionInputError:
        raise
    except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise FashionInputError(
            f"{where}: cannot decode the image ({type(error).__name__}: {error}). The file is corrupt, truncated or not "
            "an image: replace it, or pass skip_bad=True to the collator to drop such rows.",
            index,
            item_id,
        ) from error
    raise FashionInputError(
        f"{where}: {type(image).__name__} is not an image; pass a PIL image, a path, bytes or an array.",
        index,
        item_id,
    )


def _check_text(text: Any, index: int | None, item_id: Any = None) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise FashionInputError(
            f"{_where(index, item_id)}: text must be a string, got {type(text).__name__} ({text!r:.60}).",
            index,
            item_id,
        )
    return text


# ----------------------------------------------------------------------------------------------------- processor
class FashionProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for fashion product records (SyncMask, E2, FashionFAE inputs).

    Args:
        image_processor: a transformers image processor (`ViTImageProcessor` / `CLIPImageProcessor`; without
            torchvision these are the PIL-backend `ViTImageProcessorPil` / `CLIPImageProcessorPil`).
        tokenizer: a fast tokenizer (BERT WordPiece for SyncMask / FashionFAE / tiny E2, CLIP BPE for real E2).
        max_length: truncation length of the main text.
        padding: `"longest"` (pad to the batch) or `"max_length"` (fixed shapes).
        entities: E2 entity names, in the order of the entity tensors; each is a key of the attribute dicts
            (`"description"` falls back to the item's text).
        entity_max_length: truncation length of one entity value.
        return_entities: default of `__call__(return_entities=...)` (True for an E2 processor).
        text_format: default text format, `"plain"` or `"attributes"` (FashionFAE's AETP text; the baseline is
            `"plain"`).
        attribute_templates: `[name, template]` pairs (or a dict) with `{value}` in each template, in the order used
            when not shuffling. Stored as a list of pairs because processor configs are saved with sorted keys.
        shuffle_attributes: shuffle the templates per item (FashionFAE does; `False` keeps the order above).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_length: int = 64,
        padding: str = "longest",
        entities: list[str] | None = None,
        entity_max_length: int = 32,
        return_entities: bool = False,
        text_format: str = "plain",
        attribute_templates: Sequence[Sequence[str]] | Mapping[str, str] | None = None,
        shuffle_attributes: bool = True,
        **kwargs,
    ):
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if text_format not in ("plain", "attributes"):
            raise ValueError(f"text_format must be 'plain' or 'attributes', got {text_format!r}")
        templates = DEFAULT_ATTRIBUTE_TEMPLATES if attribute_templates is None else attribute_templates
        templates = [[str(name), str(template)] for name, template in dict(templates).items()]
        for name, template in templates:
            if template.count("{value}") != 1:
                raise ValueError(f"attribute template {name!r} must contain '{{value}}' once: {template!r}")
        self.max_length = int(max_length)
        self.padding = padding
        self.entities = list(DEFAULT_ENTITIES if entities is None else entities)
        self.entity_max_length = int(entity_max_length)
        self.return_entities = bool(return_entities)
        self.text_format = text_format
        self.attribute_templates = templates
        self.shuffle_attributes = bool(shuffle_attributes)
        super().__init__(image_processor, tokenizer, **kwargs)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_text_model(
        cls,
        text_name_or_path: str = "minilm",
        image_size: int = 224,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        image_processor_type: str = "vit",
        tokenizer=None,
        **processor_kwargs,
    ) -> FashionProcessor:
        """Build a processor for a model family without any download when the text model is local.

        `text_name_or_path`: a tokenizer folder or Hub id (`"minilm"` / the all-MiniLM-L6-v2 id resolve to the offline
        copy); or pass `tokenizer=` directly. `image_processor_type="vit"` squashes to `image_size` square with mean /
        std 0.5 (ViT in21k), `"clip"` resizes the short side and centre-crops with CLIP's mean / std.
        """
        from transformers import CLIPImageProcessorPil, ViTImageProcessorPil

        if tokenizer is None:
            try:
                from .pretrained import resolve_pretrained
            except ImportError:  # a Hub copy of this file without its sibling

                def resolve_pretrained(name):
                    return name

            tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(text_name_or_path))
        size = int(image_size)
        if image_processor_type == "vit":
            image_processor = ViTImageProcessorPil(
                size={"height": size, "width": size},
                image_mean=list(image_mean) if image_mean is not None else [0.5, 0.5, 0.5],
                image_std=list(image_std) if image_std is not None else [0.5, 0.5, 0.5],
            )
        elif image_processor_type == "clip":
            extra = {}
            if image_mean is not None:
                extra["image_mean"] = list(image_mean)
            if image_std is not None:
                extra["image_std"] = list(image_std)
            image_processor = CLIPImageProcessorPil(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **extra
            )
        else:
            raise ValueError(f"image_processor_type must be 'vit' or 'clip', got {image_processor_type!r}")
        return cls(image_processor=image_processor, tokenizer=tokenizer, **processor_kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values",
            "input_ids",
            "attention_mask",
            "entity_input_ids",
            "entity_attention_mask",
            "entity_valid",
            "token_roles",
            "attribute_ids",
            "word_ids",
            "product_ids",
            "text_ids",
        ]

    @property
    def unused_input_names(self) -> list[str]:
        return ["token_type_ids"]

    # ---------------------------------------------------------------- call
    def __call__(
        self,
        images=None,
        text: str | Sequence[str | None] | None = None,
        attributes: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        titles: str | Sequence[str | None] | None = None,
        product_ids: Sequence[Any] | None = None,
        text_format: str | None = None,
        return_entities: bool | None = None,
        return_text_ids: bool = False,
        seed: int | None = None,
        generator: random.Random | np.random.Generator | torch.Generator | None = None,
        max_length: int | None = None,
        padding: str | bool | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Turn a batch of products into model inputs.

        Args:
            images: one image, a list, or a stacked (B,H,W,C) / (B,C,H,W) array (any PIL mode, paths, bytes, arrays;
                see `load_image`).
            text: the item texts (for `text_format="attributes"`, the description). `None` or `""` is allowed and
                gives `[CLS] [SEP]` (just the special tokens): unknown text is common in catalogues.
            attributes: one dict per item (`brand`, `season`, `subcategory`, `category`, `gender`, `composition`,
                ...); used by the entity tensors and the attribute templates.
            titles: item titles for `text_format="attributes"` (FashionFAE); default empty.
            product_ids: product id strings -> `product_ids` (stable hashes).
            text_format: `"plain"` or `"attributes"`; default `self.text_format`.
            return_entities: add E2's entity tensors (needs `attributes`); default `self.return_entities`.
            return_text_ids: add `text_ids` (stable hash of the normalised text; for attribute text, of title +
                description, before templating).
            seed / generator: make the template shuffle deterministic (an int seed, or a `random.Random`,
                `numpy.random.Generator` or `torch.Generator` to draw from); neither: a fresh random order.
            return_tensors: `"pt"`, `"np"` or None (lists), as in transformers.
        """
        if kwargs.pop("truncation", True) is not True:
            raise ValueError("FashionProcessor always truncates (to max_length); truncation=False is not supported.")
        if kwargs:
            raise TypeError(f"FashionProcessor got unexpected arguments: {sorted(kwargs)}")
        if padding is True:
            padding = "longest"
        if padding is not None and padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest', True or 'max_length', got {padding!r}")
        text_format = self.text_format if text_format is None else text_format
        if text_format not in ("plain", "attributes"):
            raise ValueError(f"text_format must be 'plain' or 'attributes', got {text_format!r}")
        explicit_entities = return_entities is not None
        return_entities = self.return_entities if return_entities is None else return_entities
        max_length = self.max_length if max_length is None else int(max_length)
        padding = self.padding if padding is None else padding

        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)  # a stacked batch of arrays
        elif images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        if isinstance(text, str):
            text = [text]
        if isinstance(titles, str):
            titles = [titles]
        if isinstance(attributes, Mapping):
            attributes = [attributes]
        sizes = {
            name: len(value)
            for name, value in (
                ("images", images),
                ("text", text),
                ("attributes", attributes),
                ("titles", titles),
                ("product_ids", product_ids),
            )
            if value is not None
        }
        if not sizes:
            raise ValueError("FashionProcessor needs at least one of images, text, attributes.")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"inputs have different batch sizes: {sizes}")
        batch_size = next(iter(sizes.values()))

        data: dict[str, Any] = {}
        if images is not None:
            rgb = [load_image(image, index=i) for i, image in enumerate(images)]
            pixel_values = self.image_processor(rgb, return_tensors="np")["pixel_values"]
            data["pixel_values"] = np.asarray(pixel_values, dtype=np.float32)

        texts = [_check_text(t, i) for i, t in enumerate(text)] if text is not None else None
        needs_text = texts is not None or (
            text_format == "attributes" and (titles is not None or attributes is not None)
        )
        if needs_text:
            texts = texts if texts is not None else [""] * batch_size
            if text_format == "attributes":
                title_list = [_check_text(t, i) for i, t in enumerate(titles)] if titles is not None else None
                title_list = title_list if title_list is not None else [""] * batch_size
                attr_list = self._attribute_dicts(attributes, batch_size)
                rng = _make_rng(seed, generator)
                data.update(self._attribute_text(title_list, texts, attr_list, rng, max_length, padding))
                base_texts = [f"{a} {b}" for a, b in zip(title_list, texts)]
            else:
                encoded = self.tokenizer(
                    texts,
                    padding="max_length" if padding == "max_length" else "longest",
                    truncation=True,
                    max_length=max_length,
                    return_token_type_ids=False,
                )
                data["input_ids"] = encoded["input_ids"]
                data["attention_mask"] = encoded["attention_mask"]
                base_texts = texts
            if return_text_ids:
                data["text_ids"] = [stable_id(normalize_text(t)) for t in base_texts]

        if return_entities and attributes is None and texts is None:
            if explicit_entities:
                raise ValueError("return_entities=True needs `attributes` (and/or text for the description entity).")
            return_entities = False  # the processor's default, on an images-only call: nothing to build
        if return_entities:
            data.update(self._entity_tensors(self._attribute_dicts(attributes, batch_size), texts, padding))

        if product_ids is not None:
            data["product_ids"] = [stable_id(p) for p in product_ids]
        return BatchFeature(data, tensor_type=return_tensors)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _attribute_dicts(attributes, batch_size: int) -> list[Mapping[str, Any]]:
        if attributes is None:
            return [{} for _ in range(batch_size)]
        out = []
        for i, attrs in enumerate(attributes):
            if attrs is None:
                attrs = {}
            if not isinstance(attrs, Mapping):
                raise FashionInputError(
                    f"{_where(i)}: attributes must be a dict (e.g. {{'brand': ...}}), got {type(attrs).__name__}.", i
                )
            out.append(attrs)
        return out

    @staticmethod
    def _value(attrs: Mapping[str, Any], key: str) -> str:
        value = attrs.get(key)
        if value is None:
            return ""
        if isinstance(value, float) and value != value:  # NaN from pandas
            return ""
        return " ".join(str(value).split())

    def _entity_tensors(self, attributes, texts, padding: str) -> dict[str, Any]:
        """E2's per-entity value texts (B,E,Le); empty values are all-padding rows with entity_valid False."""
        batch_size, num_entities = len(attributes), len(self.entities)
        values = []
        for b, attrs in enumerate(attributes):
            row = []
            for name in self.entities:
                value = self._value(attrs, name)
                if not value and name == "description" and texts is not None:
                    value = " ".join(texts[b].split())
                row.append(value)
            values.append(row)
        flat = [(b, e, v) for b, row in enumerate(values) for e, v in enumerate(row) if v]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = (
            self.tokenizer(
                [v for _, _, v in flat],
                truncation=True,
                max_length=self.entity_max_length,
                return_token_type_ids=False,
            )["input_ids"]
            if flat
            else []
        )
        if padding == "max_length":
            length = self.entity_max_length
        else:
            length = max((len(ids) for ids in encoded), default=self.tokenizer.num_special_tokens_to_add(pair=False))
            length = max(length, 1)
        ids = np.full((batch_size, num_entities, length), pad_id, dtype=np.int64)
        mask = np.zeros((batch_size, num_entities, length), dtype=np.int64)
        valid = np.zeros((batch_size, num_entities), dtype=bool)
        for (b, e, _), tokens in zip(flat, encoded):
            ids[b, e, : len(tokens)] = tokens
            mask[b, e, : len(tokens)] = 1
            valid[b, e] = True
        return {"entity_input_ids": ids, "entity_attention_mask": mask, "entity_valid": valid}

    def _attribute_text(self, titles, descriptions, attributes, rng: random.Random, max_length: int, padding: str):
        """FashionFAE's AETP text with token roles and attribute occurrence ids (see the module docstring)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("the attribute text needs a fast tokenizer (character offsets); load one with use_fast.")
        budget = max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        rows = []  # per item: list of (segment text, role, attribute index or -1)
        for title, description, attrs in zip(titles, descriptions, attributes):
            present = [(name, self._value(attrs, name), tpl) for name, tpl in self.attribute_templates]
            present = [item for item in present if item[1]]
            if self.shuffle_attributes:
                rng.shuffle(present)
            templates = []
            for k, (_, value, template) in enumerate(present):
                before, after = template.split("{value}")
                templates.append(
                    [(before.strip(), ROLE_TEMPLATE, -1), (value, ROLE_VALUE, k), (after.strip(), ROLE_TEMPLATE, -1)]
                )
            rows.append((" ".join(title.split()), " ".join(description.split()), templates))

        # Fit the budget: whole templates first (an attribute value is never cut), then the title, then the description.
        def joined(template):
            return " ".join(segment for segment, _, _ in template if segment)

        pieces = sorted({p for t, d, tpls in rows for p in [t, d, *map(joined, tpls)] if p})
        words = {}
        if pieces:
            enc = self.tokenizer(
                pieces, add_special_tokens=False, return_offsets_mapping=True, return_token_type_ids=False
            )
            words = {p: (enc.word_ids(i), enc["offset_mapping"][i]) for i, p in enumerate(pieces)}
        texts, spans_per_row = [], []
        for title, description, templates in rows:
            left = budget
            kept = []
            for template in templates:
                n = len(words[joined(template)][0])
                if n > left:
                    break
                kept.append(template)
                left -= n
            title, n = _fit_words(title, left, words)
            description, _ = _fit_words(description, left - n, words)
            segments = [(title, ROLE_TITLE, -1), (description, ROLE_DESCRIPTION, -1)]
            segments += [segment for template in kept for segment in template]
            text, spans = "", []
            for segment, role, attr in segments:
                if not segment:
                    continue
                if text:
                    text += " "
                spans.append((len(text), len(text) + len(segment), role, attr))
                text += segment
            texts.append(text)
            spans_per_row.append(spans)

        encoded = self.tokenizer(
            texts,
            padding="max_length" if padding == "max_length" else "longest",
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=False,
        )
        roles, attribute_ids, word_ids = [], [], []
        for i, spans in enumerate(spans_per_row):
            # The tokenizer's word index per token (-1 for special / padding): AETP masks whole title words.
            word_ids.append([-1 if w is None else w for w in encoded.word_ids(i)])
            row_roles, row_attrs = [], []
            for (start, end), special, attended in zip(
                encoded["offset_mapping"][i], encoded["special_tokens_mask"][i], encoded["attention_mask"][i]
            ):
                role, attr = ROLE_SPECIAL, -1
                if not special and attended and end > start:
                    while start < end and texts[i][start].isspace():
                        start += 1
                    for s, e, span_role, span_attr in spans:
                        if s <= start < e:
                            role, attr = span_role, span_attr
                            break
                row_roles.append(role)
                row_attrs.append(attr)
            roles.append(row_roles)
            attribute_ids.append(row_attrs)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "token_roles": roles,
            "attribute_ids": attribute_ids,
            "word_ids": word_ids,
        }


def _fit_words(text: str, max_tokens: int, words: dict) -> tuple[str, int]:
    """Keep the whole words of `text` whose tokens fit in `max_tokens`; returns (kept text, its token count)."""
    if not text:
        return "", 0
    word_ids, offsets = words[text]
    if len(word_ids) <= max_tokens:
        return text, len(word_ids)
    if max_tokens <= 0:
        return "", 0
    first_dropped = word_ids[max_tokens]  # the first token that does not fit: drop its whole word
    kept = [i for i, word in enumerate(word_ids[:max_tokens]) if word != first_dropped]
    if not kept:
        return "", 0
    return text[: offsets[kept[-1]][1]].rstrip(), len(kept)


def _make_rng(seed, generator) -> random.Random:
    """A `random.Random` for the template shuffle: from a seed, or seeded from a user's generator."""
    if seed is not None:
        return random.Random(int(seed))
    if generator is None:
        return random.Random()
    if isinstance(generator, random.Random):
        return generator
    if isinstance(generator, np.random.Generator):
        return random.Random(int(generator.integers(0, 2**63 - 1)))
    if isinstance(generator, torch.Generator):
        return random.Random(int(torch.randint(0, 2**62, (1,), generator=generator).item()))
    raise TypeError(f"generator must be random.Random, numpy Generator or torch.Generator, got {type(generator)}")


# ----------------------------------------------------------------------------------------------------- collator
def split_title(text: str, max_title_words: int = 12) -> tuple[str, str]:
    """`"Title. Description"` -> `(title, description)` when the first sentence (or line) is short; else `("", text)`.

    Catalogue rows carry one `text`; the loaders write it as title, then description. FashionFAE needs them apart
    (it masks title words and description tokens differently); rows with explicit `title` / `description` columns
    bypass this.
    """
    text = text or ""
    match = re.match(r"\s*(.+?)(?:[.!?]\s+|\s*\n+\s*)(.*)\Z", text, flags=re.S)
    if match and len(match.group(1).split()) <= max_title_words:
        return match.group(1).strip(), match.group(2).strip()
    if len(text.split()) <= max_title_words and not re.search(r"[.!?]\s", text):
        return text.strip().rstrip("."), ""
    return "", text.strip()


class FashionCollator:
    """Catalogue rows (dicts with `image`, `text`, `product_id`, `item_id`, attributes) -> a model batch.

    Args:
        processor: a `FashionProcessor`.
        mode: named after the model the batch is for: `"syncmask"` (SyncMask and any dual encoder: pixel_values,
            input_ids, attention_mask, product_ids, text_ids), `"e2"` (adds the entity tensors) or `"fashionfae"`
            (attribute-templated text with token_roles and attribute_ids). The earlier names `"pairs"` and `"fae"`
            are accepted for `"syncmask"` and `"fashionfae"`.
        skip_bad: drop bad rows (missing / corrupt image, empty row, non-string text) and count them instead of
            raising. `num_skipped` is shared with DataLoader workers; `skip_reasons` / `skipped_item_ids` are kept in
            the process that collated (the main process when num_workers=0). A batch whose rows are all bad gives
            `None`: skip it in the loop. Corrupt bytes can only be caught here when the dataset does not decode them
            first: load with `dataset.cast_column("image", datasets.Image(decode=False))`.
        category_label_map / subcategory_label_map: name -> class index (or a list of names) to add
            `category_labels` / `subcategory_labels` (-100 when unknown or not in the map).
        seed: seed of the template shuffle in `"fashionfae"` mode (per batch, from the seed and its items: exact in any worker and after a resume).
        e2_text: the global text of `"e2"` mode: `"tags_and_description"` (the authors' code: the values of the
            processor's entities other than the description, then the row text) or `"description"` (the row text
            alone). The description entity is the row's `description` column, else its text, either way.
    """

    MODES = ("syncmask", "e2", "fashionfae")
    MODE_ALIASES = {"pairs": "syncmask", "fae": "fashionfae"}  # the names before the modes were named after models
    E2_TEXTS = ("tags_and_description", "description")

    def __init__(
        self,
        processor: FashionProcessor,
        mode: str = "syncmask",
        skip_bad: bool = False,
        category_label_map: Mapping[str, int] | Sequence[str] | None = None,
        subcategory_label_map: Mapping[str, int] | Sequence[str] | None = None,
        seed: int | None = None,
        return_tensors: str = "pt",
        max_logged: int = 1000,
        e2_text: str = "tags_and_description",
    ):
        mode = self.MODE_ALIASES.get(mode, mode)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if e2_text not in self.E2_TEXTS:
            raise ValueError(f"e2_text must be one of {self.E2_TEXTS}, got {e2_text!r}")
        self.e2_text = e2_text
        self.processor = processor
        self.mode = mode
        self.skip_bad = skip_bad
        self.category_label_map = self._label_map(category_label_map)
        self.subcategory_label_map = self._label_map(subcategory_label_map)
        self.seed = seed
        self.return_tensors = return_tensors
        self.max_logged = max_logged
        self.skip_reasons: Counter = Counter()
        self.skipped_item_ids: list[str] = []
        self._skipped = multiprocessing.Value("q", 0)

    @staticmethod
    def _label_map(label_map) -> dict[str, int] | None:
        if label_map is None:
            return None
        if isinstance(label_map, Mapping):
            return {str(k): int(v) for k, v in label_map.items()}
        return {str(name): i for i, name in enumerate(label_map)}

    @property
    def num_skipped(self) -> int:
        """Rows dropped so far by `skip_bad`, summed over DataLoader workers."""
        return int(self._skipped.value)

    def report(self) -> str:
        """One line for the training log: how many rows were skipped and why."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skip_reasons.most_common())
        return f"skipped {self.num_skipped} bad rows" + (f" ({reasons})" if reasons else "")

    def __getstate__(self):
        state = self.__dict__.copy()
        # A shared counter travels to DataLoader workers (process start); pickled anywhere else it becomes a snapshot.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_skipped"] = int(self._skipped.value)
        return state

    def __setstate__(self, state):
        if isinstance(state.get("_skipped"), int):
            state["_skipped"] = multiprocessing.Value("q", state["_skipped"])
        self.__dict__.update(state)

    def _shuffle_rng(self, rows) -> random.Random:
        """The template shuffle's generator for one batch, seeded by `seed` and the batch's items: the same batch
        gets the same templates in any worker and after a resume that skips the batches before it (a stream would
        depend on how many batches this process collated), and reshuffled batches of the next epoch get new ones."""
        if self.seed is None:
            return random.Random()
        keys = "|".join(str(row.get("item_id") or row.get("product_id") or "") for row in rows)
        return random.Random(stable_id(f"{self.seed}|{keys}"))

    def e2_full_text(self, attrs: Mapping[str, Any], text: str) -> str:
        """E2's global text: the tag values (the processor's entities but the description, in their order), then
        the row text, e.g. "H&M. Summer. Dresses. Sleeveless jersey dress ..."."""
        tags = [self.processor._value(attrs, name) for name in self.processor.entities if name != "description"]
        tags = [tag for tag in tags if tag]
        return ". ".join([*tags, text]) if tags else text

    def _skip(self, error: FashionInputError, reason: str):
        with self._skipped.get_lock():
            self._skipped.value += 1
        self.skip_reasons[reason] += 1
        if len(self.skipped_item_ids) < self.max_logged:
            self.skipped_item_ids.append(str(error.item_id) if error.item_id is not None else f"index {error.index}")

    def _check_row(self, index: int, row: Any) -> tuple[Image.Image, str, str]:
        if row is None or not isinstance(row, Mapping) or len(row) == 0:
            raise FashionInputError(
                f"{_where(index)}: empty or unreadable row ({type(row).__name__}); rows must be dicts with at least "
                "'image' and 'text'.",
                index,
            )
        item_id = row.get("item_id")
        if "image" not in row:
            raise FashionInputError(
                f"{_where(index, item_id)}: the row has no 'image' column (columns: {sorted(row)}).", index, item_id
            )
        image = load_image(row["image"], index=index, item_id=item_id)
        text = _check_text(row.get("text"), index, item_id)
        return image, text, "" if item_id is None else str(item_id)

    @staticmethod
    def _reason(error: FashionInputError) -> str:
        message = str(error)
        for key, reason in (
            ("empty or unreadable row", "empty row"),
            ("no 'image' column", "no image column"),
            ("no image", "missing image"),
            ("does not exist", "missing file"),
            ("cannot decode", "corrupt image"),
            ("text must be", "bad text"),
        ):
            if key in message:
                return reason
        return "bad input"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> BatchFeature | None:
        images, texts, kept = [], [], []
        for index, row in enumerate(rows):
            try:
                image, text, _ = self._check_row(index, row)
            except FashionInputError as error:
                if not self.skip_bad:
                    raise
                self._skip(error, self._reason(error))
                continue
            images.append(image)
            texts.append(text)
            kept.append(row)
        if not kept:
            return None

        product_keys = []
        for i, row in enumerate(kept):
            key = row.get("product_id") or row.get("item_id")
            product_keys.append(str(key) if key not in (None, "") else f"\x00row:{i}:{texts[i]}")
        attributes = [{k: v for k, v in row.items() if k != "image"} for row in kept]

        if self.mode == "fashionfae":
            titles, descriptions = [], []
            for row, text in zip(kept, texts):
                if "title" in row or "description" in row:
                    titles.append(row.get("title") or "")
                    descriptions.append(row.get("description") or "")
                else:
                    title, description = split_title(text)
                    titles.append(title)
                    descriptions.append(description)
            batch = self.processor(
                images=images,
                text=descriptions,
                titles=titles,
                attributes=attributes,
                product_ids=product_keys,
                text_format="attributes",
                return_entities=False,
                generator=self._shuffle_rng(kept),
                return_tensors=self.return_tensors,
            )
            # text_ids hash the row text itself, so FAE's shuffled templates do not make equal texts differ
            text_ids = [stable_id(normalize_text(t)) for t in texts]
        else:
            model_texts = texts
            if self.mode == "e2":
                for attrs, text in zip(attributes, texts):
                    attrs.setdefault("description", text)
                if self.e2_text == "tags_and_description":
                    model_texts = [self.e2_full_text(attrs, text) for attrs, text in zip(attributes, texts)]
            batch = self.processor(
                images=images,
                text=model_texts,
                attributes=attributes if self.mode == "e2" else None,
                product_ids=product_keys,
                text_format="plain",
                return_entities=self.mode == "e2",
                return_tensors=self.return_tensors,
            )
            text_ids = [stable_id(normalize_text(t)) for t in texts]
        batch["text_ids"] = torch.tensor(text_ids, dtype=torch.long) if self.return_tensors == "pt" else text_ids
        for name, label_map in (("category", self.category_label_map), ("subcategory", self.subcategory_label_map)):
            if label_map is not None:
                labels = [label_map.get(str(row.get(name) or ""), -100) for row in kept]
                batch[f"{name}_labels"] = (
                    torch.tensor(labels, dtype=torch.long) if self.return_tensors == "pt" else labels
                )
        return batch
