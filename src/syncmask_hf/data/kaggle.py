"""H&M (Kaggle "H&M Personalized Fashion Recommendations") and Myntra (Kaggle "Fashion Product Images") loaders."""

from __future__ import annotations

import csv
import os
import re

import datasets

from ._common import Utf8Lines, bad_item, check_image, clean, normalize_gender
from .schema import CATALOG_COLUMNS, CATALOG_FEATURES, BadItemError, LoadReport, empty_row

__all__ = ["load_hm", "load_myntra", "myntra_brand", "hm_gender"]


def _rows_to_dataset(rows: list[dict]) -> datasets.Dataset:
    data = {name: [r[name] for r in rows] for name in CATALOG_COLUMNS}
    return datasets.Dataset.from_dict(data, features=CATALOG_FEATURES)


def _require_columns(header: list[str], required: list[str], path: str) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise BadItemError(
            f"{path}: missing column(s) {missing}; found {header}. Is this the right file (expected the Kaggle layout)?"
        )


# ----------------------------------------------------------------------------------------------------------- H&M
#: H&M ``index_group_name`` -> gender. "Divided" is H&M's young-women line (its sections include "Ladies Denim"),
#: so it maps to women; "Sport" and "Baby/Children" are resolved from ``section_name`` (see `hm_gender`).
HM_INDEX_GROUP_GENDER = {"Ladieswear": "women", "Menswear": "men", "Divided": "women", "Baby/Children": "kids"}


def hm_gender(index_group_name: str, section_name: str = "") -> str:
    """Gender of an H&M article.

    Ladieswear -> women, Menswear -> men, Divided -> women, Baby/Children -> kids; Sport (mixed) -> from the
    section name ("Ladies H&M Sport" -> women, "Men H&M Sport" -> men, "Kids Sports" -> kids), else "".
    """
    group = (index_group_name or "").strip()
    if group in HM_INDEX_GROUP_GENDER:
        return HM_INDEX_GROUP_GENDER[group]
    section = (section_name or "").lower()
    for word, gender in (("ladies", "women"), ("women", "women"), ("men", "men"), ("kids", "kids")):
        if re.search(rf"\b{word}\b", section):
            return gender
    return ""


def load_hm(
    root: str, *, skip_bad: bool = False, verify_images: bool = False, report: LoadReport | None = None
) -> datasets.Dataset:
    """H&M articles as a catalogue: ``root/articles.csv`` + ``root/images/<first 3 digits>/<article_id>.jpg``.

    Mapping: item_id = ``article_id`` (zero-padded to 10 digits: spreadsheets drop the leading 0),
    product_id = ``product_code`` (7 digits; colour variants share it and share one text),
    text = ``prod_name`` + ". " + ``detail_desc`` (just the name when the description is empty),
    category = ``product_group_name``, subcategory = ``product_type_name``, color = ``colour_group_name``,
    gender = `hm_gender` (from ``index_group_name``/``section_name``); H&M has no brand, season or composition ("").
    H&M's literal "Unknown" values become "".

    A row with too few or too many fields, without a numeric article id, or whose image is missing (or corrupt,
    with ``verify_images=True``), raises `BadItemError` naming the line and article, or is skipped and counted
    (``bad_row`` / ``missing_image`` / ``corrupt_image``) in ``report`` with ``skip_bad=True``.
    """
    report = report if report is not None else LoadReport(f"hm:{root}")
    path = os.path.join(root, "articles.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: an H&M folder holds articles.csv and images/NNN/<article_id>.jpg")
    rows = []
    lines = Utf8Lines(path, report, skip_bad)
    reader = csv.DictReader(lines)
    header = list(reader.fieldnames or [])
    _require_columns(header, ["article_id", "product_code", "prod_name"], path)
    for rec in reader:
        line_no = lines.line_no
        report.rows_read += 1
        aid = clean(rec.get("article_id"))
        item = f"{path} line {line_no} (article_id={aid or '?'})"
        # DictReader puts surplus fields under the key None and gives missing trailing fields the value None
        if None in rec or None in rec.values():
            found = sum(v is not None for k, v in rec.items() if k is not None) + len(rec.get(None) or [])
            bad_item(
                report,
                skip_bad,
                item,
                "bad_row",
                f"malformed row: expected {len(header)} fields, found {found}; fix the quoting of that line "
                f"(a comma inside a field needs double quotes) or restore its missing fields",
            )
            continue
        if not aid.isdigit():
            bad_item(report, skip_bad, item, "bad_row", "malformed row: non-numeric article_id")
            continue
        aid = aid.zfill(10)
        img = os.path.join(root, "images", aid[:3], f"{aid}.jpg")
        problem = check_image(img, verify_images, root)
        if problem:
            bad_item(report, skip_bad, item, *problem)
            continue
        name, desc = clean(rec.get("prod_name")), clean(rec.get("detail_desc"))
        row = empty_row()
        row.update(
            image=img,
            text=f"{name}. {desc}" if desc else name,
            product_id=(clean(rec.get("product_code")) or aid[:7]).zfill(7),
            item_id=aid,
            category=clean(rec.get("product_group_name")),
            subcategory=clean(rec.get("product_type_name")),
            color=clean(rec.get("colour_group_name")),
            gender=hm_gender(rec.get("index_group_name", ""), rec.get("section_name", "")),
        )
        rows.append(row)
    report.rows_kept = len(rows)
    return _rows_to_dataset(rows)


# -------------------------------------------------------------------------------------------------------- Myntra
_GENDER_WORD = re.compile(
    r"^(men|mens|men's|women|womens|women's|woman|boys?|girls?|unisex|kids(-(boys?|girls?|unisex))?)$", re.I
)
MYNTRA_COLUMNS = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]


def myntra_brand(display_name: str, base_colour: str = "") -> str:
    """Brand = the leading words of ``productDisplayName`` before the first gender word.

    Gender words: Men, Women, Woman, Boys, Girls, Unisex, Kids(-Boys/-Girls/-Unisex), case-insensitive
    ("Turtle Check Men Navy Blue Shirt" -> "Turtle Check"). When the name holds no gender word (~2% of rows), the
    words before the base colour are used ("United Colors of Benetton Olive T-shirt" -> "United Colors of
    Benetton"), else the first word ("Proline Navy Striped Sweater" -> "Proline").
    """
    words = (display_name or "").split()
    for i, w in enumerate(words):
        if _GENDER_WORD.match(w):
            return " ".join(words[:i])
    colour = (base_colour or "").split()
    if colour:
        n = len(colour)
        for i in range(1, len(words) - n + 1):
            if [w.lower() for w in words[i : i + n]] == [c.lower() for c in colour]:
                return " ".join(words[:i])
    return words[0] if words else ""


def _read_myntra_rows(path: str, report: LoadReport, skip_bad: bool):
    """Yield ``(line_no, dict)``; rows with extra commas (unquoted commas in ``productDisplayName``, a known defect of
    the Kaggle file) are repaired by joining the surplus fields back into the name, and counted as ``repaired_row``.
    """
    lines = Utf8Lines(path, report, skip_bad)
    reader = csv.reader(lines)
    header = next(reader, None) or []
    _require_columns(header, MYNTRA_COLUMNS, path)
    n = len(header)
    last = header.index("productDisplayName")
    for fields in reader:
        line_no = lines.line_no
        if not fields:
            continue
        report.rows_read += 1
        if len(fields) > n and last == n - 1:
            fields = fields[: n - 1] + [",".join(fields[n - 1 :])]
            report.counts["repaired_row"] += 1
        if len(fields) != n:
            bad_item(
                report,
                skip_bad,
                f"{path} line {line_no} (id={fields[0] if fields else '?'})",
                "bad_row",
                f"expected {n} fields, found {len(fields)}; fix the quoting of that line",
            )
            continue
        yield line_no, dict(zip(header, fields))


def load_myntra(
    root: str, *, skip_bad: bool = False, verify_images: bool = False, report: LoadReport | None = None
) -> datasets.Dataset:
    """Myntra styles as a catalogue: ``root/styles.csv`` + ``root/images/<id>.jpg``.

    Mapping: item_id = product_id = ``id`` (one photo per style);
    category = ``subCategory`` (Topwear, Bottomwear, Shoes, Bags, Watches, ...: the level comparable to FashionGen's
    category; ``masterCategory`` -- Apparel/Footwear/Accessories -- is too coarse to be useful and is dropped),
    subcategory = ``articleType`` (Shirts, Track Pants, ...), brand = `myntra_brand`, season, color = ``baseColour``,
    gender normalised (men, women, unisex, boys, girls); composition unknown ("").
    text = ``productDisplayName`` + ". " + "<usage> wear" (+ the base colour when the name does not mention it).

    Rows with extra commas are repaired (see `_read_myntra_rows`); rows with too few fields, a non-numeric id or a
    missing (or, with ``verify_images``, corrupt) image raise `BadItemError`, or are skipped and counted.
    """
    report = report if report is not None else LoadReport(f"myntra:{root}")
    path = os.path.join(root, "styles.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a Myntra folder holds styles.csv and images/<id>.jpg")
    rows = []
    for line_no, rec in _read_myntra_rows(path, report, skip_bad):
        sid = clean(rec["id"])
        item = f"{path} line {line_no} (id={sid or '?'})"
        if not sid.isdigit():
            bad_item(report, skip_bad, item, "bad_row", "non-numeric id")
            continue
        img = os.path.join(root, "images", f"{sid}.jpg")
        problem = check_image(img, verify_images, root)
        if problem:
            bad_item(report, skip_bad, item, *problem)
            continue
        name, colour, usage = clean(rec["productDisplayName"]), clean(rec["baseColour"]), clean(rec["usage"])
        extra = []
        if usage:
            extra.append(f"{usage.lower()} wear")
        if colour and colour.lower() not in name.lower():
            extra.append(colour.lower())
        row = empty_row()
        row.update(
            image=img,
            text=f"{name}. {', '.join(extra)}." if extra else name,
            product_id=sid,
            item_id=sid,
            category=clean(rec["subCategory"]),
            subcategory=clean(rec["articleType"]),
            brand=myntra_brand(name, colour),
            season=clean(rec["season"]),
            color=colour,
            gender=normalize_gender(rec["gender"]),
        )
        rows.append(row)
    report.rows_kept = len(rows)
    return _rows_to_dataset(rows)
