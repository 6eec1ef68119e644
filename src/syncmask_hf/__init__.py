"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained

# --- processing (FashionProcessor, FashionCollator) -------------------------------------------------------------
from .processing_fashion import (
    FashionCollator,
    FashionInputError,
    FashionProcessor,
    load_image,
    normalize_text,
    split_title,
    stable_id,
)


def _register_fashion_processor():
    """`AutoProcessor` finds FashionProcessor by name (processor_config.json) and for the package's model configs;
    `register_for_auto_class` makes save_pretrained write `auto_map` so Hub copies load with trust_remote_code."""
    import importlib

    from transformers import AutoProcessor

    FashionProcessor.register_for_auto_class("AutoProcessor")
    for module, name, model_type in (
        ("configuration_syncmask", "SyncMaskConfig", "syncmask"),
        ("configuration_e2", "E2Config", "e2"),
        ("configuration_fashionfae", "FashionFAEConfig", "fashionfae"),
    ):
        try:
            key = getattr(importlib.import_module(f".{module}", __name__), name)
        except (ImportError, AttributeError):
            key = model_type  # the config is not in this build: register by model type so name lookup still works
        AutoProcessor.register(key, FashionProcessor, exist_ok=True)


_register_fashion_processor()
# --- end processing ---------------------------------------------------------------------------------------------

# --- evaluation (helper `eval`): metrics live in the subpackage `syncmask_hf.evaluation` ---
from . import evaluation

# --- end evaluation ---
# --- SyncMask (issue 3) -------------------------------------------------------------------------------------------
_SYNCMASK_MODEL_TYPE = "syncmask"

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_syncmask import SyncMaskConfig
from .masking import synchronized_masks, synchronized_scores
from .modeling_syncmask import (
    SyncMaskForImageTextRetrieval,
    SyncMaskForPreTraining,
    SyncMaskForProductClassification,
    SyncMaskForTextGuidedImageRetrieval,
    SyncMaskModel,
    SyncMaskPreTrainedModel,
)
from .sampling import GroupedSemiHardBatchSampler, RandomBatchSampler

AutoConfig.register(_SYNCMASK_MODEL_TYPE, SyncMaskConfig, exist_ok=True)
AutoModel.register(SyncMaskConfig, SyncMaskModel, exist_ok=True)
AutoModelForPreTraining.register(SyncMaskConfig, SyncMaskForPreTraining, exist_ok=True)

# Public names (lead: merge the blocks' lists into one __all__).
__all__ = [
    "__version__",
    "minilm_path",
    "resolve_pretrained",
    "SyncMaskConfig",
    "SyncMaskPreTrainedModel",
    "SyncMaskModel",
    "SyncMaskForPreTraining",
    "SyncMaskForImageTextRetrieval",
    "SyncMaskForTextGuidedImageRetrieval",
    "SyncMaskForProductClassification",
    "GroupedSemiHardBatchSampler",
    "synchronized_masks",
    "synchronized_scores",
]
# --- end SyncMask -------------------------------------------------------------------------------------------------
