"""`load_catalog`: one entry point for every catalogue source, all returning the `CATALOG_FEATURES` schema."""

from __future__ import annotations

import csv
import json
import os
import re
from urllib.parse import parse_qs

import datasets

from ._common import Utf8Lines, bad_item, check_image, clean, normalize_gender, outside_root
from .fashiongen import load_fashiongen
from .kaggle import load_hm, load_myntra
from .schema import CATALOG_COLUMNS, CATALOG_FEATURES, STRING_COLUMNS, BadItemError, LoadReport, empty_row
from .synthetic import load_synthetic

__all__ = ["KNOWN_SOURCES", "SOURCE_KWARGS", "load_catalog", "load_folder", "load_hub", "parse_synthetic_spec"]

#: source prefix -> what it expects (shown in the error for an unknown source)
KNOWN_SOURCES = {
    "hm": "hm:/path/to/folder with articles.csv and images/NNN/<article_id>.jpg",
    "myntra": "myntra:/path/to/folder with styles.csv and images/<id>.jpg",
    "fashiongen": "fashiongen:/path/to/fashiongen_256_256_<split>.h5 (or its folder + split=)",
    "folder": "folder:/path/to/imagefolder with metadata.csv or metadata.jsonl (file_name column)",
    "hub": "hub:owner/name (any datasets.load_dataset path) + columns={schema column: dataset column}",
    "synthetic": "synthetic or synthetic:N?seed=S&size=PX&views=V (procedurally drawn catalogue)",
}


def parse_synthetic_spec(spec: str) -> dict:
    """``"2000?seed=3&size=64&views=2"`` -> ``{"num_items": 2000, "seed": 3, "image_size": 64, "max_views": 2}``.

    Every part is optional (``"synthetic"`` alone gives 2,000 items, seed 0, 96 px, up to 3 views).
    """
    count, _, query = spec.partition("?")
    out = {}
    if count.strip():
        if not count.strip().isdigit():
            raise ValueError(f"synthetic:{spec}: the item count must be an integer, e.g. synthetic:2000?seed=0")
        out["num_items"] = int(count)
    names = {"seed": "seed", "size": "image_size", "image_size": "image_size", "views": "max_views"}
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as err:
        raise ValueError(
            f"synthetic:{spec}: cannot parse the options {query!r} ({err}); expected key=value pairs joined by &, "
            f"e.g. synthetic:2000?seed=0&size=96&views=3"
        ) from None
    for key, values in options.items():
        if key not in names:
            raise ValueError(f"synthetic:{spec}: unknown option {key!r}; known: seed, size, views")
        value = values[-1].strip()
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ValueError(
                f"synthetic:{spec}: option {key!r} must be an integer, got {value!r} "
                f"(e.g. synthetic:2000?seed=0&size=96&views=3)"
            )
        out[names[key]] = int(value)
    return out


#: keyword arguments each source kind accepts besides split, streaming, skip_bad, verify_images, return_report and
#: cache_dir (None: any, they are passed on to ``datasets.load_dataset``).
SOURCE_KWARGS: dict[str, tuple[str, ...] | None] = {
    "hm": (),
    "myntra": (),
    "fashiongen": ("text_field", "chunk_size", "num_proc", "png_compress_level"),
    "folder": ("columns", "allow_outside_root"),
    "hub": None,
    "synthetic": ("num_items", "seed", "image_size", "max_views"),
}


def _check_kwargs(source: str, kind: str, kwargs: dict) -> None:
    accepted = SOURCE_KWARGS[kind]
    if accepted is None:
        return
    unknown = [name for name in kwargs if name not in accepted]
    if unknown:
        raise TypeError(
            f"load_catalog({source!r}): unexpected keyword argument(s) {unknown} for a {kind!r} source; it accepts "
            f"{list(accepted) or 'no others'} besides split, streaming, skip_bad, verify_images, return_report "
            f"and cache_dir"
            + (
                "; columns= applies to folder and hub sources only (this source's mapping is fixed)"
                if "columns" in unknown
                else ""
            )
        )


def _finish(ds, report: LoadReport, return_report: bool, streaming: bool):
    report.log()
    if streaming and isinstance(ds, datasets.Dataset):
        ds = ds.to_iterable_dataset()
    return (ds, report) if return_report else ds


def load_catalog(
    source: str,
    split: str | None = None,
    *,
    streaming: bool = False,
    skip_bad: bool = False,
    verify_images: bool = False,
    return_report: bool = False,
    columns: dict[str, str] | None = None,
    cache_dir: str | None = None,
    **kwargs,
):
    """Load a fashion catalogue as a `datasets.Dataset` (``IterableDataset`` with ``streaming=True``).

    ``source`` is ``"<kind>:<location>"``, one of (see `KNOWN_SOURCES`):

    - ``"hm:/path"`` -- H&M Kaggle articles (`load_hm`), ``"myntra:/path"`` -- Myntra Kaggle styles (`load_myntra`);
    - ``"fashiongen:/path/file.h5"`` or ``"fashiongen:/dir"`` with ``split="train"|"validation"``
      (`load_fashiongen`; extra kwargs: ``text_field``, ``chunk_size``, ``num_proc``);
    - ``"folder:/path"`` -- an image folder with ``metadata.csv``/``metadata.jsonl`` (`load_folder`);
    - ``"hub:owner/name"`` -- `datasets.load_dataset` + ``columns`` mapping (`load_hub`; extra kwargs go to
      ``load_dataset``);
    - ``"synthetic"`` / ``"synthetic:N?seed=S&size=PX&views=V"`` -- the drawn catalogue (`load_synthetic`; kwargs
      ``num_items``, ``seed``, ``image_size``, ``max_views`` also accepted).

    Every result has the columns of `CATALOG_FEATURES` (strings are "" when the source does not know them).
    Bad items (missing image; corrupt image with ``verify_images=True``; unreadable row) raise `BadItemError` naming
    the item and the fix; with ``skip_bad=True`` they are skipped, counted and reported at the end (logged warning;
    the `LoadReport` is returned too with ``return_report=True``). ``skip_bad`` concerns items (H&M, Myntra, folder
    rows and images); file-level faults (a FashionGen file lacking a key, a Hub dataset lacking the text column)
    always raise. H&M/Myntra/folder catalogues are split-less: use `product_disjoint_split`.
    A keyword argument the source does not take (a typo, or ``columns`` for a source with a fixed mapping: H&M,
    Myntra, FashionGen, synthetic) raises `TypeError` naming it and those accepted (see `SOURCE_KWARGS`).

    H&M, Myntra and folder datasets reference image files by path (nothing copied; decoding happens on access, and
    an undecodable file then fails with PIL's error naming the path -- ``verify_images=True`` checks every file at
    load time instead); FashionGen and synthetic images are stored as PNG bytes.
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a string like 'hm:/path'; known kinds: {sorted(KNOWN_SOURCES)}")
    kind, _, location = source.partition(":")
    kind = kind.strip().lower()
    if kind not in KNOWN_SOURCES:
        known = "\n  ".join(KNOWN_SOURCES.values())
        raise ValueError(f"unknown catalogue source {source!r} (kind {kind!r}); known sources:\n  {known}")
    if kind != "synthetic" and not location:
        raise ValueError(f"{source!r}: missing location; expected {KNOWN_SOURCES[kind]}")
    _check_kwargs(source, kind, {**kwargs, **({"columns": columns} if columns else {})})
    report = LoadReport(source)
    if kind in ("hm", "myntra", "synthetic") and split not in (None, "train", "all"):
        raise ValueError(
            f"{source!r} has no predefined {split!r} split; load it whole and use product_disjoint_split(ds, ...)"
        )
    if kind == "hm":
        ds = load_hm(location, skip_bad=skip_bad, verify_images=verify_images, report=report)
    elif kind == "myntra":
        ds = load_myntra(location, skip_bad=skip_bad, verify_images=verify_images, report=report)
    elif kind == "fashiongen":
        ds = load_fashiongen(location, split, streaming=streaming, cache_dir=cache_dir, report=report, **kwargs)
    elif kind == "folder":
        ds = load_folder(
            location, split, columns=columns, skip_bad=skip_bad, verify_images=verify_images, report=report, **kwargs
        )
    elif kind == "hub":
        ds = load_hub(
            location,
            split,
            columns=columns,
            streaming=streaming,
            cache_dir=cache_dir,
            skip_bad=skip_bad,
            report=report,
            **kwargs,
        )
    else:
        opts = {**parse_synthetic_spec(location), **kwargs}
        ds = load_synthetic(**opts, streaming=streaming)
        report.rows_read = report.rows_kept = opts.get("num_items", 2000)
    return _finish(ds, report, return_report, streaming)


# ------------------------------------------------------------------------------------------------- image folder
def _metadata_file(folder: str) -> str | None:
    for name in ("metadata.jsonl", "metadata.csv"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _read_metadata(path: str, report: LoadReport, skip_bad: bool):
    """Yield ``(line_no, record)`` from a metadata.csv / metadata.jsonl; unreadable lines are bad items."""
    lines = Utf8Lines(path, report, skip_bad)
    if path.endswith(".jsonl"):
        for line in lines:
            line_no = lines.line_no
            if not line.strip():
                continue
            report.rows_read += 1
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                bad_item(report, skip_bad, f"{path} line {line_no}", "bad_row", f"unreadable JSON ({err})")
                continue
            yield line_no, rec
    else:
        reader = csv.DictReader(lines)
        for rec in reader:
            line_no = lines.line_no
            report.rows_read += 1
            if None in rec or None in rec.values():
                bad_item(report, skip_bad, f"{path} line {line_no}", "bad_row", "wrong number of fields")
                continue
            yield line_no, rec


def _map_record(
    rec: dict, columns: dict[str, str], source: str, class_labels: dict[str, datasets.ClassLabel] | None = None
) -> dict:
    """The schema's string columns of ``rec``; ``class_labels`` (column -> `datasets.ClassLabel`) turns integer
    codes into label names (-1, the ``datasets`` code for "no label", becomes "")."""
    row = empty_row()
    for name in STRING_COLUMNS:
        col = columns.get(name, name)
        if col in rec:
            value = rec[col]
            label = (class_labels or {}).get(col)
            if label is not None and isinstance(value, int) and not isinstance(value, bool):
                value = label.int2str(value) if 0 <= value < label.num_classes else ""
            row[name] = normalize_gender(clean(value)) if name == "gender" else clean(value)
    return row


def _check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(CATALOG_COLUMNS))
    if unknown:
        raise ValueError(
            f"columns maps schema names to source columns; unknown schema names {unknown}, "
            f"known: {list(CATALOG_COLUMNS)}"
        )
    return columns


def load_folder(
    root: str,
    split: str | None = None,
    *,
    columns: dict[str, str] | None = None,
    skip_bad: bool = False,
    verify_images: bool = False,
    report: LoadReport | None = None,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """An image folder in the `datasets` imagefolder convention: ``metadata.jsonl`` or ``metadata.csv`` with a
    ``file_name`` column (path relative to the metadata file) and the other columns as attributes.

    ``split`` selects ``root/<split>/metadata.*`` when present. Columns named like the schema are used as-is;
    ``columns={"text": "caption", "product_id": "sku"}`` maps others (schema name -> source column; ``"image"``
    maps the file-name column). item_id defaults to the file name, product_id to item_id (each image its own
    product). A file without text raises, naming the columns it has. Missing (or corrupt, with ``verify_images``)
    images and unreadable lines raise `BadItemError` or are skipped and counted with ``skip_bad=True``; so are
    file names that lead outside ``root`` (``../x.jpg``, an absolute path, a link out of it) unless
    ``allow_outside_root=True``.
    """
    columns = _check_columns(columns)
    report = report if report is not None else LoadReport(f"folder:{root}")
    folder = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) else root
    if split and folder == root:
        raise FileNotFoundError(
            f"{root}: no {split!r} sub-folder; omit split= or create {root}/{split}/metadata.jsonl"
        )
    meta = _metadata_file(folder)
    if meta is None:
        raise FileNotFoundError(
            f"{folder}: no metadata.jsonl or metadata.csv; write one with a file_name column (datasets imagefolder "
            f"convention) and a text column"
        )
    file_col = columns.get("image", "file_name")
    rows = []
    for line_no, rec in _read_metadata(meta, report, skip_bad):
        item = f"{meta} line {line_no}"
        if file_col not in rec or not clean(rec[file_col]):
            bad_item(report, skip_bad, item, "bad_row", f"no {file_col!r} value (columns: {sorted(rec)})")
            continue
        text_col = columns.get("text", "text")
        if text_col not in rec:
            raise BadItemError(
                f"{item}: no text column {text_col!r} (columns: {sorted(rec)}); pass columns={{'text': '<column>'}}"
            )
        img = os.path.join(folder, clean(rec[file_col]))
        problem = check_image(img, verify_images, None if allow_outside_root else root)
        if problem:
            bad_item(report, skip_bad, f"{item} ({rec[file_col]})", *problem)
            continue
        row = _map_record(rec, columns, meta)
        row["image"] = img
        row["item_id"] = row["item_id"] or clean(rec[file_col])
        row["product_id"] = row["product_id"] or row["item_id"]
        rows.append(row)
    report.rows_kept = len(rows)
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in CATALOG_COLUMNS}, features=CATALOG_FEATURES)


# ---------------------------------------------------------------------------------------------------------- hub
def load_hub(
    name: str,
    split: str | None = None,
    *,
    columns: dict[str, str] | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    skip_bad: bool = False,
    report: LoadReport | None = None,
    allow_outside_root: bool = False,
    **load_kwargs,
):
    """Any `datasets.load_dataset` path (a Hub id such as ``owner/name``, or a local folder / script) mapped into
    the catalogue schema.

    ``columns`` maps schema names to the dataset's columns (``{"image": "img", "text": "caption"}``); schema
    columns the dataset lacks become "", product_id defaults to item_id and item_id to ``<split>-<row index>``.
    `datasets.ClassLabel` columns give their label names (``features[col].int2str``), not the integer codes.
    Images stay undecoded during the mapping (no pixel work at load time). ``split`` defaults to "train".
    A row whose image is a local file path (no bytes) must lie inside the dataset's local folder (``name`` or
    ``data_dir``, the folders of local ``data_files``) or the datasets / Hub caches: another path is a bad item
    (`BadItemError`, or skipped and counted with ``skip_bad=True``) unless ``allow_outside_root=True``.
    """
    columns = _check_columns(columns)
    report = report if report is not None else LoadReport(f"hub:{name}")
    split = split or "train"
    ds = datasets.load_dataset(name, split=split, streaming=streaming, cache_dir=cache_dir, **load_kwargs)
    names = list(ds.column_names or (ds.features or {}).keys())
    image_col = columns.get("image", "image")
    text_col = columns.get("text", "text")
    for schema_name, col in (("image", image_col), ("text", text_col)):
        if col not in names:
            raise BadItemError(
                f"{name} ({split}): no {schema_name} column {col!r} (columns: {names}); "
                f"pass columns={{'{schema_name}': '<column>'}}"
            )
    features = ds.features
    if features is not None and not isinstance(features.get(image_col), datasets.Image):
        raise BadItemError(f"{name}: column {image_col!r} is {features.get(image_col)}, not a datasets.Image feature")
    ds = ds.cast_column(image_col, datasets.Image(decode=False))
    class_labels = {c: f for c, f in (features or {}).items() if isinstance(f, datasets.ClassLabel)}

    roots = None if allow_outside_root else _hub_roots(name, cache_dir, load_kwargs)

    def to_schema(rec, idx):
        row = _map_record(rec, columns, name, class_labels)
        row["item_id"] = row["item_id"] or f"{split}-{idx}"
        row["product_id"] = row["product_id"] or row["item_id"]
        image, row[OUTSIDE] = rec[image_col], ""
        if roots is not None and image and image.get("bytes") is None and image.get("path"):
            problem = outside_root(image["path"], roots)
            if problem and not skip_bad:
                raise BadItemError(f"{name} row {idx}: {problem} (or pass skip_bad=True to skip such rows)")
            if problem:  # dropped below and counted
                image, row[OUTSIDE] = None, problem
        row["image"] = image
        return row

    if isinstance(ds, datasets.IterableDataset):
        # (datasets 5: an IterableDataset mapped with explicit features ignores a later Image re-cast and yields
        # dicts, so map without features and cast the whole schema once.) Rows outside the roots are dropped
        # lazily, uncounted: a stream has no end to count at.
        ds = ds.map(to_schema, with_indices=True, remove_columns=names)
        ds = ds.filter(lambda row: not row[OUTSIDE]).remove_columns(OUTSIDE)
        return ds.cast(CATALOG_FEATURES)
    out_features = CATALOG_FEATURES.copy()
    out_features["image"] = datasets.Image(decode=False)
    out_features[OUTSIDE] = datasets.Value("string")
    ds = ds.map(to_schema, with_indices=True, remove_columns=names, features=out_features)
    problems = ds[OUTSIDE]
    if any(problems):
        for i, problem in enumerate(problems):
            if problem:
                report.skip(f"{name} row {i}", "outside_root", problem)
        ds = ds.select([i for i, problem in enumerate(problems) if not problem])
    return ds.remove_columns(OUTSIDE).cast_column("image", datasets.Image())


OUTSIDE = "_outside_root"  # load_hub's temporary column: why a row's local image path was refused


def _hub_roots(name: str, cache_dir: str | None, load_kwargs: dict) -> list[str]:
    """Where a `load_hub` row's local image file may lie: the dataset's own local folder (``name``, ``data_dir``
    or the folders of local ``data_files``) and the caches `datasets` and the Hub download into."""
    from huggingface_hub import constants

    files = load_kwargs.get("data_files") or []
    if isinstance(files, dict):
        files = [f for value in files.values() for f in ([value] if isinstance(value, str) else value)]
    elif isinstance(files, (str, os.PathLike)):
        files = [files]
    folders = [os.path.dirname(os.path.abspath(f)) for f in files if os.path.isfile(f)]
    roots = [p for p in (name, load_kwargs.get("data_dir")) if p and os.path.isdir(p)] + folders
    return roots + [cache_dir or datasets.config.HF_DATASETS_CACHE, constants.HF_HUB_CACHE]
