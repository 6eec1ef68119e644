"""`FashionCollator`: catalogue rows -> a model batch through a `FashionProcessor`, counting (or naming) bad rows.

Application code beside the data loaders: a Hub copy of a model needs the processor (`models/processing_fashion.py`),
never the collator.
"""

from __future__ import annotations

import multiprocessing
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from ..models.image_loading import FashionInputError, _where, load_image
from ..models.processing_fashion import FashionProcessor, _check_text, normalize_text, stable_id


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
