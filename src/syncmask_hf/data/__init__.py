"""Catalogue data layer: loaders into one `datasets` schema, FashionIQ triplets, product-disjoint splits, stable ids,
and the batch samplers of pretraining.

Never imported by modeling files (Hub copies of models are flat and cannot import it).
"""

from .catalog import KNOWN_SOURCES, load_catalog, load_folder, load_hub, parse_synthetic_spec
from .fashiongen import FASHIONGEN_KEYS, load_fashiongen
from .fashioniq import FASHIONIQ_CATEGORIES, load_fashioniq, load_fashioniq_gallery
from .ids import normalize_text, stable_id, text_id
from .kaggle import hm_gender, load_hm, load_myntra, myntra_brand
from .samplers import GroupedSemiHardBatchSampler, OneImagePerProductSampler, RandomBatchSampler
from .schema import CATALOG_COLUMNS, CATALOG_FEATURES, STRING_COLUMNS, BadItemError, LoadReport
from .splits import product_disjoint_split
from .synthetic import draw_view, load_synthetic, synthetic_products
from .variants import COLOUR_TRIPLET_FEATURES, colour_phrase, colour_variant_triplets

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_FEATURES",
    "COLOUR_TRIPLET_FEATURES",
    "FASHIONGEN_KEYS",
    "FASHIONIQ_CATEGORIES",
    "GroupedSemiHardBatchSampler",
    "KNOWN_SOURCES",
    "STRING_COLUMNS",
    "BadItemError",
    "LoadReport",
    "OneImagePerProductSampler",
    "RandomBatchSampler",
    "colour_phrase",
    "colour_variant_triplets",
    "draw_view",
    "hm_gender",
    "load_catalog",
    "load_fashiongen",
    "load_fashioniq",
    "load_fashioniq_gallery",
    "load_folder",
    "load_hm",
    "load_hub",
    "load_myntra",
    "load_synthetic",
    "myntra_brand",
    "normalize_text",
    "parse_synthetic_spec",
    "product_disjoint_split",
    "stable_id",
    "synthetic_products",
    "text_id",
]
