"""Behavioural tests: every objective carries a learning signal, and each paper's switch changes what is computed.

Shape checks cannot catch an objective that has lost its signal (SyncMask's ITM without negatives, APIR filling
every masked cell with one vector). These tests look at the signal itself, on the synthetic catalogue or on small
fixed batches, each in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import syncmask_hf
from syncmask_hf import training
from syncmask_hf.data import load_synthetic
from syncmask_hf.evaluation import mean_pairwise_cosine
from syncmask_hf.models.modeling_fashionfae import itm_pairs


@pytest.fixture(scope="module")
def catalog():
    # ~240 products: the first 40 are held out, the rest (~200) train. With only 40 training products the models
    # memorise them and held-out recall stays near chance whatever the objective.
    return load_synthetic(480, seed=0)


def build(model_name: str, **overrides):
    config_cls, model_cls, mode = training.model_classes(model_name)
    path = training.resolve_config_path(model_name)
    config = config_cls.from_json_file(str(path))
    config = config_cls.from_dict({**config.to_dict(), **overrides})
    torch.manual_seed(0)
    model = model_cls(config).train()
    processor = training.build_processor(model_name, config)
    return model, syncmask_hf.FashionCollator(processor, mode=mode, seed=0)


def split(catalog, held_out: int = 40):
    """The first `held_out` products' rows are held out (product-disjoint), the rest train."""
    products = list(dict.fromkeys(catalog["product_id"]))
    test = set(products[:held_out])
    train = [i for i, p in enumerate(catalog["product_id"]) if p not in test]
    held = [i for i, p in enumerate(catalog["product_id"]) if p in test]
    return train, held


def train_steps(model, collator, catalog, indices, steps: int, batch_size: int = 16, lr: float = 2e-3, task=None):
    optimizer = torch.optim.AdamW(training.parameter_groups(model, 0.0), lr=lr)
    sampler = syncmask_hf.RandomBatchSampler(len(indices), batch_size, seed=0, drop_last=True)
    history = []
    epoch = 0
    while len(history) < steps:
        sampler.set_epoch(epoch)
        for batch_positions in sampler:
            batch = collator([catalog[indices[i]] for i in batch_positions])
            # `task`: one FashionFAE task, or a sequence of them taken in turn (one per step)
            step_task = task[len(history) % len(task)] if isinstance(task, (list, tuple)) else task
            out = model(**batch, return_loss=True) if step_task is None else model(**batch, task=step_task)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if hasattr(model, "update_teacher"):
                model.update_teacher()
            history.append({k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1})
            history[-1]["task"] = step_task
            if len(history) == steps:
                break
        epoch += 1
    return history


@torch.no_grad()
def held_out_embeddings(model, collator, catalog, indices):
    model.eval()
    batch = collator([catalog[i] for i in indices])
    image = F.normalize(model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output, dim=-1)
    model.train()
    return image, text, batch["product_ids"]


def t2i_recall_and_chance(image, text, product_ids, k: int = 10):
    """Text -> image R@k (a hit is any image of the text's product) and its chance level under a random ranking."""
    same = product_ids[:, None] == product_ids[None, :]
    top = (text @ image.t()).topk(k, dim=1).indices
    recall = same.gather(1, top).any(dim=1).float().mean().item()
    n = len(product_ids)
    positives = same.sum(dim=1).numpy()
    chance = np.mean([1 - np.prod([(n - p - j) / (n - j) for j in range(k)]) for p in positives])
    return recall, chance


def early_late(history, key, k: int = 5):
    values = [h[key] for h in history if key in h]
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


# ------------------------------------------------------------------------------------------------------ SyncMask
@pytest.fixture(scope="module")
def syncmask_run(catalog):
    """The default preset from scratch (mean pooling, student ITC columns, near-duplicates from the texts), 240
    steps of random batches: trained once, read by the tests below."""
    model, collator = build("syncmask")
    train, held = split(catalog)
    history = train_steps(model, collator, catalog, train, steps=240, lr=1e-3)
    return model, collator, history, held


@pytest.mark.slow
def test_syncmask_learns_without_collapse_and_itm_has_negatives(catalog, syncmask_run):
    """Before the fixes (ALBEF's [CLS], teacher-cosine near-duplicates) every held-out text embedded alike (cosine
    0.999), the ITM negative share was 0.0 and recall sat at chance."""
    model, collator, history, held = syncmask_run
    # ITM must see a negative in (nearly) every row, at every step: otherwise "always match" is its answer.
    assert min(h["itm_negative_share"] for h in history) > 0.9
    for term in ("loss_itc", "loss_mlm", "loss_mim"):
        start, end = early_late(history, term, k=20)
        assert end < start, (term, start, end)
    image, text, products = held_out_embeddings(model, collator, catalog, held)
    # measured: images 0.77, texts 0.79 (ALBEF's [CLS] pooling: texts 0.999)
    assert mean_pairwise_cosine(image) < 0.9 and mean_pairwise_cosine(text) < 0.9
    recall, chance = t2i_recall_and_chance(image, text, products)
    assert recall > 1.6 * chance, (recall, chance)  # measured 2.6x chance


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="open: from scratch SyncMask's ITM stays at the label prior (0.637 = entropy of 1/3 matched) for 240 "
    "steps on the synthetic catalogue and cannot even fit 32 fixed pairs with rolled negatives in 300 steps; ITC, MLM "
    "and MIM learn. Strict: this test passes (and so fails as xfail) once ITM learns.",
)
def test_syncmask_itm_learns_from_scratch(syncmask_run):
    history = syncmask_run[2]
    start, end = early_late(history, "loss_itm", k=20)
    assert end < start - 0.02, (start, end)


def test_syncmask_near_duplicates_come_from_the_texts_not_an_untrained_encoder(catalog):
    model, collator = build("syncmask")
    batch = collator([catalog[i] for i in range(16)])
    ids = batch["product_ids"]
    # An untrained teacher embeds every text alike: with the old cosine rule every pair would be excluded.
    alike = torch.ones(16, 16)
    excluded = model.itm_exclusions(batch["input_ids"], batch["attention_mask"], ids, batch["text_ids"], alike)
    assert not excluded[ids[:, None] != ids[None, :]].all()
    model.config.near_duplicate_threshold = 0.9
    with_cosine = model.itm_exclusions(batch["input_ids"], batch["attention_mask"], ids, batch["text_ids"], alike)
    assert with_cosine.all()  # the switch changes what is computed
    # identical texts of different products are near-duplicates whatever the encoder says
    twice = batch["input_ids"][:2].clone()
    twice[1] = twice[0]
    mask = batch["attention_mask"][:2].clone()
    mask[1] = mask[0]
    model.config.near_duplicate_threshold = None
    pair = model.itm_exclusions(twice, mask, torch.tensor([1, 2]), torch.tensor([5, 6]))
    assert pair[0, 1] and pair[1, 0]


def test_syncmask_pooling_and_patch_score_switches_change_the_computation(catalog):
    model, collator = build("syncmask")
    batch = collator([catalog[i] for i in range(8)])
    with torch.no_grad():
        mean = model.syncmask.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        model.config.pooling = "cls"
        cls = model.syncmask.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
    assert not torch.allclose(mean, cls)
    from syncmask_hf.models.masking import synchronized_scores

    attn = torch.rand(2, 2, 5, 1 + 9).softmax(dim=-1)
    eligible = torch.ones(2, 5, dtype=torch.bool)
    _, summed = synchronized_scores(attn, eligible, patch_score="sum")
    _, peak = synchronized_scores(attn, eligible, patch_score="peak")
    a = attn.mean(dim=1)[..., 1:]
    torch.testing.assert_close(summed, a.sum(dim=1))
    torch.testing.assert_close(peak, a.amax(dim=1))


def test_syncmask_alpha_ramps_over_the_first_epoch_in_pretrain(tmp_path):
    import json

    from tests.test_pretrain import TINY, run

    out = run(
        [
            "--model", "syncmask", *TINY, "--max_steps", "2", "--checkpoint_every", "0",
            "--output_dir", str(tmp_path), "--sampler", "random",
        ]
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["alpha_warmup_epochs"] == 1.0 and config["alpha_warmup_steps"] > 0


def test_syncmask_mlm_distillation_is_a_switch_and_alpha_ramps(catalog):
    model, collator = build("syncmask", alpha_warmup_steps=4, alpha_warmup_epochs=None)
    batch = collator([catalog[i] for i in range(8)])
    # ALBEF's ramp: alpha rises linearly from 0 to config.alpha over alpha_warmup_steps teacher updates
    ramp = []
    for _ in range(6):
        ramp.append(model.current_alpha())
        model.update_teacher()
    assert ramp == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    # a teacher that differs from the student (as after training), so its soft targets differ from the labels
    with torch.no_grad():
        for p in model.teacher_mlm_head.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def mlm(**overrides):
        for k, v in overrides.items():
            setattr(model.config, k, v)
        torch.manual_seed(3)
        return float(model(**batch, alpha=0.4).loss_mlm.detach())

    distilled, plain = mlm(distill_mlm=True), mlm(distill_mlm=False)
    assert abs(distilled - plain) > 1e-3, (distilled, plain)
    # alpha 0 is plain MLM whatever the switch says
    torch.manual_seed(3)
    model.config.distill_mlm = True
    assert float(model(**batch, alpha=0.0).loss_mlm.detach()) == pytest.approx(plain, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- FashionFAE
def test_fashionfae_apir_predictions_differ_between_masked_cells(catalog):
    model, collator = build("fashionfae")
    batch = collator([catalog[i] for i in range(4)])
    out = model(**batch, task="apir")
    n = model.config.apir_num_masked
    predictions = out.logits.view(4, n, -1)
    # within each image, the masked cells' predictions are apart (the same fill, then different positions)
    spread = torch.cdist(predictions, predictions).amax(dim=(1, 2))
    assert (spread > 1e-3 * predictions.norm(dim=-1).mean()).all(), spread


def test_fashionfae_apir_contrastive_term_is_a_switch(catalog):
    model, collator = build("fashionfae")
    batch = collator([catalog[i] for i in range(8)])
    torch.manual_seed(1)
    with_term = model(**batch, task="apir").loss
    model.config.apir_contrastive_weight = 0.0
    torch.manual_seed(1)
    without = model(**batch, task="apir").loss
    assert with_term > without + 1e-3  # the contrastive term adds ~log(batch) at init


def test_fashionfae_itm_negatives_fall_on_random_rows():
    image = torch.randn(8, 4)
    ids = torch.arange(8)
    rows = set()
    for seed in range(6):
        _, labels = itm_pairs(
            image, image, ids, ids, 0.5, rows="random", generator=torch.Generator().manual_seed(seed)
        )
        assert int((labels == 0).sum()) == 4
        rows.add(tuple((labels == 0).nonzero().flatten().tolist()))
    assert len(rows) > 1
    _, last = itm_pairs(image, image, ids, ids, 0.5, rows="last")
    assert (last == 0).nonzero().flatten().tolist() == [4, 5, 6, 7]


def test_fashionfae_aetp_masks_whole_title_words(catalog):
    from syncmask_hf.models.modeling_fashionfae import aetp_mask
    from syncmask_hf.models.modeling_utils import ROLE_TITLE

    model, collator = build("fashionfae")
    rows = [dict(catalog[i], title="Unbelievablyfashionable overshirtdress", description="a soft cotton shirt dress")
            for i in range(4)]  # fmt: skip
    batch = collator(rows)
    assert "word_ids" in batch
    title = batch["token_roles"] == ROLE_TITLE
    c = model.config
    _, _, masked = aetp_mask(
        batch["input_ids"], batch["attention_mask"], batch["token_roles"], batch["attribute_ids"],
        mask_token_id=c.mask_token_id, vocab_size=c.text_config.vocab_size, special_ids=model.special_ids,
        title_words=1, attribute_values=0, description_mask_ratio=0.0, description_replace_ratio=0.0,
        word_ids=batch["word_ids"],
    )  # fmt: skip
    for b in range(4):
        words = batch["word_ids"][b][title[b]]
        hit = masked[b][title[b]]
        assert hit.any()
        picked = words[hit].unique()
        assert len(picked) == 1  # one whole word, every token of it
        assert hit.sum() == (words == picked).sum() and hit.sum() > 1


@pytest.mark.slow
def test_fashionfae_every_task_learns_and_embeddings_spread(catalog):
    model, collator = build("fashionfae")
    train, held = split(catalog)
    # the four tasks in turn, one per step (pretraining draws them from config.task_probs); 120 steps each
    history = train_steps(model, collator, catalog, train, steps=480, lr=5e-4, task=("itc", "itm", "mlm", "apir"))
    # measured (first 5 -> last 5 steps of each task): ITC 2.81 -> 1.73, AETP 13.0 -> 5.7, APIR 3.86 -> 1.47
    for task, key in (
        ("itc", "loss_itc"),
        ("mlm", "loss_aetp"),
        ("apir", "loss_apir"),
        ("apir", "loss_apir_contrastive"),
    ):
        start, end = early_late([h for h in history if h["task"] == task], key, k=5)
        assert end < 0.9 * start, (task, start, end)
    # ITM, as SyncMask's, barely moves from scratch at this budget (0.691 -> 0.689, ln 2 = 0.693): an open item
    # (examples/README.md); here it must at least not diverge.
    itm = [h["loss_itm"] for h in history if h["task"] == "itm"]
    assert max(itm[-10:]) < 0.75, itm[-10:]
    image, text, products = held_out_embeddings(model, collator, catalog, held)
    assert mean_pairwise_cosine(image) < 0.9 and mean_pairwise_cosine(text) < 0.9
    recall, chance = t2i_recall_and_chance(image, text, products)
    assert recall > 1.6 * chance, (recall, chance)  # measured 2.3x chance


# ------------------------------------------------------------------------------------------------------------ E2
def test_e2_full_text_is_tags_then_description(catalog):
    model, collator = build("e2")
    row = dict(catalog[0], brand="Acme", season="Summer", description="A plain tee.")
    full = collator([row])
    tokenizer = collator.processor.tokenizer
    text = tokenizer.decode(full["input_ids"][0], skip_special_tokens=True)
    assert text.startswith("acme. summer.") and text.endswith(
        tokenizer.decode(tokenizer(row["text"])["input_ids"], skip_special_tokens=True)
    )
    # the description entity stays the description alone
    e = collator.processor.entities.index("description")
    entity = tokenizer.decode(full["entity_input_ids"][0, e], skip_special_tokens=True)
    assert entity == "a plain tee."
    plain = syncmask_hf.FashionCollator(collator.processor, mode="e2", e2_text="description")([row])
    assert tokenizer.decode(plain["input_ids"][0], skip_special_tokens=True) == tokenizer.decode(
        tokenizer(row["text"])["input_ids"], skip_special_tokens=True
    )


@pytest.mark.slow
def test_e2_learns_without_collapse(catalog):
    model, collator = build("e2")
    train, held = split(catalog)
    history = train_steps(model, collator, catalog, train, steps=160, lr=1e-3)
    start, end = early_late(history, "loss")
    assert end < start
    image, text, products = held_out_embeddings(model, collator, catalog, held)
    assert mean_pairwise_cosine(image) < 0.9 and mean_pairwise_cosine(text) < 0.9
    recall, chance = t2i_recall_and_chance(image, text, products)
    assert recall > 2 * chance, (recall, chance)


def test_syncmask_sampler_curriculum_random_then_semi_hard_and_epoch_steps(catalog):
    import importlib.util
    from types import SimpleNamespace

    from syncmask_hf.pretraining import build_batch_sampler, epoch_steps, sampler_kind

    # only the argument parser comes from the script; the logic is the package's
    spec = importlib.util.spec_from_file_location(
        "pretrain_script", Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(["--model", "syncmask", "--num_epochs", "3", "--batch_size", "16"])
    # from scratch: random batches for --random_epochs (1), then semi-hard ones
    assert [sampler_kind(args, e) for e in range(3)] == ["random", "semi_hard", "semi_hard"]
    pretrained = script.parse_args(["--model", "syncmask", "--text_pretrained", "minilm", "--vision_pretrained", "v"])
    assert sampler_kind(pretrained, 0) == "semi_hard"
    one_tower = script.parse_args(["--model", "syncmask", "--text_pretrained", "minilm"])
    assert sampler_kind(one_tower, 0) == "random"  # a random-init image tower needs the curriculum too
    # the schedule's length counts each epoch's own sampler (the semi-hard one drops a tail)
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    train = catalog.select(range(400))
    lengths = [len(build_batch_sampler(args, train, accelerator, e)) for e in range(3)]
    assert lengths[0] == 400 // 16 and lengths[1] <= lengths[0]
    assert epoch_steps(args, train, accelerator) == sum(lengths)
