"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# --- E2 (issue 4) -------------------------------------------------------------------------------------------------
from transformers import (  # noqa: E402
    AutoConfig as _E2AutoConfig,
    AutoModel as _E2AutoModel,
    AutoModelForZeroShotImageClassification as _E2AutoZeroShot,
)

from .configuration_e2 import E2Config  # noqa: E402
from .e2_sampling import OneImagePerProductSampler  # noqa: E402
from .modeling_e2 import E2FusionBlock, E2Model, E2Output, E2PreTrainedModel, E2VisionOutput  # noqa: E402

_E2AutoConfig.register("e2", E2Config, exist_ok=True)
_E2AutoModel.register(E2Config, E2Model, exist_ok=True)
_E2AutoZeroShot.register(E2Config, E2Model, exist_ok=True)

__all__ = [  # lead: merge the blocks' lists into one __all__
    *globals().get("__all__", []),
    "E2Config",
    "E2PreTrainedModel",
    "E2Model",
    "E2FusionBlock",
    "E2Output",
    "E2VisionOutput",
    "OneImagePerProductSampler",
]
# --- end E2 -------------------------------------------------------------------------------------------------------
