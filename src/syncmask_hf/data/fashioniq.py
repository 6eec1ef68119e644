"""FashionIQ triplets (reference image, modification captions, target image) for text-guided image retrieval."""

from __future__ import annotations

import json
import os

import datasets

from .schema import BadItemError, LoadReport

__all__ = ["FASHIONIQ_CATEGORIES", "FASHIONIQ_FEATURES", "load_fashioniq", "load_fashioniq_gallery"]

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: triplet features; ``target``/``target_image`` are empty for the test split (no targets released).
FASHIONIQ_FEATURES = datasets.Features(
    {
        "candidate": datasets.Value("string"),
        "target": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "caption": datasets.Value("string"),
        "category": datasets.Value("string"),
    }
)


def _paths(root: str, category: str, split: str) -> tuple[str, str, str]:
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {FASHIONIQ_CATEGORIES}, got {category!r}")
    if split not in _SPLITS:
        raise ValueError(f"FashionIQ split must be one of train, val, test, got {split!r}")
    s = _SPLITS[split]
    return (
        s,
        os.path.join(root, "captions", f"cap.{category}.{s}.json"),
        os.path.join(root, "image_splits", f"split.{category}.{s}.json"),
    )


def _load_json_list(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected the official FashionIQ layout (captions/, image_splits/)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:
        raise BadItemError(f"{path}: not valid JSON ({err}); re-download the FashionIQ annotations") from err
    if not isinstance(data, list):
        raise BadItemError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _image_path(image_dir: str, image_id: str) -> str:
    return os.path.join(image_dir, f"{image_id}.jpg")


def _not_a_file_name(image_id) -> bool:
    """An id that would lead out of image_dir (``../x``, ``a/b``, an absolute path): FashionIQ ids are Amazon ASINs."""
    text = str(image_id)
    return text in ("", ".", "..") or "/" in text or "\\" in text or os.path.basename(text) != text


def load_fashioniq(
    root: str,
    category: str,
    split: str,
    image_dir: str | None = None,
    *,
    skip_bad: bool = False,
    return_report: bool = False,
):
    """FashionIQ triplets of ``captions/cap.<category>.<split>.json`` as a `datasets.Dataset`.

    Columns: ``candidate`` / ``target`` (Amazon image ids; target "" in the test split, which has none),
    ``captions`` (the two relative captions), ``caption`` (both, trailing punctuation stripped, joined with " and ": the usual query text),
    ``category``; with ``image_dir`` also ``candidate_image`` / ``target_image`` (`datasets.Image`, from
    ``image_dir/<id>.jpg``; ``target_image`` is None in the test split).

    The Amazon images are not redistributed and many links are dead, so missing images are expected: each triplet
    whose candidate or target image is missing raises `BadItemError` (naming the id, the count and the fix) or, with
    ``skip_bad=True``, is skipped and counted in the `LoadReport` (logged; returned with ``return_report=True``).
    A malformed triplet (not an object, no candidate, no target outside the test split, captions not a list of two
    strings) raises `BadItemError` naming the file and the triplet's index, or is skipped and counted (``bad_row``).
    """
    s, cap_path, _ = _paths(root, category, split)
    report = LoadReport(f"fashioniq:{root}:{category}.{s}")
    triplets = _load_json_list(cap_path)
    rows = []
    missing_ids: set[str] = set()
    for i, t in enumerate(triplets):
        report.rows_read += 1
        item = f"{cap_path} triplet {i}"
        problem = _triplet_problem(t, needs_target=s != "test")
        if problem:
            _bad(
                report,
                skip_bad,
                item,
                "bad_row",
                f"{problem}; expected {{'candidate': id, 'target': id, 'captions': [str, str]}} (no target in the "
                f"test split): fix or remove that entry, or re-download the FashionIQ annotations",
            )
            continue
        caps = [c.strip() for c in t["captions"]]
        row = {
            "candidate": str(t["candidate"]),
            "target": str(t.get("target") or ""),
            "captions": caps,
            "caption": " and ".join(c.strip(".?, ") for c in caps if c.strip(".?, ")),
            "category": category,
        }
        if image_dir is not None:
            ids = [row["candidate"]] + ([row["target"]] if row["target"] else [])
            gone = [x for x in ids if not os.path.isfile(_image_path(image_dir, x))]
            if gone:
                missing_ids.update(gone)
                report.skip(f"{item} ({', '.join(gone)})", "missing_image", "image not in image_dir")
                continue
            row["candidate_image"] = _image_path(image_dir, row["candidate"])
            row["target_image"] = _image_path(image_dir, row["target"]) if row["target"] else None
        rows.append(row)
    if missing_ids and not skip_bad:
        first = sorted(missing_ids)[:5]
        raise BadItemError(
            f"{cap_path}: {report.counts['missing_image']} of {report.rows_read} triplets reference "
            f"{len(missing_ids)} images missing from {image_dir} (e.g. {first}); download them as <id>.jpg into "
            f"that folder, or pass skip_bad=True to drop those triplets (counted and reported)"
        )
    report.rows_kept = len(rows)
    report.log()
    features = FASHIONIQ_FEATURES.copy()
    if image_dir is not None:
        features["candidate_image"] = datasets.Image()
        features["target_image"] = datasets.Image()
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    return (ds, report) if return_report else ds


def _triplet_problem(t, needs_target: bool) -> str | None:
    """What is wrong with one caption-file entry, or None."""
    if not isinstance(t, dict):
        return f"not a JSON object ({type(t).__name__})"
    if not t.get("candidate") or not isinstance(t["candidate"], (str, int)):
        return f"no candidate id (candidate={t.get('candidate')!r})"
    if needs_target and (not t.get("target") or not isinstance(t["target"], (str, int))):
        return f"no target id (target={t.get('target')!r})"
    for key in ("candidate", "target"):
        if t.get(key) and _not_a_file_name(t[key]):
            return f"{key} id {t[key]!r} is not a file name (it would lead out of image_dir)"
    caps = t.get("captions")
    if not isinstance(caps, list) or len(caps) != 2 or not all(isinstance(c, str) for c in caps):
        return f"captions must be a list of two strings, got {caps!r:.80}"
    return None


def _bad(report: LoadReport, skip_bad: bool, item: str, kind: str, message: str) -> None:
    if not skip_bad:
        raise BadItemError(f"{item}: {message} (or pass skip_bad=True to skip and count such triplets)")
    report.skip(item, kind, message)


def load_fashioniq_gallery(
    root: str, category: str, split: str, image_dir: str | None = None, *, skip_bad: bool = False
) -> datasets.Dataset:
    """The retrieval gallery of a FashionIQ split: ids of ``image_splits/split.<category>.<split>.json``
    (column ``image_id``), plus ``image`` from ``image_dir`` when given (missing files raise, or are skipped and
    counted with ``skip_bad=True``)."""
    s, _, split_path = _paths(root, category, split)
    ids = [str(x) for x in _load_json_list(split_path)]
    if image_dir is None:
        return datasets.Dataset.from_dict({"image_id": ids})
    report = LoadReport(f"fashioniq-gallery:{root}:{category}.{s}", rows_read=len(ids))
    kept = []
    for x in ids:
        if _not_a_file_name(x):
            report.skip(x, "bad_row", f"image id {x!r} is not a file name (it would lead out of image_dir)")
        elif os.path.isfile(_image_path(image_dir, x)):
            kept.append(x)
        else:
            report.skip(x, "missing_image", f"{_image_path(image_dir, x)} not found")
    if report.skipped and not skip_bad:
        raise BadItemError(
            f"{split_path}: {report.num_skipped} of {len(ids)} gallery images missing from {image_dir} "
            f"(e.g. {[i for i, _ in report.skipped[:5]]}); add them or pass skip_bad=True"
        )
    report.rows_kept = len(kept)
    report.log()
    return datasets.Dataset.from_dict(
        {"image_id": kept, "image": [_image_path(image_dir, x) for x in kept]},
        features=datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()}),
    )
