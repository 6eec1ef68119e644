"""The ablations the three papers report, as arms of `examples/pretrain.py` runs at equal budgets in optimizer steps.

Each `Ablation` names the paper's claim, its arms (pretrain.py arguments beyond the common ones) and the pairs of
arms whose paired difference (method minus baseline, same seeds) is the paper's ablation. Each `Start` is one
starting point: from scratch, or the closest offline proxy of the paper's pretrained encoders. Runs with the same
command (an arm shared by two ablations) are trained once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

CLIP_FT = {"use_selection_tokens": False, "use_fusion_blocks": False, "use_regional_loss": False}


@dataclass(frozen=True)
class Arm:
    name: str
    args: tuple[str, ...] = ()
    # Evaluation-only arms read another table of examples/evaluate.py's results over the same trained model
    # (e.g. "full_itm": the ITM re-ranked rows); None = the held-out test results pretrain.py wrote.
    evaluate_args: tuple[str, ...] | None = None
    table: str = "full"
    # Captioning arms: examples/train_captioner.py over the trained encoder (same datasets and seed, so the
    # captioned images are the encoder's held-out products); the record gains BLEU-4 / CIDEr-D / ROUGE-L.
    caption_args: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Start:
    name: str
    args: tuple[str, ...] = ()  # "{prepared}" stands for the folder of the `prepare` run
    differs: str = ""  # how this start differs from the paper's, for RESULTS.md
    # The catalogues of this start's runs (default both); "{data}" is run.py's --data.
    datasets: tuple[str, ...] = ("hm:{data}/hm", "myntra:{data}/myntra")
    # pretrain.py arguments of one run made before this start's runs (e.g. the CLIP they adapt), shared by all.
    prepare: tuple[str, ...] = ()
    arms: tuple[str, ...] = ()  # only these arms from this start (default all)
    steps: int = 0  # this start's budget in optimizer steps (default the ablation's)


@dataclass(frozen=True)
class Ablation:
    name: str
    paper: str
    model: str
    config: str
    steps: int
    claim: str  # the paper's direction: the first arm of each comparison beats the second
    arms: tuple[Arm, ...]
    # (method arm, baseline arm); four arms (a, b, c, d) compare the gain a - b with the gain c - d: (a - b) - (c - d)
    comparisons: tuple[tuple[str, ...], ...]
    starts: tuple[Start, ...] = (Start("scratch", (), "both towers from random initialisation"),)
    metric: str = "full_sumr"  # the record metric of the verdict (cider_d for captioning)
    eval_every: int = 0  # 0: steps // 5
    batch_size: int = 32
    common: tuple[str, ...] = field(default_factory=tuple)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def override(fields: dict) -> tuple[str, str]:
    return ("--config_override", json.dumps(fields, sort_keys=True))


# The MiniLM proxy of SyncMask's and FashionFAE's BERT: real pretrained text weights (all-MiniLM-L6-v2, the preset's
# depth filled from its first layers), the vision tower from scratch (no vision weights exist offline).
# FashionFAE's copied weights learn at a fifth of the rate (its default). 600 steps: a step costs about 3x one from
# scratch. SyncMask's MiniLM start is not in the CPU study: with its momentum teacher a step took 7.3 s on one
# thread (syncmask-tiny, 51.5M parameters), 600 steps 73 minutes per run.
MINILM = Start(
    "minilm_text",
    ("--text_pretrained", "minilm"),
    "text tower from all-MiniLM-L6-v2's first layers (the paper: BERT-base), vision tower from scratch (the paper: "
    "an ImageNet ViT-B/16)",
    arms=("aetp_apir", "plain_mlm_mim"),
    steps=600,
)

# The CLIP-FT arm's arguments: every E2 switch off, the global loss alone at full weight.
CLIP_FT_ARGS = override({**CLIP_FT, "global_loss_weight": 1.0})

# E2's "adapt a pretrained CLIP", offline: a tiny CLIP (e2-tiny's towers, the CLIP-FT objective) trained on H&M,
# then adapted on Myntra with E2's two stages (new parts alone for the first fifth of the steps, then everything).
CLIP_HM_TO_MYNTRA = Start(
    "clip_hm_to_myntra",
    ("--vision_pretrained", "{prepared}/final"),
    "a tiny CLIP (e2-tiny's towers, CLIP-FT objective) trained 1500 steps from scratch on H&M, then adapted and "
    "evaluated on Myntra alone (the paper adapts OpenAI's CLIP ViT-B/32, trained on 400M web pairs, on FashionGen)",
    datasets=("myntra:{data}/myntra",),
    prepare=(
        "--model", "e2", "--config", "e2-tiny", "--dataset", "hm:{data}/hm", "--seed", "0", "--max_steps", "1500",
        *CLIP_FT_ARGS,
    ),
    arms=("e2_full", "clip_ft"),
)  # fmt: skip

ITM_EVAL = ("--tasks", "retrieval", "--rerank_k", "16")
# The DeCap captioner of examples/README.md at about half its budget (300 steps instead of 560), beam search with 3
# beams, one image of each of 300 held-out products.
CAPTION = ("--max_steps", "300", "--max_length", "32", "--decoder_width", "128", "--num_beams", "3")
CAPTION += ("--no_repeat_ngram_size", "3", "--max_eval_images", "300")

ABLATIONS: tuple[Ablation, ...] = (
    Ablation(
        name="syncmask_masking",
        paper="SyncMask",
        model="syncmask",
        config="syncmask-tiny",
        steps=600,
        claim="masks synchronized from the teacher's cross-attention beat random masks at the same ratios",
        arms=(Arm("synchronized"), Arm("random_masks", override({"masking_strategy": "random"}))),
        comparisons=(("synchronized", "random_masks"),),
    ),
    Ablation(
        name="syncmask_sampler",
        paper="SyncMask",
        model="syncmask",
        config="syncmask-tiny",
        steps=600,
        # From scratch the grouped sampler follows one epoch of random batches (pretrain.py's curriculum): a
        # random-init model collapses on batches of one sub-category.
        claim="grouped semi-hard batches beat random batches",
        # SyncMask's default sampler is that curriculum, so this arm is the same run as syncmask_masking's first.
        arms=(Arm("semi_hard_grouped"), Arm("random_batches", ("--sampler", "random"))),
        comparisons=(("semi_hard_grouped", "random_batches"),),
    ),
    Ablation(
        name="syncmask_itm_rerank",
        paper="SyncMask",
        model="syncmask",
        config="syncmask-tiny",
        steps=600,
        claim="re-ranking the top 16 by the ITM head beats ranking by ITC embeddings alone",
        arms=(
            # Both arms read one evaluate.py run over the models of syncmask_masking's first arm.
            Arm("itm_rerank", evaluate_args=ITM_EVAL, table="full_itm"),
            Arm("itc_only", evaluate_args=ITM_EVAL, table="full"),
        ),
        comparisons=(("itm_rerank", "itc_only"),),
    ),
    Ablation(
        name="e2_components",
        paper="E2",
        model="e2",
        config="e2-tiny",
        steps=1500,
        claim="E2 beats CLIP fine-tuned alone (CLIP-FT), and the fusion blocks and the regional loss each add to it",
        # Without selection tokens there is nothing for the fusion blocks to update or the regional loss to read
        # (E2Config refuses the combination): removing them removes all three, which is the clip_ft arm.
        arms=(
            Arm("e2_full"),
            Arm("clip_ft", CLIP_FT_ARGS),
            Arm("no_fusion_blocks", override({"use_fusion_blocks": False})),
            Arm("no_regional_loss", override({"use_regional_loss": False, "global_loss_weight": 1.0})),
        ),
        comparisons=(("e2_full", "clip_ft"), ("e2_full", "no_fusion_blocks"), ("e2_full", "no_regional_loss")),
        starts=(Start("scratch", (), "both towers from random initialisation"), CLIP_HM_TO_MYNTRA),
    ),
    Ablation(
        name="e2_batch_size",
        paper="E2",
        model="e2",
        config="e2-tiny",
        steps=1500,
        claim="E2's gain over CLIP-FT is larger at the smaller batch",
        arms=(
            Arm("e2_full_b16", ("--batch_size", "16")),
            Arm("clip_ft_b16", ("--batch_size", "16", *CLIP_FT_ARGS)),
            # The batch of every other ablation: the same commands as e2_components' arms, so trained once.
            Arm("e2_full_b32"),
            Arm("clip_ft_b32", CLIP_FT_ARGS),
        ),
        comparisons=(
            ("e2_full_b16", "clip_ft_b16"),
            ("e2_full_b32", "clip_ft_b32"),
            ("e2_full_b16", "clip_ft_b16", "e2_full_b32", "clip_ft_b32"),  # the gain at 16 minus the gain at 32
        ),
    ),
    Ablation(
        name="e2_captioning",
        paper="E2",
        model="e2",
        config="e2-tiny",
        steps=1500,
        metric="cider_d",
        claim="zero-shot captions decoded from E2's embeddings (DeCap-style) beat those decoded from CLIP-FT's",
        # The encoders are e2_components' e2_full and clip_ft runs (same commands: trained once).
        arms=(
            Arm("e2_full", caption_args=CAPTION),
            Arm("clip_ft", CLIP_FT_ARGS, caption_args=CAPTION),
        ),
        comparisons=(("e2_full", "clip_ft"),),
    ),
    Ablation(
        name="fashionfae_objectives",
        paper="FashionFAE",
        model="fashionfae",
        config="fashionfae-tiny",
        steps=1500,
        claim="AETP and APIR each beat plain MLM and MIM, and together most",
        arms=(
            Arm("aetp_apir"),
            Arm("plain_mlm_mim", override({"aetp": False, "apir": False})),
            Arm("aetp_only", override({"apir": False})),
            Arm("apir_only", override({"aetp": False})),
        ),
        comparisons=(
            ("aetp_apir", "plain_mlm_mim"),
            ("aetp_only", "plain_mlm_mim"),
            ("apir_only", "plain_mlm_mim"),
        ),
        starts=(Start("scratch", (), "both towers from random initialisation"), MINILM),
    ),
)


def get_ablation(name: str) -> Ablation:
    for a in ABLATIONS:
        if a.name == name:
            return a
    raise KeyError(f"no ablation {name!r}; known: {[a.name for a in ABLATIONS]}")
