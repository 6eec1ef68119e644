"""Config of the tiny remote-code dual encoder used by the Hub tests."""

from transformers import PreTrainedConfig


class TinyDualConfig(PreTrainedConfig):
    model_type = "tiny_dual"

    vocab_size: int = 30522
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    image_size: int = 32
    patch_size: int = 8
    projection_dim: int = 16
