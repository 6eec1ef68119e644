"""E2 configuration: a CLIP configuration plus the selection tokens, fusion blocks and regional loss of E2.

E2 ("Easy Regional Contrastive Learning of Expressive Fashion Representations", NeurIPS 2024) keeps CLIP's towers
and adds, inside the image tower, learnable *selection tokens* (a few per tag entity: brand, season, ...) and *fusion
blocks* that let each selection token pick one image patch. Everything CLIP has is configured by the CLIP text /
vision sub-configs, so any transformers CLIP checkpoint maps onto an E2 config (see `E2Config.from_clip_config`).

This file is copied flat next to `modeling_e2.py` for remote code: it imports only transformers.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig

DEFAULT_ENTITIES = ["brand", "season", "subcategory", "description"]
OPTIONAL_ENTITIES = ["composition"]
PROJECTION_INITS = ("clip", "random")


def default_fusion_layers(num_hidden_layers: int) -> list[int]:
    """Where the fusion blocks sit by default, as "after layer k" (1-based) of an `num_hidden_layers` tower.

    The paper (12 layers) fuses after layers 8 and 11, so the last layer sees only the selection tokens and CLS.
    Rule for other depths (our choice, proportional): the last block after layer L-1 (one layer always follows, as in
    the paper) and the first after layer round(2L/3), kept strictly before the last: 12 -> [8, 11], 24 -> [16, 23],
    6 -> [4, 5], 4 -> [2, 3], 3 -> [1, 2]; a 2-layer tower gets one block after layer 1.
    """
    if num_hidden_layers < 2:
        raise ValueError(
            f"E2 needs a vision tower of at least 2 layers to place a fusion block (got num_hidden_layers="
            f"{num_hidden_layers}); use more layers or set use_fusion_blocks=False."
        )
    last = num_hidden_layers - 1
    first = min(max(round(2 * num_hidden_layers / 3), 1), last - 1)
    return [first, last] if first >= 1 else [last]


@strict
class E2Config(PreTrainedConfig):
    r"""Configuration of [`E2Model`].

    Args:
        text_config (`dict` or `CLIPTextConfig`): the CLIP text tower.
        vision_config (`dict` or `CLIPVisionConfig`): the CLIP vision tower.
        projection_dim (`int`, defaults to 512): the joint embedding size (CLIP's).
        logit_scale_init_value (`float`, defaults to 2.6592): initial log of the contrastive scale (CLIP's value,
            ln(1/0.07)); `from_clip` copies the checkpoint's learned value instead.
        entities (`list[str]`, defaults to brand, season, subcategory, description): the tag entities, each with its
            own selection tokens, projection and regional loss; their order is the order of `entity_input_ids`.
            The paper's 5-entity variant adds "composition". Names must be identifiers (they name parameters).
        tokens_per_entity (`int`, defaults to 2): selection tokens per entity (the paper: 2).
        fusion_layers (`list[int]`, *optional*): fusion blocks sit after these layers (1-based, increasing, each in
            1..num_hidden_layers). Default: `default_fusion_layers(num_hidden_layers)` = [8, 11] for 12 layers.
        gumbel_tau (`float`, defaults to 1.0): temperature of the hard Gumbel-softmax patch selection in training.
        global_loss_weight / regional_loss_weight (`float`, 0.5 / 0.5): loss = w_g * global + w_r * regional.
        use_selection_tokens (`bool`, defaults to True): ablation switch; False removes the selection tokens and with
            them the fusion blocks and the regional loss, which need them (the CLIP-FT baseline).
        use_fusion_blocks (`bool`, *optional*): ablation switch; False keeps the selection tokens (they still attend
            through the ordinary layers) but removes the fusion blocks. Default: `use_selection_tokens`.
        use_regional_loss (`bool`, *optional*): ablation switch; False trains with the global loss only (and drops
            the per-entity heads, which only that loss trains).
            Default: `use_selection_tokens`.
        projection_init (`str`, defaults to "clip"): how `E2Model.from_clip` initialises the global and per-entity
            heads. "clip": copies of CLIP's post-LayerNorm and visual projection, so E2 starts from CLIP's joint space
            (and, with the new parts off, equals CLIP exactly). "random": fresh heads, as in the authors' code.
            The paper does not say; this is our choice, "clip" by default.
        full_text (`str`, defaults to "tags_and_description"): the text of the global contrastive loss, which the
            collator builds (`FashionCollator(e2_text=...)`): the tag values followed by the description, as in the
            authors' code; "description" = the description alone. The description entity is the description only.
        initializer_factor (`float`, defaults to 1.0): CLIP's init scale factor.
        encode_distinct_entity_texts (`bool`, defaults to True): embed each distinct entity value text of a batch
            once (brands and seasons repeat across a batch), in two length buckets trimmed of padding, and share the
            embedding among its rows; False embeds every row's padded text (same losses and gradients: the text
            tower has no dropout; kept for comparison).
    """

    model_type = "e2"
    sub_configs_defaults = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig}

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    entities: list[str] | None = None
    tokens_per_entity: int = 2
    fusion_layers: list[int] | None = None
    gumbel_tau: float = 1.0
    global_loss_weight: float = 0.5
    regional_loss_weight: float = 0.5
    use_selection_tokens: bool = True
    use_fusion_blocks: bool | None = None
    use_regional_loss: bool | None = None
    projection_init: str = "clip"
    full_text: str = "tags_and_description"
    initializer_factor: float = 1.0
    encode_distinct_entity_texts: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.entities = list(DEFAULT_ENTITIES if self.entities is None else self.entities)
        self.use_selection_tokens = bool(self.use_selection_tokens)
        # The two ablation switches follow the selection tokens unless given.
        if self.use_fusion_blocks is None:
            self.use_fusion_blocks = self.use_selection_tokens
        if self.use_regional_loss is None:
            self.use_regional_loss = self.use_selection_tokens
        if self.fusion_layers is None:
            layers = self.vision_config.num_hidden_layers
            self.fusion_layers = default_fusion_layers(layers) if self.use_fusion_blocks else []
        self.fusion_layers = [int(k) for k in self.fusion_layers]

    def validate_fields(self) -> None:
        """E2's checks; `config.validate()` runs them (at construction and before every save), with transformers'."""
        if self.full_text not in ("tags_and_description", "description"):
            raise ValueError(
                f"E2Config.full_text={self.full_text!r}: choose 'tags_and_description' (the authors') or 'description'."
            )
        entities = self.entities
        if not entities:
            raise ValueError("E2Config.entities is empty: give at least one tag entity, e.g. ['brand', 'season'].")
        bad = [e for e in entities if not isinstance(e, str) or not e.isidentifier()]
        if bad:
            raise ValueError(f"E2Config.entities {bad} are not identifiers (they name parameters): use e.g. 'brand'.")
        if len(set(entities)) != len(entities):
            raise ValueError(f"E2Config.entities has duplicates: {entities}.")
        if not isinstance(self.tokens_per_entity, int) or self.tokens_per_entity < 1:
            raise ValueError(f"E2Config.tokens_per_entity must be a positive int (got {self.tokens_per_entity!r}).")
        if not self.gumbel_tau > 0:
            raise ValueError(f"E2Config.gumbel_tau must be > 0 (got {self.gumbel_tau}).")
        if self.global_loss_weight < 0 or self.regional_loss_weight < 0:
            raise ValueError(
                f"E2Config loss weights must be >= 0 (got global {self.global_loss_weight}, "
                f"regional {self.regional_loss_weight})."
            )
        if self.projection_init not in PROJECTION_INITS:
            raise ValueError(
                f"E2Config.projection_init must be one of {PROJECTION_INITS} (got {self.projection_init!r})."
            )
        if not self.use_selection_tokens and (self.use_fusion_blocks or self.use_regional_loss):
            raise ValueError(
                "E2Config: use_fusion_blocks and use_regional_loss need the selection tokens; with "
                "use_selection_tokens=False leave them unset (they follow it) or set them to False."
            )
        layers = self.vision_config.num_hidden_layers
        if self.use_fusion_blocks:
            fl = self.fusion_layers
            if not fl:
                raise ValueError("E2Config.fusion_layers is empty while use_fusion_blocks=True: give e.g. [8, 11].")
            if any(not 1 <= k <= layers for k in fl) or any(b <= a for a, b in zip(fl, fl[1:])):
                raise ValueError(
                    f"E2Config.fusion_layers={fl} must be strictly increasing layer counts in 1..{layers} "
                    f"(the vision tower has {layers} layers); the default for this depth is "
                    f"{default_fusion_layers(layers) if layers >= 2 else []}."
                )
        if self.vision_config.hidden_size % self.vision_config.num_attention_heads:
            raise ValueError("E2Config.vision_config.hidden_size must be a multiple of num_attention_heads.")

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_selection_tokens(self) -> int:
        """Selection tokens prepended to CLS + patches (0 when switched off)."""
        return self.num_entities * self.tokens_per_entity if self.use_selection_tokens else 0

    @property
    def num_fusion_blocks(self) -> int:
        return len(self.fusion_layers) if self.use_fusion_blocks else 0

    @classmethod
    def from_clip_config(cls, clip_config: CLIPConfig, **kwargs) -> E2Config:
        """An E2 config with the towers, projection size and logit scale of `clip_config`, plus E2 fields."""
        kwargs.setdefault("projection_dim", clip_config.projection_dim)
        kwargs.setdefault("logit_scale_init_value", clip_config.logit_scale_init_value)
        kwargs.setdefault("initializer_factor", clip_config.initializer_factor)
        return cls(
            text_config=clip_config.text_config.to_dict(), vision_config=clip_config.vision_config.to_dict(), **kwargs
        )


__all__ = ["E2Config", "default_fusion_layers", "DEFAULT_ENTITIES", "OPTIONAL_ENTITIES"]
