"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# --- evaluation (helper `eval`): metrics live in the subpackage `syncmask_hf.evaluation` ---
from . import evaluation  # noqa: E402, F401

# --- end evaluation ---
