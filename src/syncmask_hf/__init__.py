"""syncmask_hf: fashion vision-language pretraining (SyncMask, E2, FashionFAE) for the Hugging Face ecosystem.

Importing the package registers every model with transformers' Auto classes.
"""

__version__ = "0.1.0"

from .pretrained import minilm_path, resolve_pretrained  # noqa: E402

# >>> FashionFAE (issue 5) >>>
# isort: split
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining  # noqa: E402

from .configuration_fashionfae import FashionFAEConfig  # noqa: E402
from .modeling_fashionfae import FashionFAEForPreTraining, FashionFAEModel, FashionFAEPreTrainedModel  # noqa: E402, F401
from .task_sampler import FashionFAETaskSampler  # noqa: E402, F401

AutoConfig.register("fashionfae", FashionFAEConfig, exist_ok=True)
AutoModel.register(FashionFAEConfig, FashionFAEModel, exist_ok=True)
AutoModelForPreTraining.register(FashionFAEConfig, FashionFAEForPreTraining, exist_ok=True)
# save_pretrained writes auto_map, so Hub copies load with trust_remote_code=True without this package.
FashionFAEConfig.register_for_auto_class()
FashionFAEModel.register_for_auto_class("AutoModel")
FashionFAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
# <<< FashionFAE (issue 5) <<<
