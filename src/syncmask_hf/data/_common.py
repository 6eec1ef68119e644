"""Small helpers shared by the loaders: bad-item handling, image checks, gender normalisation."""

from __future__ import annotations

import os

from .schema import BadItemError, LoadReport

_GENDER = {
    "men": "men",
    "man": "men",
    "mens": "men",
    "male": "men",
    "women": "women",
    "woman": "women",
    "womens": "women",
    "female": "women",
    "ladies": "women",
    "unisex": "unisex",
    "boys": "boys",
    "boy": "boys",
    "girls": "girls",
    "girl": "girls",
    "kids": "kids",
    "baby": "kids",
}


def normalize_gender(value: str) -> str:
    """Map a source's gender label to one vocabulary: men, women, unisex, boys, girls, kids ("" when unknown).

    Labels outside the vocabulary are kept lower-cased rather than dropped.
    """
    v = (value or "").strip().lower()
    if v in ("", "na", "n/a", "none", "unknown", "nan"):
        return ""
    return _GENDER.get(v, v)


def clean(value) -> str:
    """A source value as a stripped string; None / NaN / "NA" / "Unknown" become "" (the schema's unknown)."""
    if value is None:
        return ""
    s = str(value).strip()
    return "" if s.lower() in ("nan", "na", "none", "unknown", "null") else s


def bad_item(report: LoadReport, skip_bad: bool, item: str, kind: str, message: str) -> None:
    """Raise a `BadItemError` naming ``item``, or (``skip_bad=True``) record a counted skip in ``report``."""
    if not skip_bad:
        raise BadItemError(
            f"{item}: {message} (or pass skip_bad=True to skip such items; skips are counted and reported)"
        )
    report.skip(item, kind, message)


class Utf8Lines:
    """The lines of a text file (CSV, JSONL) as str, for `csv.reader` or a line loop: UTF-8, a leading BOM dropped
    (spreadsheets write one). A line that is not UTF-8 is a bad item named by file and line (`bad_item`: raised,
    or skipped and counted as ``bad_encoding`` with ``skip_bad``); a header that is not UTF-8 always raises.
    ``line_no`` is the physical line last read, so callers name records by it (skipped lines shift no number)."""

    def __init__(self, path: str, report: LoadReport, skip_bad: bool):
        self.path, self.report, self.skip_bad, self.line_no = path, report, skip_bad, 0

    def __iter__(self):
        with open(self.path, "rb") as f:
            for self.line_no, raw in enumerate(f, start=1):
                if self.line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    where = f"{self.path} line {self.line_no}"
                    problem = (
                        f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); re-save the file as UTF-8"
                    )
                    if self.line_no == 1:
                        raise BadItemError(f"{where} (the header): {problem}") from None
                    self.report.rows_read += 1
                    bad_item(self.report, self.skip_bad, where, "bad_encoding", problem)


def outside_root(path: str, roots) -> str | None:
    """A message when ``path`` (symbolic links followed) lies outside every folder of ``roots``, else None. A
    catalogue names files inside its own folder; ``../x.jpg``, an absolute path or a link out of it would make the
    loader (and the demo, which serves what it indexes) read any file on the machine."""
    real = os.path.realpath(path)
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return None
    where = " or ".join(str(r) for r in roots) or "the catalogue's folder"
    return (
        f"image path {path} lies outside {where}; move the file into the catalogue, or pass allow_outside_root=True "
        "if the catalogue is yours"
    )


def check_image(path: str, verify: bool, root: str | None = None) -> tuple[str, str] | None:
    """``None`` when the image file is usable, else ``(kind, message)`` naming the problem and the fix.

    With ``root``, a path outside it (`outside_root`) is ``outside_root``, before anything is opened. Existence is
    always checked (one stat per item); with ``verify`` the file is also opened and its encoded data checked by
    PIL (catches truncated / corrupt files at load time rather than in the middle of training).
    """
    if root is not None:
        problem = outside_root(path, root)
        if problem:
            return "outside_root", problem
    if not os.path.isfile(path):
        return "missing_image", f"image file {path} does not exist; restore it or remove the row"
    if verify:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # noqa: BLE001 - any decoder failure means the same thing here
            return "corrupt_image", f"image file {path} cannot be decoded ({type(err).__name__}: {err}); replace it"
    return None
