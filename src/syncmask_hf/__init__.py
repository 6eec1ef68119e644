"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes (AutoConfig, AutoModel,
AutoModelForPreTraining, AutoProcessor), so `AutoModel.from_pretrained(folder)` works for local checkpoints; saved
folders also carry `auto_map` and the model code, so Hub copies load with `trust_remote_code=True` without this
package.
"""

__version__ = "0.1.0"

import transformers
from transformers import AutoConfig, AutoModel, AutoProcessor

from . import data, evaluation
from .captioner import caption_images, train_decap
from .data import (
    CATALOG_FEATURES,
    GroupedSemiHardBatchSampler,
    OneImagePerProductSampler,
    RandomBatchSampler,
    colour_variant_triplets,
    load_catalog,
    load_fashioniq,
    product_disjoint_split,
)
from .data.collator import FashionCollator, split_title
from .hub import HubFolderError, check_model_folder, push_demo_space, push_model_folder, write_model_card
from .models.configuration_decap import FashionDeCapConfig
from .models.configuration_e2 import E2Config
from .models.configuration_fashionfae import FashionFAEConfig
from .models.configuration_syncmask import SyncMaskConfig
from .models.image_loading import FashionInputError, load_image
from .models.masking import synchronized_masks, synchronized_scores
from .models.modeling_decap import FashionDeCapForCaptioning, FashionDeCapOutput, FashionDeCapPreTrainedModel
from .models.modeling_e2 import (
    E2FusionBlock,
    E2Model,
    E2Output,
    E2PreTrainedModel,
    E2TextModelWithProjection,
    E2VisionModelWithProjection,
    E2VisionOutput,
)
from .models.modeling_fashionfae import (
    FashionFAEForPreTraining,
    FashionFAEForPreTrainingOutput,
    FashionFAEModel,
    FashionFAEOutput,
    FashionFAEPreTrainedModel,
    FashionFAETextModelWithProjection,
    FashionFAEVisionModelWithProjection,
)
from .models.modeling_syncmask import (
    SyncMaskForImageTextRetrieval,
    SyncMaskForPreTraining,
    SyncMaskForProductClassification,
    SyncMaskForTextGuidedImageRetrieval,
    SyncMaskModel,
    SyncMaskPreTrainedModel,
    SyncMaskTextModelWithProjection,
    SyncMaskVisionModelWithProjection,
)
from .models.pretrained import minilm_path, resolve_pretrained
from .models.processing_fashion import FashionProcessor, normalize_text, stable_id
from .models.task_sampler import FashionFAETaskSampler
from .presets import list_presets, preset_path
from .specs import SPECS, ModelSpec, get_spec
from .tgir import ComposedQueryModel

# --- Auto registration ---------------------------------------------------------------------------------------------
# Each model's Auto classes come from its spec. The processor is found by name from processor_config.json and for
# each model config; `register_for_auto_class` makes save_pretrained write `auto_map` so Hub copies load with
# trust_remote_code.
FashionProcessor.register_for_auto_class("AutoProcessor")
for _spec in SPECS.values():
    AutoConfig.register(_spec.name, _spec.config_class, exist_ok=True)
    for _auto, _model_class in _spec.auto_classes.items():
        getattr(transformers, _auto).register(_spec.config_class, _model_class, exist_ok=True)
    AutoProcessor.register(_spec.config_class, FashionProcessor, exist_ok=True)
# The captioner is the whole model and generates, but always from an embedding prefix, so it is an AutoModel and
# not an AutoModelForCausalLM (whose contract is generating from input_ids alone). It is no pretraining model, so
# it has no spec.
AutoConfig.register("fashion_decap", FashionDeCapConfig, exist_ok=True)
AutoModel.register(FashionDeCapConfig, FashionDeCapForCaptioning, exist_ok=True)

__all__ = [
    "__version__",
    "CATALOG_FEATURES",
    "ComposedQueryModel",
    "HubFolderError",
    "check_model_folder",
    "colour_variant_triplets",
    "push_demo_space",
    "push_model_folder",
    "write_model_card",
    "E2Config",
    "FashionDeCapConfig",
    "FashionDeCapForCaptioning",
    "FashionDeCapOutput",
    "FashionDeCapPreTrainedModel",
    "caption_images",
    "train_decap",
    "E2FusionBlock",
    "E2Model",
    "E2Output",
    "E2PreTrainedModel",
    "E2TextModelWithProjection",
    "E2VisionModelWithProjection",
    "E2VisionOutput",
    "FashionFAEConfig",
    "FashionFAEForPreTraining",
    "FashionFAEForPreTrainingOutput",
    "FashionFAEModel",
    "FashionFAEOutput",
    "FashionFAEPreTrainedModel",
    "FashionFAETextModelWithProjection",
    "FashionFAEVisionModelWithProjection",
    "FashionFAETaskSampler",
    "OneImagePerProductSampler",
    "FashionCollator",
    "FashionInputError",
    "FashionProcessor",
    "GroupedSemiHardBatchSampler",
    "RandomBatchSampler",
    "SyncMaskConfig",
    "SyncMaskForImageTextRetrieval",
    "SyncMaskForPreTraining",
    "SyncMaskForProductClassification",
    "SyncMaskForTextGuidedImageRetrieval",
    "SyncMaskModel",
    "SyncMaskPreTrainedModel",
    "SyncMaskTextModelWithProjection",
    "SyncMaskVisionModelWithProjection",
    "data",
    "evaluation",
    "load_catalog",
    "load_fashioniq",
    "load_image",
    "minilm_path",
    "list_presets",
    "get_spec",
    "ModelSpec",
    "SPECS",
    "preset_path",
    "normalize_text",
    "product_disjoint_split",
    "resolve_pretrained",
    "split_title",
    "stable_id",
    "synchronized_masks",
    "synchronized_scores",
]
