"""`FashionProcessor`: product records (image, text, attributes) -> model inputs (batches of catalogue rows:
`syncmask_hf.data.collator.FashionCollator`; images: `image_loading.load_image`).

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
and saves / loads like any transformers processor; this file imports only transformers, torch, numpy, PIL and its
siblings (`image_loading.py`, `modeling_utils.py`; `pretrained.py` lazily) so a Hub copy loads with `trust_remote_code=True` without the package installed.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_loading import FashionInputError, _where, load_image
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
