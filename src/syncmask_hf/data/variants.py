"""Colour-variant triplets for text-guided image retrieval ("the same garment, in red") from a catalogue.

H&M articles that share a ``product_code`` (our ``product_id``) are one garment in several colours, so every pair of
differently coloured articles of a product is a real (reference image, modification text, target image) triple
whose modification text can be written from the target's ``color`` column -- a TGIR benchmark built from catalogue
data, with no relative captions to annotate.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import datasets

__all__ = ["COLOUR_TRIPLET_FEATURES", "colour_phrase", "colour_variant_triplets"]

logger = logging.getLogger(__name__)

COLOUR_TRIPLET_FEATURES = datasets.Features(
    {
        "reference_index": datasets.Value("int64"),
        "target_index": datasets.Value("int64"),
        "reference_item_id": datasets.Value("string"),
        "target_item_id": datasets.Value("string"),
        "group": datasets.Value("string"),
        "reference_color": datasets.Value("string"),
        "target_color": datasets.Value("string"),
        "caption": datasets.Value("string"),
    }
)

#: Leading words of catalogue colour names that carry no colour ("Other Pink" -> "pink").
_NOISE_PREFIXES = ("other ",)


def colour_phrase(color: str) -> str:
    """A catalogue colour name as it reads in a modification text: lower case, H&M's "Other ..." prefix dropped
    ("Other Pink" -> "pink", "Dark Blue" -> "dark blue")."""
    text = " ".join(str(color or "").split()).lower()
    for prefix in _NOISE_PREFIXES:
        if text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix) :]
    return text


def colour_variant_triplets(
    ds: datasets.Dataset,
    group_by: str | Sequence[str] = "product_id",
    color_column: str = "color",
    template: str = "in {color}",
    max_per_group: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """(reference, modification text, target) triples from the colour variants of each product.

    Rows are grouped by ``group_by`` (default ``product_id``: H&M colour variants share it; a list of columns such
    as ``["subcategory", "brand", "gender"]`` gives looser "same kind of garment" groups for catalogues without
    product codes) and, within a group, by their colour (`colour_phrase` of ``color_column``). Every ordered pair of
    two different colours of a group gives one triple: the reference is the first row of the first colour, the
    target the first row of the second, and the text is ``template.format(color=<target colour>)`` ("in red").

    A colour held by several *items* of one group (e.g. two black articles of one product, striped and plain) is
    ambiguous as a target -- "in black" fits both -- so it is used only as a reference, never as a target; several
    rows of one item (views) are fine. Rows without a colour are left out. Counts are logged.

    Args:
        ds: a catalogue (`CATALOG_FEATURES` columns; only ``group_by``, ``color_column`` and ``item_id`` are read).
        max_per_group: keep at most this many triples per group (a seeded sample), so products with many colours do
            not dominate; None keeps all ``n * (n - 1)``.
        seed: seed of that sample.

    Returns:
        A `datasets.Dataset` with ``reference_index`` / ``target_index`` (rows of ``ds``), their item ids, ``group``,
        ``reference_color``, ``target_color`` and ``caption`` (the modification text).
    """
    keys = [group_by] if isinstance(group_by, str) else list(group_by)
    if not keys:
        raise ValueError("group_by needs at least one column (e.g. 'product_id').")
    if "{color}" not in template:
        raise ValueError(f"template must contain '{{color}}', got {template!r}")
    missing = [c for c in [*keys, color_column] if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"colour_variant_triplets: the dataset has no column(s) {missing} (columns: {ds.column_names}); pass "
            "group_by= / color_column= naming existing columns"
        )
    columns = {c: ds[c] for c in dict.fromkeys([*keys, color_column])}
    item_ids = ds["item_id"] if "item_id" in ds.column_names else [str(i) for i in range(len(ds))]

    # group -> colour -> (first row, set of item ids)
    groups: dict[str, dict[str, tuple[int, set]]] = {}
    no_colour = 0
    for row in range(len(ds)):
        colour = colour_phrase(columns[color_column][row])
        if not colour:
            no_colour += 1
            continue
        key = "\x1f".join(str(columns[k][row]) for k in keys)
        first, items = groups.setdefault(key, {}).setdefault(colour, (row, set()))
        items.add(str(item_ids[row]) or str(row))

    rng = random.Random(seed)
    out: dict[str, list] = {name: [] for name in COLOUR_TRIPLET_FEATURES}
    ambiguous = 0
    for key, colours in groups.items():
        if len(colours) < 2:
            continue
        triples = []
        for ref_colour, (ref_row, _) in colours.items():
            for tgt_colour, (tgt_row, tgt_items) in colours.items():
                if tgt_colour == ref_colour:
                    continue
                if len(tgt_items) > 1:
                    ambiguous += 1
                    continue
                triples.append((ref_row, tgt_row, ref_colour, tgt_colour))
        if max_per_group is not None and len(triples) > max_per_group:
            triples = rng.sample(triples, max_per_group)
        for ref_row, tgt_row, ref_colour, tgt_colour in triples:
            out["reference_index"].append(ref_row)
            out["target_index"].append(tgt_row)
            out["reference_item_id"].append(str(item_ids[ref_row]))
            out["target_item_id"].append(str(item_ids[tgt_row]))
            out["group"].append(key.replace("\x1f", " / "))
            out["reference_color"].append(ref_colour)
            out["target_color"].append(tgt_colour)
            out["caption"].append(template.format(color=tgt_colour))
    logger.info(
        "colour variants: %d triples from %d groups with 2+ colours (%d rows without colour, %d ambiguous "
        "target colours skipped)",
        len(out["caption"]),
        sum(len(c) > 1 for c in groups.values()),
        no_colour,
        ambiguous,
    )
    return datasets.Dataset.from_dict(out, features=COLOUR_TRIPLET_FEATURES)
