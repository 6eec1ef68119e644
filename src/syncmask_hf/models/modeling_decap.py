"""DeCap-style zero-shot captioner: a GPT-2 decoder conditioned on a joint-space embedding as a prefix.

Training (text only): `prefix_embeds` = the frozen encoder's L2-normalised text embedding of a product text,
`input_ids` = the same text ([CLS] ... [SEP] with the BERT vocabulary); the loss is next-token cross-entropy over
the text tokens only (prefix positions never carry a target).

Inference: `image_embeds` are projected onto a memory of text embeddings (`project_to_memory`: softmax of the
cosine similarities at `memory_temperature`, weighted sum, re-normalised; DeCap's projection) and decoded with
transformers' `generate()` (greedy, beam search, sampling), starting from BOS.

The memory is a persistent buffer of shape (config.memory_size, prefix_dim): `set_memory` replaces it and updates
`config.memory_size`, so `save_pretrained` writes a self-contained checkpoint (a 100k x 512 fp32 memory adds 200 MB;
use `set_memory` after loading instead when that matters).

Remote code: imports only transformers, torch and the sibling configuration file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, GPT2LMHeadModel, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_decap import FashionDeCapConfig

# transformers >= 5.24 names the decoder cache `cache` (outputs and forward arguments; `past_key_values` is kept as
# a deprecated alias); earlier 5.x releases name it `past_key_values`. The captioner speaks whichever is installed.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class FashionDeCapOutput(CausalLMOutputWithPast):
    """Output of `FashionDeCapForCaptioning.forward`: transformers' causal-LM output plus the prefix used.

    loss: next-token cross-entropy over text tokens (when `labels` are given or `return_loss=True`).
    logits: (B, L, vocab) scores at the text positions only (the prefix positions are dropped).
    cache / past_key_values (by the installed transformers' name, `CACHE_NAME`): the decoder cache (prefix + text).
    prefix_embeds: (B, prefix_dim) the normalised embedding that conditioned this call (None on cached steps).
    """

    prefix_embeds: torch.FloatTensor | None = None


class FashionDeCapPreTrainedModel(PreTrainedModel):
    config_class = FashionDeCapConfig
    config: FashionDeCapConfig
    base_model_prefix = "decap"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2Block"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        # The GPT-2 sub-model initialises its own modules (transformers dispatches to it); this covers the prefix map.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)


class PrefixProjection(nn.Module):
    """Joint-space embedding (B, prefix_dim) -> prefix_length decoder input vectors (B, P, n_embd).

    DeCap: a single Linear to one vector; `projection_hidden_dim` switches to a ClipCap-style Linear-tanh-Linear MLP.
    """

    def __init__(self, config: FashionDeCapConfig):
        super().__init__()
        self.prefix_length = config.prefix_length
        self.hidden_size = config.text_config.n_embd
        out = config.prefix_length * self.hidden_size
        if config.projection_hidden_dim is None:
            self.layers = nn.Sequential(nn.Linear(config.prefix_dim, out))
        else:
            self.layers = nn.Sequential(
                nn.Linear(config.prefix_dim, config.projection_hidden_dim),
                nn.Tanh(),
                nn.Linear(config.projection_hidden_dim, out),
            )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).view(embeds.shape[0], self.prefix_length, self.hidden_size)


class FashionDeCapForCaptioning(FashionDeCapPreTrainedModel, GenerationMixin):
    """GPT-2 caption decoder over a joint embedding space, with a text-embedding memory for zero-shot captioning."""

    def __init__(self, config: FashionDeCapConfig):
        super().__init__(config)
        self.decoder = GPT2LMHeadModel(config.text_config)
        self.prefix_projection = PrefixProjection(config)
        self.register_buffer("memory", torch.zeros(config.memory_size, config.prefix_dim), persistent=True)
        self.post_init()

    # ----------------------------------------------------------------------------------------------- embeddings
    def get_input_embeddings(self):
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.decoder.set_output_embeddings(new_embeddings)

    # --------------------------------------------------------------------------------------------------- memory
    def _check_embeds(self, embeds: torch.Tensor, name: str) -> None:
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[-1] != self.config.prefix_dim:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(
                f"{name} must be a (batch, {self.config.prefix_dim}) tensor (config.prefix_dim, the encoder's "
                f"joint-space width), got {shape}. Use embeddings from the encoder this captioner was trained over."
            )

    @torch.no_grad()
    def set_memory(self, text_embeds: torch.Tensor) -> None:
        """Store N text embeddings (L2-normalised here) as the projection memory; updates `config.memory_size`."""
        self._check_embeds(text_embeds, "text_embeds")
        if text_embeds.shape[0] == 0:
            raise ValueError("set_memory got 0 text embeddings; pass the embedded training texts (N >= 1).")
        if not torch.isfinite(text_embeds).all():
            raise ValueError("set_memory got non-finite text embeddings (NaN/inf); check the encoder outputs.")
        self.memory = F.normalize(text_embeds.detach().float(), dim=-1).to(self.memory.device)
        self.config.memory_size = int(text_embeds.shape[0])

    def project_to_memory(self, image_embeds: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """DeCap's projection: normalise(softmax(x . memory^T / temperature) @ memory) with x = normalise(image).

        A small temperature approaches the nearest memory entry; a large one the memory mean.
        """
        self._check_embeds(image_embeds, "image_embeds")
        if self.memory.shape[0] == 0:
            raise ValueError(
                "The text-embedding memory is empty: call `model.set_memory(text_embeds)` with the (frozen encoder's) "
                "text embeddings of the training texts before captioning images, or pass `prefix_embeds` directly."
            )
        temperature = self.config.memory_temperature if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        memory = self.memory.to(image_embeds.device)
        query = F.normalize(image_embeds.float(), dim=-1)
        weights = torch.softmax(query @ memory.T / temperature, dim=-1)
        return F.normalize(weights @ memory, dim=-1).to(image_embeds.dtype)

    # -------------------------------------------------------------------------------------------------- forward
    def _prefix_from(self, prefix_embeds, image_embeds, batch_size):
        if prefix_embeds is not None and image_embeds is not None:
            raise ValueError(
                "Pass either prefix_embeds (used as is) or image_embeds (projected onto memory), not both."
            )
        if image_embeds is not None:
            prefix_embeds = self.project_to_memory(image_embeds)
        if prefix_embeds is None:
            raise ValueError(
                "FashionDeCapForCaptioning needs a conditioning embedding: `prefix_embeds` (e.g. the text embedding "
                "during training) or `image_embeds` (projected onto the text memory) on the first (uncached) call."
            )
        self._check_embeds(prefix_embeds, "prefix_embeds")
        if prefix_embeds.shape[0] != batch_size:
            raise ValueError(f"prefix_embeds has batch {prefix_embeds.shape[0]} but input_ids has batch {batch_size}.")
        if self.config.normalize_prefix:
            prefix_embeds = F.normalize(prefix_embeds, dim=-1)
        if self.training and self.config.noise_std > 0:
            prefix_embeds = prefix_embeds + torch.randn_like(prefix_embeds) * self.config.noise_std
        return prefix_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_loss: bool = False,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> FashionDeCapOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, L)`): text tokens, starting with BOS.
        attention_mask (`(B, L)`): text mask (the prefix is always attended); during cached generation it covers the
            whole text so far.
        prefix_embeds (`(B, prefix_dim)`): the conditioning embedding, used as is (normalised when
            `config.normalize_prefix`). Training: the text embedding.
        image_embeds (`(B, prefix_dim)`): alternative to `prefix_embeds`: projected onto the memory first.
        labels (`(B, L)`): targets aligned with `input_ids` (shifted inside; -100 ignored).
        position_ids (`(B, L)`): text-local positions (0 = first text token); the prefix occupies positions
            0..P-1 of the decoder, so text position t is fed to the decoder as P + t.
        return_loss (`bool`): when `labels` is None, use `input_ids` with padding (attention_mask == 0) ignored.
        cache / past_key_values: the decoder cache of earlier steps (either name, whichever transformers passes).
        """
        if cache is None:
            cache = past_key_values
        if input_ids is None:
            raise ValueError("input_ids are required (start generation/training texts with the BOS token).")
        batch_size, length = input_ids.shape
        prefix_length = self.config.prefix_length
        past_length = cache.get_seq_length() if cache is not None else 0
        first_call = past_length == 0

        token_embeds = self.decoder.transformer.wte(input_ids)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                start = max(past_length - prefix_length, 0)
                position_ids = torch.arange(start, start + length, device=input_ids.device).unsqueeze(0)
        position_ids = position_ids.expand(batch_size, -1) + prefix_length

        used_prefix = None
        if first_call:
            used_prefix = self._prefix_from(prefix_embeds, image_embeds, batch_size)
            prefix_vectors = self.prefix_projection(used_prefix.to(token_embeds.dtype))
            inputs_embeds = torch.cat([prefix_vectors, token_embeds], dim=1)
            prefix_positions = torch.arange(prefix_length, device=input_ids.device).expand(batch_size, -1)
            position_ids = torch.cat([prefix_positions, position_ids], dim=1)
        else:
            inputs_embeds = token_embeds
        # Positions never exceed sequence indices, so this shape-only bound avoids a device sync per decoding step.
        if past_length + inputs_embeds.shape[1] > self.config.text_config.n_positions:
            raise ValueError(
                f"Sequence too long: prefix ({prefix_length}) + text = {past_length + inputs_embeds.shape[1]} "
                f"positions but text_config.n_positions={self.config.text_config.n_positions}; truncate the text or "
                "raise it."
            )
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch_size, prefix_length)
            attention_mask = torch.cat([ones, attention_mask], dim=1)

        outputs = self.decoder.transformer(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **{CACHE_NAME: cache},
        )
        text_hidden = outputs.last_hidden_state[:, -length:]
        if logits_to_keep:
            text_hidden = text_hidden[:, -logits_to_keep:]
        logits = self.decoder.lm_head(text_hidden)

        loss = None
        if labels is None and return_loss:
            labels = (
                input_ids.masked_fill(attention_mask[:, prefix_length:] == 0, -100)
                if attention_mask is not None
                else input_ids
            )
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels/return_loss need all text logits; leave logits_to_keep at 0.")
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return FashionDeCapOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            prefix_embeds=used_prefix,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    # ----------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config=None,
        *,
        prefix_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        memory_temperature: float | None = None,
        **kwargs,
    ):
        """`GenerationMixin.generate` conditioned on `prefix_embeds` or on `image_embeds` (projected onto the memory
        once here, at `memory_temperature` or `config.memory_temperature`). Without `inputs`, decoding starts from BOS.
        All generation options work (`num_beams`, `max_new_tokens`, `do_sample`, ...)."""
        if prefix_embeds is not None and image_embeds is not None:
            raise ValueError("Pass either prefix_embeds or image_embeds to generate, not both.")
        if image_embeds is not None:
            prefix_embeds = self.project_to_memory(image_embeds, memory_temperature)
        if prefix_embeds is None:
            raise ValueError("generate needs `image_embeds` (projected onto the memory) or `prefix_embeds`.")
        self._check_embeds(prefix_embeds, "prefix_embeds")
        return super().generate(inputs, generation_config, prefix_embeds=prefix_embeds, **kwargs)

    def caption(
        self,
        image_embeds: torch.Tensor,
        tokenizer,
        max_new_tokens: int = 40,
        num_beams: int = 1,
        memory_temperature: float | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """Caption image embeddings (projected onto the memory) and decode to strings with `tokenizer`."""
        tokens = self.generate(
            image_embeds=image_embeds,
            memory_temperature=memory_temperature,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            **generate_kwargs,
        )
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [tidy_wordpiece_text(text) for text in texts]


# WordPiece decoding puts spaces around every punctuation token ("ankle - length", "women ' s"); inside a word they
# were not in the text, and the caption metrics read "ankle-length" as one word, so rejoin them. (A spaced dash
# between two words decodes the same way and becomes a hyphen: rarer in product texts than compound words.)
_SPACED_INNER_PUNCT = re.compile(r"(?<=\w) ([-/']) (?=\w)")


def tidy_wordpiece_text(text: str) -> str:
    """Undo WordPiece's spacing around intra-word punctuation: "ankle - length" -> "ankle-length"."""
    return _SPACED_INNER_PUNCT.sub(r"\1", text).strip()


# save_pretrained writes `auto_map` and copies this code, so Hub copies load with trust_remote_code=True.
FashionDeCapConfig.register_for_auto_class()
FashionDeCapForCaptioning.register_for_auto_class("AutoModel")

__all__ = ["FashionDeCapForCaptioning", "FashionDeCapPreTrainedModel", "FashionDeCapOutput", "tidy_wordpiece_text"]
