"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# --- E2 (issue 4) -------------------------------------------------------------------------------------------------
_E2_MODEL_TYPE = "e2"

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification  # noqa: E402

from .configuration_e2 import E2Config  # noqa: E402
from .e2_sampling import OneImagePerProductSampler  # noqa: E402
from .modeling_e2 import E2FusionBlock, E2Model, E2Output, E2PreTrainedModel, E2VisionOutput  # noqa: E402

AutoConfig.register(_E2_MODEL_TYPE, E2Config, exist_ok=True)
AutoModel.register(E2Config, E2Model, exist_ok=True)
AutoModelForZeroShotImageClassification.register(E2Config, E2Model, exist_ok=True)

__all__ = [  # lead: merge the blocks' lists into one __all__
    "__version__",
    "minilm_path",
    "resolve_pretrained",
    "E2Config",
    "E2PreTrainedModel",
    "E2Model",
    "E2FusionBlock",
    "E2Output",
    "E2VisionOutput",
    "OneImagePerProductSampler",
]
# --- end E2 -------------------------------------------------------------------------------------------------------
