"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained

# --- SyncMask (issue 3) -------------------------------------------------------------------------------------------
_SYNCMASK_MODEL_TYPE = "syncmask"

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining  # noqa: E402

from .configuration_syncmask import SyncMaskConfig  # noqa: E402
from .masking import synchronized_masks, synchronized_scores  # noqa: E402
from .modeling_syncmask import (  # noqa: E402
    SyncMaskForImageTextRetrieval,
    SyncMaskForPreTraining,
    SyncMaskForProductClassification,
    SyncMaskForTextGuidedImageRetrieval,
    SyncMaskModel,
    SyncMaskPreTrainedModel,
)
from .sampling import GroupedSemiHardBatchSampler  # noqa: E402

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
