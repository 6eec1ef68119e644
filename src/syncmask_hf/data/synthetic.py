"""An embedded, procedurally drawn fashion catalogue (no files shipped): the default data for demos and CPU runs.

Each product is a garment (type, colour, pattern, details, brand, season, composition, gender) described by ONE text
and photographed in 1-3 views (front / back / side). Some details named in the text are visible only in some views --
pockets, buttons and zippers on the front, a logo print on the back, nothing but the collar on the side -- which is
exactly the "one text, several images, partly matching" situation SyncMask's synchronized masking and false-negative
handling address. Everything the text says is drawn somewhere, so a small model trained for minutes can retrieve
above chance:

- garment type -> silhouette; colour -> fill; pattern (plain, striped, dotted, checked) -> fill texture;
- brand -> colour of the neck tag (visible in every view); season -> background tint;
- composition -> outline colour and width; gender -> "women's"/"men's"/"unisex" in the text and silhouette width.

Deterministic by ``seed``: the same arguments give the same rows and pixels in every process.
"""

from __future__ import annotations

import functools
import io
import random
from dataclasses import dataclass

import datasets

from .ids import stable_id
from .schema import CATALOG_COLUMNS, CATALOG_FEATURES, empty_row

__all__ = ["SyntheticProduct", "synthetic_products", "draw_view", "load_synthetic", "VIEWS", "DETAIL_VIEWS"]

COLORS = {
    "red": (200, 30, 40),
    "blue": (40, 80, 200),
    "green": (30, 150, 60),
    "yellow": (240, 210, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "pink": (240, 130, 180),
    "orange": (245, 130, 20),
    "purple": (120, 50, 160),
    "grey": (130, 130, 130),
}
PATTERNS = ("plain", "striped", "dotted", "checked")
#: garment -> (category, details it may carry, genders it is sold for)
GARMENTS = {
    "t-shirt": ("tops", ("pocket", "logo"), ("women", "men", "unisex")),
    "shirt": ("tops", ("pocket", "buttons", "collar", "logo"), ("women", "men")),
    "dress": ("dresses", ("buttons", "zipper", "collar", "logo"), ("women",)),
    "skirt": ("bottoms", ("pocket", "buttons", "zipper"), ("women",)),
    "trousers": ("bottoms", ("pocket", "zipper", "logo"), ("women", "men", "unisex")),
    "jacket": ("outerwear", ("pocket", "buttons", "zipper", "collar", "logo"), ("women", "men", "unisex")),
}
VIEWS = ("front", "back", "side")
#: where each detail can be seen: the text names it once, only these views show it.
DETAIL_VIEWS = {
    "pocket": ("front",),
    "buttons": ("front",),
    "zipper": ("front",),
    "collar": ("front", "back", "side"),
    "logo": ("back",),
}
DETAIL_TEXT = {
    "pocket": "a pocket",
    "buttons": "buttons",
    "zipper": "a zipper",
    "collar": "a collar",
    "logo": "a logo print on the back",
}
#: brand -> neck tag colour
BRANDS = {
    "Aurora": (255, 0, 255),
    "Borealis": (0, 255, 255),
    "Cobalt": (0, 0, 140),
    "Dune": (190, 150, 90),
    "Ember": (255, 90, 0),
    "Fjord": (0, 110, 110),
    "Grove": (80, 120, 0),
    "Halcyon": (255, 255, 120),
}
#: season -> background
SEASONS = {"spring": (215, 240, 215), "summer": (250, 245, 200), "fall": (240, 220, 200), "winter": (210, 225, 245)}
#: composition -> (outline colour, outline width in px at 96 px)
COMPOSITIONS = {
    "cotton": ((0, 0, 0), 1),
    "wool": ((110, 60, 20), 3),
    "polyester": ((160, 160, 160), 2),
    "linen": ((200, 180, 140), 3),
    "denim": ((20, 40, 110), 2),
}
GENDER_TEXT = {"women": "women's", "men": "men's", "unisex": "unisex"}


@dataclass(frozen=True)
class SyntheticProduct:
    product_id: str
    garment: str
    color: str
    pattern: str
    details: tuple[str, ...]
    brand: str
    season: str
    composition: str
    gender: str
    views: tuple[str, ...]

    @property
    def category(self) -> str:
        return GARMENTS[self.garment][0]

    @property
    def text(self) -> str:
        """The one text shared by every view: it names every detail, even those a given view does not show."""
        look = self.color if self.pattern == "plain" else f"{self.color} {self.pattern}"
        head = f"{self.brand} {GENDER_TEXT[self.gender]} {look} {self.garment}"
        if self.details:
            parts = [DETAIL_TEXT[d] for d in self.details]
            head += " with " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
        return f"{head}. made of {self.composition}, {self.season} collection."


def synthetic_products(num_items: int, seed: int = 0, max_views: int = 3) -> list[SyntheticProduct]:
    """Draw products until they hold ``num_items`` views in total (the last product may get fewer views)."""
    if num_items < 1 or not 1 <= max_views <= len(VIEWS):
        raise ValueError(f"need num_items >= 1 and 1 <= max_views <= {len(VIEWS)}, got {num_items}, {max_views}")
    rng = random.Random(seed)
    products, total, k = [], 0, 0
    while total < num_items:
        garment = rng.choice(sorted(GARMENTS))
        _, allowed, genders = GARMENTS[garment]
        n_details = rng.randint(0, min(3, len(allowed)))
        chosen = set(rng.sample(allowed, n_details))
        details = tuple(d for d in allowed if d in chosen)
        n_views = min(rng.randint(1, max_views), num_items - total)
        shown = set(rng.sample(VIEWS, n_views))
        views = tuple(v for v in VIEWS if v in shown)
        products.append(
            SyntheticProduct(
                product_id=f"syn{seed}-{k:06d}",
                garment=garment,
                color=rng.choice(sorted(COLORS)),
                pattern=rng.choice(PATTERNS),
                details=details,
                brand=rng.choice(sorted(BRANDS)),
                season=rng.choice(sorted(SEASONS)),
                composition=rng.choice(sorted(COMPOSITIONS)),
                gender=rng.choice(genders),
                views=views,
            )
        )
        total += n_views
        k += 1
    return products


# ------------------------------------------------------------------------------------------------------ drawing
# Silhouettes in unit coordinates (x right, y down); the side view squeezes x towards the centre.
_SHAPES = {
    "t-shirt": [
        [
            (0.30, 0.18),
            (0.42, 0.15),
            (0.58, 0.15),
            (0.70, 0.18),
            (0.86, 0.36),
            (0.76, 0.43),
            (0.68, 0.34),
            (0.68, 0.85),
            (0.32, 0.85),
            (0.32, 0.34),
            (0.24, 0.43),
            (0.14, 0.36),
        ]
    ],
    "shirt": [
        [
            (0.30, 0.16),
            (0.42, 0.13),
            (0.58, 0.13),
            (0.70, 0.16),
            (0.90, 0.78),
            (0.80, 0.81),
            (0.68, 0.40),
            (0.68, 0.88),
            (0.32, 0.88),
            (0.32, 0.40),
            (0.20, 0.81),
            (0.10, 0.78),
        ]
    ],
    "dress": [
        [
            (0.38, 0.12),
            (0.45, 0.10),
            (0.55, 0.10),
            (0.62, 0.12),
            (0.64, 0.40),
            (0.82, 0.92),
            (0.18, 0.92),
            (0.36, 0.40),
        ]
    ],
    "skirt": [[(0.34, 0.30), (0.66, 0.30), (0.82, 0.82), (0.18, 0.82)]],
    "trousers": [[(0.30, 0.12), (0.70, 0.12), (0.74, 0.92), (0.55, 0.92), (0.50, 0.36), (0.45, 0.92), (0.26, 0.92)]],
    "jacket": [
        [
            (0.28, 0.14),
            (0.42, 0.11),
            (0.58, 0.11),
            (0.72, 0.14),
            (0.92, 0.82),
            (0.80, 0.85),
            (0.70, 0.42),
            (0.70, 0.80),
            (0.30, 0.80),
            (0.30, 0.42),
            (0.20, 0.85),
            (0.08, 0.82),
        ]
    ],
}
# Where details sit (unit coordinates): tops carry them on the chest, bottoms at the waist/hip.
_TOP = {"pocket": (0.36, 0.30), "buttons_x": 0.50, "buttons_y": (0.26, 0.70), "neck_y": 0.13, "logo": (0.50, 0.40)}
_BOTTOM = {"pocket": (0.33, 0.40), "buttons_x": 0.50, "buttons_y": (0.36, 0.50), "neck_y": 0.30, "logo": (0.60, 0.42)}


def _contrast(rgb):
    return (20, 20, 20) if sum(rgb) > 380 else (240, 240, 240)


@functools.lru_cache(maxsize=256)
def _fill(size: int, color, pattern: str, scale: float):
    """Full-canvas pattern image in the garment colour (cached: only read by ``paste``, never modified)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), color)
    if pattern == "plain":
        return img
    d = ImageDraw.Draw(img)
    other = _contrast(color)
    step = max(4, round(8 * scale))
    if pattern == "striped":
        for y in range(0, size, step):
            d.rectangle([0, y, size, y + max(1, step // 3)], fill=other)
    elif pattern == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, size, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=other)
    elif pattern == "checked":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=other)
    return img


def draw_view(product: SyntheticProduct, view: str, size: int = 96, jitter_seed: int | None = None):
    """Draw one view of ``product`` as a ``size`` x ``size`` RGB PIL image (small random shift/scale by
    ``jitter_seed``, so two views of one product are never pixel-identical)."""
    from PIL import Image, ImageDraw

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    rng = random.Random(jitter_seed)
    s = size / 96.0
    zoom = rng.uniform(0.92, 1.05) * (0.92 if product.gender == "women" else 1.0)
    sx = zoom * (0.55 if view == "side" else 1.0)
    ox, oy = rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03)

    def pt(x, y):
        return ((0.5 + (x - 0.5) * sx + ox) * size, (0.5 + (y - 0.5) * zoom + oy) * size)

    img = Image.new("RGB", (size, size), SEASONS[product.season])
    mask = Image.new("L", (size, size), 0)
    md = ImageDraw.Draw(mask)
    polys = [[pt(x, y) for x, y in poly] for poly in _SHAPES[product.garment]]
    for poly in polys:
        md.polygon(poly, fill=255)
    color = COLORS[product.color]
    img.paste(_fill(size, color, product.pattern, s), (0, 0), mask)
    d = ImageDraw.Draw(img)
    line_color, width = COMPOSITIONS[product.composition]
    for poly in polys:
        d.line(poly + [poly[0]], fill=line_color, width=max(1, round(width * s)))

    bottom = product.category == "bottoms"
    anchors = _BOTTOM if bottom else _TOP
    dark = tuple(max(0, c - 90) for c in color)
    other = _contrast(color)
    r = max(1, round(2 * s))
    # neckline: a dip on the front only (tells front from back in tops)
    if view == "front" and not bottom:
        nx, ny = pt(0.5, anchors["neck_y"] + 0.02)
        d.ellipse([nx - 5 * s, ny - 4 * s, nx + 5 * s, ny + 4 * s], fill=SEASONS[product.season])
    # brand tag: visible in every view
    tx, ty = pt(0.5, anchors["neck_y"] + (0.07 if not bottom else 0.03))
    d.rectangle([tx - 5 * s, ty - 3 * s, tx + 5 * s, ty + 3 * s], fill=BRANDS[product.brand], outline=(0, 0, 0))
    for detail in product.details:
        if view not in DETAIL_VIEWS[detail]:
            continue
        if detail == "pocket":
            px, py = pt(*anchors["pocket"])
            d.rectangle([px - 5 * s, py - 4 * s, px + 5 * s, py + 6 * s], fill=dark, outline=other)
        elif detail == "buttons":
            x0, _ = pt(anchors["buttons_x"] + 0.04, 0)
            y0, y1 = (pt(0, v)[1] for v in anchors["buttons_y"])
            for i in range(4):
                y = y0 + (y1 - y0) * i / 3
                d.ellipse([x0 - r, y - r, x0 + r, y + r], fill=other, outline=(0, 0, 0))
        elif detail == "zipper":
            x0, _ = pt(anchors["buttons_x"] - 0.03, 0)
            y0, y1 = (pt(0, v)[1] for v in anchors["buttons_y"])
            d.line([(x0, y0), (x0, y1)], fill=(190, 190, 200), width=max(1, round(2 * s)))
            for i in range(6):
                y = y0 + (y1 - y0) * i / 5
                d.line([(x0 - r, y), (x0 + r, y)], fill=(90, 90, 100), width=1)
        elif detail == "collar":
            cx, cy = pt(0.5, anchors["neck_y"])
            w = 9 * s * (0.6 if view == "side" else 1.0)
            d.polygon([(cx - w, cy), (cx, cy + 7 * s), (cx - 2 * s, cy)], fill=other, outline=(0, 0, 0))
            d.polygon([(cx + w, cy), (cx, cy + 7 * s), (cx + 2 * s, cy)], fill=other, outline=(0, 0, 0))
        elif detail == "logo":
            lx, ly = pt(*anchors["logo"])
            lr = 7 * s
            d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=other, outline=(0, 0, 0))
            d.polygon([(lx, ly - lr * 0.7), (lx + lr * 0.6, ly + lr * 0.5), (lx - lr * 0.6, ly + lr * 0.5)], fill=dark)
    return img


def _rows(products, size: int, seed: int, encode: bool):
    for p in products:
        for view in p.views:
            item_id = f"{p.product_id}-{view}"
            img = draw_view(p, view, size, jitter_seed=stable_id(f"{seed}/{item_id}"))
            if encode:
                buf = io.BytesIO()
                img.save(buf, format="PNG", compress_level=1)
                img = {"bytes": buf.getvalue(), "path": None}
            row = empty_row()
            row.update(
                image=img,
                text=p.text,
                product_id=p.product_id,
                item_id=item_id,
                category=p.category,
                subcategory=p.garment,
                brand=p.brand,
                season=p.season,
                color=p.color,
                composition=p.composition,
                gender=p.gender,
            )
            yield row


def _gen(num_items: int, seed: int, image_size: int, max_views: int):
    yield from _rows(synthetic_products(num_items, seed, max_views), image_size, seed, encode=False)


SYNTHETIC_MAX_SIZE = 1024  # px a side
SYNTHETIC_MAX_ITEMS = 1_000_000  # rows (about 5 GB of PNGs at 96 px held in memory without streaming)


def load_synthetic(
    num_items: int = 2000, seed: int = 0, image_size: int = 96, max_views: int = 3, *, streaming: bool = False
):
    """The synthetic catalogue: ``num_items`` views (rows) of ~``num_items / 2`` products, ``image_size`` px.

    Columns follow `CATALOG_FEATURES`: category is tops/dresses/bottoms/outerwear, subcategory the garment type,
    item_id ``<product_id>-<view>``. ``streaming=False`` draws and PNG-encodes every image in memory (~1 ms per
    item at 96 px); ``streaming=True`` returns an `IterableDataset` that draws each image when it is read.
    """
    # Caps, so that a typo (synthetic:1?size=100000 once asked for 24 GB) fails at once instead of filling memory.
    for name, value, low, high in (
        ("image_size", image_size, 16, SYNTHETIC_MAX_SIZE),
        ("num_items", num_items, 1, SYNTHETIC_MAX_ITEMS),
        ("max_views", max_views, 1, 10),
    ):
        if not low <= value <= high:
            raise ValueError(f"synthetic catalogue: {name} must be between {low:,} and {high:,}, got {value:,}")
    if streaming:
        return datasets.IterableDataset.from_generator(
            _gen,
            features=CATALOG_FEATURES,
            gen_kwargs={"num_items": num_items, "seed": seed, "image_size": image_size, "max_views": max_views},
        )
    rows = list(_rows(synthetic_products(num_items, seed, max_views), image_size, seed, encode=True))
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in CATALOG_COLUMNS}, features=CATALOG_FEATURES)
