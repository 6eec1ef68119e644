"""Fine-tuning and evaluation scripts end to end (tiny SyncMask, tiny generated catalogues), the colour-variant
triplet builder, the model-agnostic wrappers, and clear errors for bad arguments."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image, ImageDraw

from syncmask_hf.data import colour_phrase, colour_variant_triplets

from .helpers import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO / "src"),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
TRAIN = ["--batch_size", "8", "--report_to", "none", "--val_products", "0", "--eval_batch_size", "32"]
COLOURS = {"red": (200, 30, 40), "blue": (40, 80, 200), "green": (30, 150, 60), "black": (20, 20, 20)}
GARMENTS = ["dress", "shirt", "skirt", "jacket"]


# ------------------------------------------------------------------------------------------------- fixtures
def make_variant_catalog(root: Path, num_products: int = 24, size: int = 32, seed: int = 0) -> Path:
    """A folder catalogue (metadata.csv) where every product comes in 2-3 colours, one item per colour (H&M-like)."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(num_products):
        garment = GARMENTS[p % len(GARMENTS)]
        for colour in rng.sample(sorted(COLOURS), 2 + p % 2):
            img = Image.new("RGB", (size, size), (250, 250, 250))
            margin = 3 + (p * 3) % 10
            ImageDraw.Draw(img).rectangle([margin, 3, size - margin, size - 3], fill=COLOURS[colour])
            name = f"images/{p:03d}_{colour}.png"
            img.save(root / name)
            rows.append(
                {
                    "file_name": name,
                    "text": f"{garment} number {p} with {margin} mm seams",
                    "product_id": f"P{p:03d}",
                    "item_id": f"P{p:03d}-{colour}",
                    "category": "tops" if garment in ("shirt", "jacket") else "other",
                    "subcategory": garment,
                    "color": colour.title(),
                    "brand": f"brand{p % 3}",
                    "season": ("summer", "winter")[p % 2],
                }
            )
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_fashioniq(root: Path, num_images: int = 16, size: int = 32, seed: int = 0) -> Path:
    """FashionIQ-format annotations (captions/, image_splits/) + generated <id>.jpg images for dress and shirt."""
    rng = random.Random(seed)
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = sorted(COLOURS)
    for category in ("dress", "shirt"):
        for split in ("train", "val"):
            ids = [f"B{category[:2]}{split[0]}{i:04d}" for i in range(num_images)]
            colour = {x: names[i % len(names)] for i, x in enumerate(ids)}
            for i, x in enumerate(ids):
                img = Image.new("RGB", (size, size), COLOURS[colour[x]])
                ImageDraw.Draw(img).ellipse([i % 8, i % 8, size - 1, size - 1], outline=(255, 255, 255))
                img.save(root / "images" / f"{x}.jpg")
            triplets = []
            for _ in range(num_images):
                a, b = rng.sample(ids, 2)
                triplets.append({"candidate": a, "target": b, "captions": [f"is {colour[b]}", "looks nicer."]})
            (root / "captions" / f"cap.{category}.{split}.json").write_text(json.dumps(triplets))
            (root / "image_splits" / f"split.{category}.{split}.json").write_text(json.dumps(ids))
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {
        "model": save_tiny_model("syncmask", root / "tiny"),
        "catalog": make_variant_catalog(root / "catalog"),
        "fashioniq": make_fashioniq(root / "fashioniq"),
    }


def run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECALL_KEYS = {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "sumR"}


# ------------------------------------------------------------------------------------- colour-variant triplets
def _catalog(rows):
    cols = ["item_id", "product_id", "color", "subcategory"]
    return datasets.Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_colour_variant_triplets_pairs_every_two_colours_of_a_product():
    ds = _catalog(
        [
            ("a1", "A", "Red", "dress"),
            ("a2", "A", "Dark Blue", "dress"),
            ("a3", "A", "Other Pink", "dress"),
            ("b1", "B", "Black", "shirt"),  # single colour: no triple
            ("c1", "C", "", "skirt"),  # no colour: left out
            ("c2", "C", "Green", "skirt"),
        ]
    )
    t = colour_variant_triplets(ds)
    assert len(t) == 6  # 3 colours of A -> 3 * 2 ordered pairs
    assert set(t["caption"]) == {"in red", "in dark blue", "in pink"}
    for row in t:
        assert row["group"] == "A"
        assert row["reference_color"] != row["target_color"]
        assert ds[row["target_index"]]["item_id"] == row["target_item_id"]
        assert row["caption"] == f"in {colour_phrase(ds[row['target_index']]['color'])}"
    assert len(colour_variant_triplets(ds, max_per_group=2, seed=1)) == 2
    assert colour_variant_triplets(ds, template="make it {color}")["caption"][0].startswith("make it ")


def test_colour_variant_triplets_skip_ambiguous_targets_and_keep_views():
    ds = _catalog(
        [
            ("a1", "A", "Black", "dress"),
            ("a2", "A", "Black", "dress"),  # a second black item: "in black" is ambiguous as a target
            ("a3", "A", "White", "dress"),
            ("a3", "A", "White", "dress"),  # a second view of the same white item: fine
        ]
    )
    t = colour_variant_triplets(ds)
    assert list(t["caption"]) == ["in white"]
    assert t["reference_index"][0] == 0 and t["target_index"][0] == 2


def test_colour_variant_triplets_group_by_columns_and_errors():
    ds = _catalog([("x", "P1", "Red", "dress"), ("y", "P2", "Blue", "dress"), ("z", "P3", "Blue", "shirt")])
    assert len(colour_variant_triplets(ds)) == 0  # every product has one colour
    assert len(colour_variant_triplets(ds, group_by=["subcategory"])) == 2
    with pytest.raises(ValueError, match="no column"):
        colour_variant_triplets(ds, group_by="product_code")
    with pytest.raises(ValueError, match="color"):
        colour_variant_triplets(ds, template="in red")


def test_colour_variant_triplets_on_a_generated_catalogue(assets):
    from syncmask_hf.data import load_catalog

    ds = load_catalog(f"folder:{assets['catalog']}")
    t = colour_variant_triplets(ds)
    # products with 2 colours give 2 triples, with 3 colours 6: 12 * 2 + 12 * 6
    assert len(t) == 96
    assert all(ds[r]["product_id"] == ds[g]["product_id"] for r, g in zip(t["reference_index"], t["target_index"]))


@pytest.mark.shared_data
@pytest.mark.slow
def test_colour_variant_triplets_on_hm(shared_data):
    from syncmask_hf.data import load_catalog

    ds = load_catalog(f"hm:{shared_data / 'hm'}")
    t = colour_variant_triplets(ds)
    groups = len(set(t["group"]))
    print(f"H&M colour variants: {len(t)} triples from {groups} products ({len(ds)} articles)")
    assert len(t) > 1000 and groups > 500
    pids, colours = ds["product_id"], ds["color"]
    for r, g in list(zip(t["reference_index"], t["target_index"]))[:500]:
        assert pids[r] == pids[g] and colour_phrase(colours[r]) != colour_phrase(colours[g])


# ------------------------------------------------------------------------------------- model-agnostic wrappers
def test_contrastive_and_composed_wrappers_train_on_clip_interface(assets):
    from transformers import AutoModel

    from syncmask_hf.tgir import ComposedQueryModel
    from syncmask_hf.training import ContrastiveFineTuning

    base = AutoModel.from_pretrained(assets["model"])
    size = base.config.vision_config.image_size
    pixels, ids = torch.randn(4, 3, size, size), torch.randint(999, 2000, (4, 6))
    wrapper = ContrastiveFineTuning(base)
    loss = wrapper(pixels, ids, torch.ones_like(ids), product_ids=torch.tensor([1, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and wrapper.logit_scale.grad is not None
    composed = ComposedQueryModel(base)
    query = composed.get_query_features(pixels, ids, torch.ones_like(ids))
    # an untrained combiner is exactly the normalize(image + text) baseline
    image = torch.nn.functional.normalize(base.get_image_features(pixels).pooler_output, dim=-1)
    text = torch.nn.functional.normalize(base.get_text_features(ids, torch.ones_like(ids)).pooler_output, dim=-1)
    torch.testing.assert_close(query, torch.nn.functional.normalize(image + text, dim=-1))
    out = composed(pixels, ids, torch.ones_like(ids), target_pixel_values=pixels)
    out.loss.backward()
    assert composed.combiner[2].weight.grad is not None


# ---------------------------------------------------------------------------------------------- scripts
def test_finetune_retrieval_itc_itm(assets, tmp_path):
    out = tmp_path / "ret"
    args = ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
    proc = run(
        "finetune_retrieval.py", [*args, *TRAIN, "--max_steps", "2", "--checkpoint_every", "1", "--output_dir", out]
    )
    results = json.loads((out / "final" / "eval_results.json").read_text())
    assert set(results) == {"before", "after", "training"}
    for when in ("before", "after"):
        assert RECALL_KEYS <= set(results[when]["full"]) and RECALL_KEYS <= set(results[when]["sample100"])
    assert results["training"]["objective"] == "itc_itm" and results["training"]["steps"] == 2
    assert "before / after" in proc.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "processor_config.json").is_file()
    assert (out / "checkpoints" / "step_2" / "progress.json").is_file()


@pytest.mark.slow
def test_finetune_retrieval_itc_resumes_from_latest(assets, tmp_path):
    out = tmp_path / "ret_itc"
    args = ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
    common = [*args, *TRAIN, "--objective", "itc", "--checkpoint_every", "1", "--output_dir", out]
    run("finetune_retrieval.py", [*common, "--max_steps", "1"])
    proc = run("finetune_retrieval.py", [*common, "--max_steps", "2", "--resume_from_checkpoint", "latest"])
    assert "resumed from" in proc.stderr + proc.stdout
    results = json.loads((out / "final" / "eval_results.json").read_text())
    assert results["training"]["objective"] == "itc" and results["training"]["steps"] == 2


def test_finetune_tgir_colour_variants_fusion_head(assets, tmp_path):
    out = tmp_path / "tgir"
    run(
        "finetune_tgir.py",
        ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
        + [*TRAIN, "--max_steps", "2", "--checkpoint_every", "0", "--output_dir", out],
    )
    results = json.loads((out / "final" / "eval_results.json").read_text())
    assert {"R@10", "num_queries", "gallery_size"} <= set(results["after"])
    assert results["training"]["head"] == "fusion" and results["training"]["data"] == "colour_variants"
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architectures"] == ["SyncMaskForTextGuidedImageRetrieval"]


@pytest.mark.slow
def test_finetune_tgir_fashioniq_combiner_head(assets, tmp_path):
    out = tmp_path / "tgir_fiq"
    fiq = assets["fashioniq"]
    run(
        "finetune_tgir.py",
        ["--model_path", assets["model"], "--fashioniq", fiq, "--fashioniq_images", fiq / "images"]
        + ["--fashioniq_categories", "dress,shirt", "--head", "combiner"]
        + [*TRAIN, "--max_steps", "2", "--checkpoint_every", "0", "--output_dir", out],
    )
    results = json.loads((out / "final" / "eval_results.json").read_text())
    assert {"dress_R@10", "shirt_R@10", "avg_R@10"} <= set(results["after"])
    assert (out / "final" / "tgir_combiner.safetensors").is_file()


def test_finetune_classification_fusion_head(assets, tmp_path):
    out = tmp_path / "cls"
    run(
        "finetune_classification.py",
        ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
        + [*TRAIN, "--max_steps", "2", "--checkpoint_every", "0", "--output_dir", out],
    )
    results = json.loads((out / "final" / "eval_results.json").read_text())
    for name in ("category", "subcategory"):
        assert {"top1", "macro_acc", "num_samples", "num_classes"} <= set(results["after"][name])
    assert json.loads((out / "final" / "label_maps.json").read_text())["subcategory"] == sorted(GARMENTS)
    assert results["training"]["head"] == "fusion"


@pytest.mark.slow
def test_finetune_classification_linear_head(assets, tmp_path):
    out = tmp_path / "cls_linear"
    run(
        "finetune_classification.py",
        ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
        + ["--head", "linear", "--task", "subcategory"]
        + [*TRAIN, "--max_steps", "2", "--checkpoint_every", "0", "--output_dir", out],
    )
    results = json.loads((out / "final" / "eval_results.json").read_text())
    assert set(results["after"]) == {"subcategory"}
    assert (out / "final" / "classification_head.safetensors").is_file()


def test_linear_probe(assets, tmp_path):
    out = tmp_path / "probe"
    proc = run(
        "linear_probe.py",
        ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
        + ["--val_products", "0", "--max_iter", "30", "--output_dir", out],
    )
    results = json.loads((out / "linear_probe.json").read_text())
    assert set(results["linear_probe"]) == {"brand", "season", "subcategory"}
    assert "composition" in results["skipped_attributes"]  # the generated catalogue has none
    assert {"top1", "macro_acc", "chance_top1", "num_classes"} <= set(results["linear_probe"]["brand"])
    assert "skipped: composition" in proc.stdout


def test_evaluate_all_tasks_with_itm_rerank(assets, tmp_path):
    out = tmp_path / "eval"
    fiq = assets["fashioniq"]
    run(
        "evaluate.py",
        ["--model_path", assets["model"], "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.5"]
        + ["--val_products", "0", "--rerank_k", "10", "--output_dir", out, "--no_progress"]
        + ["--fashioniq", fiq, "--fashioniq_images", fiq / "images", "--fashioniq_categories", "dress,shirt"],
    )
    results = json.loads((out / "eval_results.json").read_text())
    for name in ("full", "sample100", "full_itm", "sample100_itm"):
        assert RECALL_KEYS <= set(results[name]), name
    assert results["full_itm"]["rerank_k"] == 10
    assert {"R@10", "num_queries"} <= set(results["tgir_colour_variants"])
    assert results["tgir_colour_variants"]["head"] == "combiner"  # no trained TGIR head in a pretraining folder
    assert {"dress_R@10", "avg_R@10"} <= set(results["tgir_fashioniq"])
    assert {"classification_category", "classification_subcategory"} <= set(results)
    assert (out / "eval_results.md").is_file()


# ------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("finetune_tgir", ["--model_path", "M", "--dataset", "x", "--fashioniq", "y"], "either --dataset"),
        ("finetune_tgir", ["--model_path", "M", "--fashioniq", "y"], "needs --fashioniq_images"),
        ("evaluate", ["--model_path", "M", "--dataset", "x", "--tasks", "retrieval,bogus"], "unknown ['bogus']"),
        ("evaluate", ["--model_path", "M"], "pass --dataset"),
        ("linear_probe", ["--model_path", "M", "--dataset", "x", "--attributes", "brand,size"], "unknown ['size']"),
        ("finetune_retrieval", ["--model_path", "M", "--dataset", "x", "--batch_size", "0"], "--batch_size must be"),
        ("finetune_retrieval", ["--model_path", "/no/such/folder", "--dataset", "x"], "not a saved model folder"),
        ("finetune_classification", ["--model_path", "M"], "pass --dataset"),
        ("train_captioner", ["--decoder_width", "30", "--decoder_heads", "4"], "multiple of --decoder_heads"),
        ("train_captioner", ["--memory_temperature", "0"], "--memory_temperature must be > 0"),
    ],
)
def test_bad_arguments_give_clear_errors(script, argv, message, capsys):
    module = load_script(script)
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert message in str(exc.value.code) + capsys.readouterr().err


def test_tgir_on_a_catalogue_without_colour_variants_says_so():
    from syncmask_hf.tgir import tgir_sets

    with pytest.raises(ValueError, match="no colour variants"):
        tgir_sets(dataset=["synthetic:40"], val_products=0.0)


def test_train_captioner_on_an_e2_encoder(tmp_path, assets):
    from transformers import AutoModel

    encoder = save_tiny_model("e2", tmp_path / "e2")
    out = tmp_path / "cap"
    args = ["--model_path", encoder, "--dataset", f"folder:{assets['catalog']}", "--test_products", "0.4"]
    tiny = ["--decoder_width", "32", "--decoder_layers", "1", "--decoder_heads", "2", "--batch_size", "16"]
    proc = run("train_captioner.py", [*args, *tiny, "--max_steps", "3", "--max_eval_images", "5", "--output_dir", out])
    results = json.loads((out / "caption_results.json").read_text())
    assert results["train_steps"] == 3 and results["metrics"]["num_images"] == 5
    for metric in ("BLEU-4", "CIDEr-D", "ROUGE-L"):
        assert 0.0 <= results["metrics"][metric] <= 1000.0
    assert len(results["examples"]) == 5 and all(isinstance(e["caption"], str) for e in results["examples"])
    assert "BLEU-4" in proc.stdout
    captioner = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert captioner.config.memory_size == results["train_texts"]  # the training texts are the memory
    assert captioner.config.prefix_dim == 32  # e2-tiny's joint space

    # Evaluate the saved captioner again without training: the same held-out images and greedy captions, the
    # folder's training record carried over, nothing written into the captioner folder.
    again = tmp_path / "again"
    weights = (out / "model.safetensors").read_bytes()
    run("train_captioner.py", [*args, "--captioner_path", out, "--max_eval_images", "5", "--output_dir", again])
    rerun = json.loads((again / "caption_results.json").read_text())
    assert rerun["captioner"] == str(out) and rerun["train_steps"] == 3
    assert rerun["metrics"] == results["metrics"]
    assert [e["caption"] for e in rerun["examples"]] == [e["caption"] for e in results["examples"]]
    assert (out / "model.safetensors").read_bytes() == weights and not (again / "model.safetensors").exists()
