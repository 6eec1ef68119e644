"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained

# --- decap: DeCap-style zero-shot captioner (issue 7) -------------------------------------------------------------
from .captioning import caption_images, encode_images, encode_texts, train_decap
from .configuration_decap import FashionDeCapConfig
from .modeling_decap import FashionDeCapForCaptioning, FashionDeCapOutput, FashionDeCapPreTrainedModel


def _register_decap():
    """AutoConfig/AutoModel find the captioner by model type; `register_for_auto_class` makes save_pretrained write
    `auto_map` so Hub copies load with trust_remote_code. AutoModel maps to the captioner itself (it is the whole model
    and generates); it is not registered with AutoModelForCausalLM, whose contract (generate from input_ids alone) it
    does not meet: it always needs a prefix embedding."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(FashionDeCapConfig.model_type, FashionDeCapConfig, exist_ok=True)
    AutoModel.register(FashionDeCapConfig, FashionDeCapForCaptioning, exist_ok=True)
    FashionDeCapConfig.register_for_auto_class()
    FashionDeCapForCaptioning.register_for_auto_class("AutoModel")


_register_decap()
# --- end decap ------------------------------------------------------------------------------------------------------
