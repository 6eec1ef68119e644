"""Reading a catalogue's images: `load_image` turns whatever a row holds (a PIL image, a path, bytes, an array, a
`datasets` image dict) into an RGB PIL image, or raises `FashionInputError` naming the item and the fix.

Used by `FashionProcessor` and the application's collator and loaders; a Hub copy of the processor carries this file
(it imports only numpy, torch and PIL).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


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


def array_to_pil(array: np.ndarray) -> Image.Image:
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
        return array_to_pil(np.asarray(image)).convert("RGB")
    if mode == "1":
        image = image.convert("L")
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


#: Decoding caps. A JPEG is decoded reduced (DCT scaling, `Image.draft`) to no less than `DECODE_SIDE` pixels a side:
#: models read 224-384 px, so a 12,000 px photo costs a 1,500 px decode instead of 2 GB. An image still larger than
#: `MAX_IMAGE_PIXELS` after that (a huge PNG, a decompression bomb) is a bad item, refused from its header.
DECODE_SIDE = 1024
MAX_IMAGE_PIXELS = 40_000_000


def _open_capped(fp, where: str, index, item_id) -> Image.Image:
    """Open an encoded image, decode it reduced (JPEG) and refuse one over `MAX_IMAGE_PIXELS` before decoding."""
    with Image.open(fp) as opened:
        if opened.format == "JPEG" and min(opened.size) >= 2 * DECODE_SIDE:
            opened.draft(opened.mode, (DECODE_SIDE, DECODE_SIDE))
        width, height = opened.size
        if width * height > MAX_IMAGE_PIXELS:
            raise FashionInputError(
                f"{where}: the image is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} the loader decodes "
                "(a decompression bomb, or a scan far larger than a model reads): resize it, or pass skip_bad=True to "
                "the collator to drop such rows.",
                index,
                item_id,
            )
        return _pil_to_rgb(opened).copy()


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
            return _open_capped(path, where, index, item_id)
        if isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) == 0:
                raise FashionInputError(f"{where}: the image bytes are empty.", index, item_id)
            return _open_capped(io.BytesIO(bytes(image)), where, index, item_id)
        if hasattr(image, "read"):
            return _open_capped(image, where, index, item_id)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            # through `_pil_to_rgb`, so that an alpha channel is composited on white exactly like a PIL RGBA image
            pil = array_to_pil(image)
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


__all__ = ["DECODE_SIDE", "MAX_IMAGE_PIXELS", "FashionInputError", "array_to_pil", "load_image"]
