"""FashionGen HDF5 loader (``fashiongen_256_256_{train,validation}.h5``), read lazily chunk by chunk."""

from __future__ import annotations

import io
import os

import datasets
import numpy as np

from ._common import clean, normalize_gender
from .schema import CATALOG_FEATURES, BadItemError, LoadReport, empty_row

__all__ = ["FASHIONGEN_KEYS", "fashiongen_file", "load_fashiongen"]

#: HDF5 datasets read by the loader, so required (``input_name`` is needed too by ``text_field="name+description"``,
#: ``input_concat_description`` by ``text_field="concat_description"``). Keys it does not read (``input_pose``,
#: ``input_department``, ``input_msrpUSD``, ...) may be absent.
FASHIONGEN_KEYS = (
    "input_image",
    "input_description",
    "input_productID",
    "input_category",
    "input_subcategory",
    "input_brand",
    "input_season",
    "input_composition",
    "input_gender",
)
_TEXT_FIELDS = ("description", "name+description", "concat_description")


def fashiongen_file(path: str, split: str | None) -> str:
    """``path`` itself when it is a file, else ``path/fashiongen_256_256_<split>.h5`` (split defaults to train;
    "val"/"test" mean the official validation file, which the literature uses as the test set)."""
    if os.path.isfile(path):
        return path
    split = {None: "train", "val": "validation", "test": "validation"}.get(split, split)
    return os.path.join(path, f"fashiongen_256_256_{split}.h5")


def _decode(value) -> str:
    """FashionGen stores strings as ``[i][0]`` bytes, latin-1 in the official files; UTF-8 (as re-exported copies
    write them) is decoded as UTF-8, anything else as latin-1, so "café" never becomes "cafÃ©". Ids may be numeric."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            return value.decode("latin-1").strip()
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (np.floating, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    return clean(value)


def _open_checked(path: str, text_field: str):
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FashionGen file {path} not found: pass the .h5 file or the folder holding fashiongen_256_256_<split>.h5"
        )
    f = h5py.File(path, "r")
    try:
        needed = _needed_keys(text_field)
        found = sorted(f.keys())  # read before any close: a closed file has no keys
        for key in needed:
            if key not in f:
                raise BadItemError(
                    f"{path}: HDF5 key '{key}' is missing (found {found}); this is not a fashiongen_256_256_*.h5 "
                    f"file in the official schema, or it is truncated: re-download it"
                )
        rows = {key: (f[key].shape[0] if f[key].shape else None) for key in needed}
        n = rows["input_image"]
        if n is None:
            raise BadItemError(f"{path}: HDF5 key 'input_image' is a scalar, expected N x H x W x 3 images")
        _check_images(path, f["input_image"])
        bad = {key: r for key, r in rows.items() if r != n}
        if bad:
            key, r = next(iter(bad.items()))
            raise BadItemError(
                f"{path}: HDF5 key '{key}' has {'no rows (a scalar)' if r is None else f'{r} rows'} but input_image "
                f"has {n} (row counts: {rows}); every key holds one entry per image: the file is truncated or "
                f"was written incompletely, re-download it"
            )
    except BaseException:
        f.close()
        raise
    return f, n


#: image dtypes read, and how: uint8 as is; uint16 / 257; floats scaled from 0-1 (when the image's maximum is at
#: most 1) or clipped to 0-255; bool as 0 / 255. Anything else is refused with the dtype named.
IMAGE_DTYPES = ("uint8", "uint16", "float16", "float32", "float64", "bool")


def _check_images(path: str, images) -> None:
    shape, dtype = tuple(images.shape), np.dtype(images.dtype)
    if len(shape) != 4 or shape[-1] != 3:
        raise BadItemError(
            f"{path}: HDF5 key 'input_image' has shape {shape}, expected N x H x W x 3 (RGB images); this is not a "
            "fashiongen_256_256_*.h5 file in the official schema"
        )
    if dtype.name not in IMAGE_DTYPES:
        raise BadItemError(
            f"{path}: HDF5 key 'input_image' has dtype {dtype.name}; readable dtypes are {list(IMAGE_DTYPES)} "
            "(the official files hold uint8): convert the images first"
        )


def _needed_keys(text_field: str) -> list[str]:
    needed = list(FASHIONGEN_KEYS)
    if text_field == "name+description":
        needed.append("input_name")
    elif text_field == "concat_description":
        needed.append("input_concat_description")
    return needed


def _generate(path: str, ranges: list, text_field: str, png_level: int, mtime: float):
    """Yield catalogue rows of ``path`` for each ``(start, stop)`` in ``ranges``, one chunk in memory at a time.

    ``mtime`` is unused here; it is part of ``gen_kwargs`` so that the ``datasets`` cache is invalidated when the
    file changes.
    """
    from ..models.image_loading import array_to_pil

    f, _ = _open_checked(path, text_field)
    try:
        for start, stop in ranges:
            images = f["input_image"][start:stop]
            cols = {k: f[k][start:stop] for k in _needed_keys(text_field) if k != "input_image"}
            for j in range(stop - start):
                row_no = start + j
                buf = io.BytesIO()
                # the package's array conversion (uint16, floats 0-1, bool), never a silent cast to uint8
                array_to_pil(images[j]).save(buf, format="PNG", compress_level=png_level)
                desc = _decode(cols["input_description"][j])
                if text_field == "name+description":
                    name = _decode(cols["input_name"][j])
                    text = f"{name}. {desc}" if name else desc
                elif text_field == "concat_description":
                    text = _decode(cols["input_concat_description"][j])
                else:
                    text = desc
                pid = _decode(cols["input_productID"][j])
                row = empty_row()
                row.update(
                    image={"bytes": buf.getvalue(), "path": None},
                    text=text,
                    product_id=pid,
                    item_id=f"{pid}_{row_no}",
                    category=_decode(cols["input_category"][j]),
                    subcategory=_decode(cols["input_subcategory"][j]),
                    brand=_decode(cols["input_brand"][j]),
                    season=_decode(cols["input_season"][j]),
                    composition=_decode(cols["input_composition"][j]),
                    gender=normalize_gender(_decode(cols["input_gender"][j])),
                )
                yield row
    finally:
        f.close()


def load_fashiongen(
    path: str,
    split: str | None = None,
    *,
    streaming: bool = False,
    text_field: str = "description",
    chunk_size: int = 512,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    png_compress_level: int = 1,
    report: LoadReport | None = None,
):
    """FashionGen as a catalogue, read lazily: the HDF5 file is read ``chunk_size`` rows at a time, never whole.

    With ``streaming=False`` rows go through `datasets.Dataset.from_generator`, which writes an Arrow copy to the
    ``datasets`` cache (images PNG-encoded, lossless; ``num_proc`` shards the row ranges over processes); with
    ``streaming=True`` an `IterableDataset` reads the file on the fly and nothing is copied.

    Mapping: text = ``input_description`` (``text_field="name+description"`` prefixes ``input_name``;
    ``"concat_description"`` uses ``input_concat_description``), product_id = ``input_productID`` (the rows of one
    product -- its poses -- share it), item_id = ``<productID>_<row>``, category/subcategory/brand/season/
    composition from the keys of those names, gender normalised (MEN -> men). FashionGen has no colour field ("").
    A missing key (of those read: `FASHIONGEN_KEYS`, plus the text field's), keys with different row counts, images
    not N x H x W x 3 or of a dtype outside `IMAGE_DTYPES` raise `BadItemError` naming the key, the file and what
    was found, before any row is read.
    """
    if text_field not in _TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {_TEXT_FIELDS}, got {text_field!r}")
    file = fashiongen_file(path, split)
    f, n = _open_checked(file, text_field)
    f.close()
    if report is not None:
        report.rows_read = report.rows_kept = n
    ranges = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    kwargs = {"path": file, "text_field": text_field, "png_level": png_compress_level, "mtime": os.path.getmtime(file)}
    if streaming:
        return datasets.IterableDataset.from_generator(
            _generate, features=CATALOG_FEATURES, gen_kwargs={**kwargs, "ranges": ranges}
        )
    return datasets.Dataset.from_generator(
        _generate,
        features=CATALOG_FEATURES,
        gen_kwargs={**kwargs, "ranges": ranges},
        # ``from_generator`` splits list-valued gen_kwargs (the row ranges) over the ``num_proc`` processes.
        num_proc=num_proc,
        cache_dir=cache_dir,
    )
