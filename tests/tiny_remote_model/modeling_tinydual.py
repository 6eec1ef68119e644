"""A tiny CLIP-interface dual encoder (CLIP vision tower + BERT text tower) saved with remote code by the Hub tests.

It imports only its sibling config with a single-dot relative import, as the Hub's flat copies require."""

import torch
from torch import nn
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_tinydual import TinyDualConfig


class TinyDualModel(PreTrainedModel):
    config_class = TinyDualConfig
    base_model_prefix = "tiny_dual"

    def __init__(self, config: TinyDualConfig):
        super().__init__(config)
        common = dict(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
        )
        self.vision_model = CLIPVisionModel(
            CLIPVisionConfig(image_size=config.image_size, patch_size=config.patch_size, **common)
        )
        self.text_model = BertModel(BertConfig(vocab_size=config.vocab_size, max_position_embeddings=64, **common))
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    # CLIP's (transformers 5) contract: `pooler_output` is the projected, unnormalised embedding.
    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        out = self.vision_model(pixel_values=pixel_values)
        return BaseModelOutputWithPooling(
            last_hidden_state=out.last_hidden_state, pooler_output=self.visual_projection(out.pooler_output)
        )

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.text_projection(hidden[:, 0]))

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None):
        image_embeds = self.get_image_features(pixel_values).pooler_output
        text_embeds = self.get_text_features(input_ids, attention_mask).pooler_output
        return nn.functional.normalize(image_embeds, dim=-1) @ nn.functional.normalize(text_embeds, dim=-1).T
