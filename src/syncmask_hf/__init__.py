"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

# --- SyncMask (issue 3) -------------------------------------------------------------------------------------------
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
from .pretrained import minilm_path, resolve_pretrained  # noqa: E402
from .sampling import GroupedSemiHardBatchSampler  # noqa: E402

AutoConfig.register("syncmask", SyncMaskConfig, exist_ok=True)
AutoModel.register(SyncMaskConfig, SyncMaskModel, exist_ok=True)
AutoModelForPreTraining.register(SyncMaskConfig, SyncMaskForPreTraining, exist_ok=True)
# --- end SyncMask -------------------------------------------------------------------------------------------------
