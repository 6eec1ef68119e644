"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained

# --- hub publishing (branch hub) ---
# isort: split
from .hub import HubFolderError, check_model_folder, push_demo_space, push_model_folder, write_model_card
# --- end hub publishing ---
