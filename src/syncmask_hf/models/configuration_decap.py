"""Configuration of the DeCap-style zero-shot captioner (`FashionDeCapForCaptioning`).

DeCap (Li et al., ICLR 2023), used by E2 for zero-shot captioning: a small GPT-2 decoder is trained on text only,
conditioned on the frozen encoder's (L2-normalised) text embedding mapped to `prefix_length` prefix vectors. At
inference an image embedding is projected onto a memory of text embeddings (softmax-weighted sum at
`memory_temperature`) so the decoder sees an input from the distribution it was trained on.

This file may import only transformers / torch (it is copied flat to the Hub as remote code).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config, PreTrainedConfig

# A small from-scratch decoder (DeCap trains a small GPT-2-style decoder from scratch rather than fine-tuning GPT-2;
# the exact width/depth here is our choice, overridable through `text_config`).
DEFAULT_DECODER = {
    "n_embd": 512,
    "n_layer": 4,
    "n_head": 8,
    "n_positions": 128,
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
}


@strict
class FashionDeCapConfig(PreTrainedConfig):
    r"""
    text_config (`dict` or `GPT2Config`, *optional*):
        The GPT-2 decoder. `vocab_size`, `bos_token_id`, `eos_token_id`, `pad_token_id` are overwritten by the
        top-level fields below so that one place owns them. `n_positions` must cover `prefix_length` plus the longest
        text. Defaults to a 4-layer, 8-head, 512-wide decoder with 128 positions.
    prefix_dim (`int`, defaults to 512):
        Width of the joint-space embedding that conditions the decoder (E2 / SyncMask / FashionFAE / CLIP
        `projection_dim`).
    prefix_length (`int`, defaults to 1):
        Number of prefix vectors the embedding is mapped to. DeCap uses 1 (a single linear map).
    projection_hidden_dim (`int`, *optional*):
        `None` (DeCap): one `Linear(prefix_dim, prefix_length * n_embd)`. An integer: a ClipCap-style two-layer
        MLP with a tanh in between.
    normalize_prefix (`bool`, defaults to `True`):
        L2-normalise the conditioning embedding inside `forward` (DeCap normalises both text and image features;
        idempotent when callers already normalised).
    noise_std (`float`, defaults to 0.0):
        Standard deviation of Gaussian noise added to the normalised embedding during training only. DeCap uses no
        noise (the memory projection closes the modality gap); CapDec's choice is variance 0.016 (std ~0.126).
    memory_size (`int`, defaults to 0):
        Number of text embeddings in the inference memory. Set by `set_memory`; it sizes the persistent `memory`
        buffer so a saved checkpoint carries its memory and loads self-contained.
    memory_temperature (`float`, defaults to 0.01):
        Softmax temperature of the projection onto the memory (DeCap: 1/100).
    vocab_size (`int`, defaults to 30522), bos_token_id (101), eos_token_id (102), pad_token_id (0):
        The tokenizer the decoder speaks. Defaults: the BERT/MiniLM vocabulary used by the project's encoders,
        with [CLS] as BOS and [SEP] as EOS. For GPT-2's tokenizer use 50257 / 50256 / 50256 / 50256.
    """

    model_type = "fashion_decap"
    sub_configs_defaults = {"text_config": GPT2Config}

    text_config: dict | GPT2Config | None = None
    prefix_dim: int = 512
    prefix_length: int = 1
    projection_hidden_dim: int | None = None
    normalize_prefix: bool = True
    noise_std: float | int = 0.0
    memory_size: int = 0
    memory_temperature: float | int = 0.01
    vocab_size: int = 30522
    bos_token_id: int | None = 101
    eos_token_id: int | list[int] | None = 102
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = dict(DEFAULT_DECODER)
        super().__post_init__(**kwargs)
        # One owner for the vocabulary and special ids: the top-level fields.
        self.text_config.vocab_size = self.vocab_size
        self.text_config.bos_token_id = self.bos_token_id
        self.text_config.eos_token_id = self.eos_token_id
        self.text_config.pad_token_id = self.pad_token_id
        self.text_config.tie_word_embeddings = self.tie_word_embeddings

    def validate_fields(self) -> None:
        """The captioner's checks; `config.validate()` runs them (at construction and before every save), with
        transformers' own."""
        for name in ("prefix_dim", "prefix_length", "memory_size"):
            value = getattr(self, name)
            if value < (0 if name == "memory_size" else 1):
                raise ValueError(f"FashionDeCapConfig.{name} must be positive, got {value}.")
        if self.memory_temperature <= 0:
            raise ValueError(f"FashionDeCapConfig.memory_temperature must be > 0, got {self.memory_temperature}.")
        if self.noise_std < 0:
            raise ValueError(f"FashionDeCapConfig.noise_std must be >= 0, got {self.noise_std}.")
        if self.prefix_length >= self.text_config.n_positions:
            raise ValueError(
                f"prefix_length={self.prefix_length} leaves no room for text in text_config.n_positions="
                f"{self.text_config.n_positions}; raise n_positions."
            )


__all__ = ["FashionDeCapConfig"]
