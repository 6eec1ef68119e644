"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# --- decap: DeCap-style zero-shot captioner (issue 7) -------------------------------------------------------------
from transformers import AutoConfig, AutoModel  # noqa: E402

from .configuration_decap import FashionDeCapConfig  # noqa: E402
from .modeling_decap import FashionDeCapForCaptioning, FashionDeCapOutput, FashionDeCapPreTrainedModel  # noqa: E402

AutoConfig.register(FashionDeCapConfig.model_type, FashionDeCapConfig, exist_ok=True)
# AutoModel -> the captioner itself (it is the whole model and generates). Not registered with AutoModelForCausalLM:
# it cannot generate from input_ids alone (it needs a prefix embedding), which that Auto class promises.
AutoModel.register(FashionDeCapConfig, FashionDeCapForCaptioning, exist_ok=True)
FashionDeCapConfig.register_for_auto_class()
FashionDeCapForCaptioning.register_for_auto_class("AutoModel")
# --- end decap ------------------------------------------------------------------------------------------------------
