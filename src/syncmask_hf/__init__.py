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
