"""The model library: what a Hub copy of a model folder needs, and nothing else.

`save_pretrained` copies a model's `modeling_*.py` / `configuration_*.py` (and the processor's
`processing_fashion.py`) with the siblings they import into the folder, where `syncmask_hf` is not installed, so
these files are flat and import only each other, the standard library, torch and transformers
(`tests/test_layout.py` checks it). The application (data, training, evaluation, search, publishing) lives beside
this package and depends on it, never the reverse.
"""

from .configuration_decap import FashionDeCapConfig
from .configuration_e2 import E2Config
from .configuration_fashionfae import FashionFAEConfig
from .configuration_syncmask import SyncMaskConfig
from .modeling_decap import FashionDeCapForCaptioning
from .modeling_e2 import E2Model, E2TextModelWithProjection, E2VisionModelWithProjection
from .modeling_fashionfae import (
    FashionFAEForPreTraining,
    FashionFAEModel,
    FashionFAETextModelWithProjection,
    FashionFAEVisionModelWithProjection,
)
from .modeling_syncmask import (
    SyncMaskForImageTextRetrieval,
    SyncMaskForPreTraining,
    SyncMaskForProductClassification,
    SyncMaskForTextGuidedImageRetrieval,
    SyncMaskModel,
    SyncMaskTextModelWithProjection,
    SyncMaskVisionModelWithProjection,
)
from .processing_fashion import FashionProcessor

__all__ = [
    "E2Config",
    "E2Model",
    "E2TextModelWithProjection",
    "E2VisionModelWithProjection",
    "FashionDeCapConfig",
    "FashionDeCapForCaptioning",
    "FashionFAEConfig",
    "FashionFAEForPreTraining",
    "FashionFAEModel",
    "FashionFAETextModelWithProjection",
    "FashionFAEVisionModelWithProjection",
    "FashionProcessor",
    "SyncMaskConfig",
    "SyncMaskForImageTextRetrieval",
    "SyncMaskForPreTraining",
    "SyncMaskForProductClassification",
    "SyncMaskForTextGuidedImageRetrieval",
    "SyncMaskModel",
    "SyncMaskTextModelWithProjection",
    "SyncMaskVisionModelWithProjection",
]
