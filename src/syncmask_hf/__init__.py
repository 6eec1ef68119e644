"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# --- data (catalogue data layer) ---------------------------------------------------------------------------------
# isort: off
from . import data  # noqa: E402,F401
from .data import CATALOG_FEATURES, load_catalog, load_fashioniq, product_disjoint_split, stable_id  # noqa: E402,F401
# isort: on
# --- end data ------------------------------------------------------------------------------------------------------
