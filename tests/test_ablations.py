"""The ablation harness (examples/ablations/): a smoke study of 2 arms x 2 seeds x 4 steps on the synthetic
catalogue, its records, its resume, the reproducibility of a record's command, and the report's statistics."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "examples" / "ablations"
sys.path.insert(0, str(ABLATIONS))

run = importlib.import_module("run")
report = importlib.import_module("report")
study = importlib.import_module("study")

SMOKE = [
    "--ablation",
    "e2_components",
    "--start",
    "scratch",
    "--arm",
    "e2_full",
    "--arm",
    "clip_ft",
    "--seeds",
    "0",
    "1",
]
SMOKE += ["--dataset", "synthetic:200", "--steps", "4", "--eval_every", "2"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablations")
    argv = [*SMOKE, "--output_dir", str(tmp / "runs"), "--results", str(tmp / "results.json")]
    assert run.main(argv) == 0
    return tmp, argv


@pytest.mark.slow
def test_smoke_study_records_every_run(smoke):
    tmp, _ = smoke
    records = json.loads((tmp / "results.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in records) == [
        ("clip_ft", 0),
        ("clip_ft", 1),
        ("e2_full", 0),
        ("e2_full", 1),
    ]
    for r in records:
        assert r["ablation"] == "e2_components" and r["start"] == "scratch" and r["steps"] == 4
        assert set(run.METRICS) <= set(r["metrics"]), r["metrics"]
        assert 0 < r["metrics"]["chance_r10"] <= 100
        assert f"--seed {r['seed']}" in r["command"] and "--max_steps 4" in r["command"]
        # The periodic validation gave the learning curve.
        assert [c["step"] for c in r["curve"]] == [2, 4]
    # The arms differ by exactly the ablation's switches.
    by_arm = {r["arm"]: r["command"] for r in records if r["seed"] == 0}
    assert "use_selection_tokens" in by_arm["clip_ft"] and "--config_override" not in by_arm["e2_full"]
    # The two seeds are two different runs (different split order and initialisation).
    full = [r for r in records if r["arm"] == "e2_full"]
    assert full[0]["metrics"] != full[1]["metrics"]


@pytest.mark.slow
def test_smoke_study_report_and_plot(smoke):
    tmp, _ = smoke
    text = (tmp / "RESULTS.md").read_text()
    assert "| E2 | e2_components | scratch | 4 | full SumR | e2_full | clip_ft | 2 |" in text
    assert "**e2_full − clip_ft**, full SumR" in text and "95% CI [" in text
    assert "e2_full_b16" not in text  # only what ran is tabled; the rest is listed as not yet run
    assert "Not yet run: " in text and "fashionfae_objectives" in text
    pytest.importorskip("matplotlib")
    png = tmp / "e2_components-scratch-synthetic-4.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({png.name})" in text


@pytest.mark.slow
def test_smoke_study_resumes_without_rerunning(smoke, capsys):
    tmp, argv = smoke
    before = (tmp / "results.json").read_text()
    assert run.main(argv) == 0
    assert "0 runs to do (4 recorded already)" in capsys.readouterr().out
    assert (tmp / "results.json").read_text() == before


@pytest.mark.slow
def test_record_command_reproduces_its_metrics(smoke, tmp_path):
    tmp, _ = smoke
    record = json.loads((tmp / "results.json").read_text())[0]
    cmd = shlex.split(record["command"])
    cmd[cmd.index("--output_dir") + 1] = str(tmp_path / "rerun")
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**run.os.environ, "OMP_NUM_THREADS": "1"})
    again = json.loads((tmp_path / "rerun" / "final" / "eval_results.json").read_text())
    metrics = run.metrics_of(again, "full")
    for k in ("full_sumr", "t2i_r10", "i2t_r10"):
        assert metrics[k] == pytest.approx(record["metrics"][k], abs=1e-3), k


def test_max_minutes_starts_nothing_after_the_budget(tmp_path, capsys):
    argv = [
        *SMOKE,
        "--output_dir",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "r.json"),
        "--max_minutes",
        "1e-9",
    ]
    assert run.main(argv) == 0
    assert "0 runs recorded, 0 failed, 4 left for later" in capsys.readouterr().out
    assert not (tmp_path / "r.json").exists()


def test_dry_run_lists_shared_runs_once_per_arm(tmp_path, capsys):
    argv = ["--ablation", "syncmask_masking", "--ablation", "syncmask_sampler", "--seeds", "0", "--dry_run"]
    assert run.main([*argv, "--results", str(tmp_path / "r.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "examples/pretrain.py" in line]
    commands = {line.split(": ", 1)[1] for line in lines}
    # synchronized (masking) and semi_hard_grouped (sampler) are one command: trained once, recorded twice.
    assert len(lines) == 4 and len(commands) == 3


def test_bootstrap_interval_and_verdicts():
    assert report.verdict([1.0, 2.0, 3.0], report.bootstrap_ci([1.0, 2.0, 3.0])).startswith("holds")
    assert report.verdict([-1.0, -2.0, -0.5], report.bootstrap_ci([-1.0, -2.0, -0.5])).startswith("does not hold")
    assert report.verdict([-1.0, 2.0, 0.5], report.bootstrap_ci([-1.0, 2.0, 0.5])).startswith("within noise")
    assert report.verdict([1.0], report.bootstrap_ci([1.0])).startswith("too few")
    lo, hi = report.bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    # Seeded: the same differences give the same interval.
    assert report.bootstrap_ci([0.3, -0.1, 0.7]) == report.bootstrap_ci([0.3, -0.1, 0.7])
    assert np.isnan(report.bootstrap_ci([])[0])


def test_study_covers_the_papers_ablations():
    names = {a.name for a in study.ABLATIONS}
    assert {"syncmask_masking", "syncmask_sampler", "syncmask_itm_rerank", "e2_components", "e2_batch_size"} <= names
    assert "fashionfae_objectives" in names
    for ab in study.ABLATIONS:
        arms = {a.name for a in ab.arms}
        assert ab.comparisons and all(len(c) in (2, 4) and set(c) <= arms for c in ab.comparisons), ab.name
        # Every arm is a different computation, except arms that read another table of one evaluation.
        keys = {(a.args, a.evaluate_args, a.table) for a in ab.arms}
        assert len(keys) == len(ab.arms), ab.name


def test_every_arm_override_is_a_valid_config():
    """An arm whose --config_override its config refuses would fail at its first run (as E2's selection tokens
    removed alone did: the fusion blocks and the regional loss need them)."""
    from syncmask_hf import get_spec
    from syncmask_hf.training import resolve_config_path

    for ab in study.ABLATIONS:
        config_class = get_spec(ab.model).config_class
        base = config_class.from_json_file(str(resolve_config_path(ab.model, ab.config))).to_dict()
        for arm in ab.arms:
            if "--config_override" in arm.args:
                fields = json.loads(arm.args[arm.args.index("--config_override") + 1])
                config = config_class.from_dict({**base, **fields})
                assert all(getattr(config, k) == v for k, v in fields.items()), (ab.name, arm.name)


@pytest.mark.slow
def test_captioning_arm_records_coco_caption_metrics(smoke, tmp_path):
    """The captioning ablation reuses the trained encoders (same commands) and adds BLEU-4 / CIDEr-D / ROUGE-L."""
    tmp, argv = smoke
    argv = [*argv[argv.index("--seeds") :], "--ablation", "e2_captioning", "--caption_steps", "3"]
    argv[argv.index("--results") + 1] = str(tmp_path / "results.json")
    argv[argv.index("--seeds") + 1 : argv.index("--seeds") + 3] = ["0"]
    assert run.main(argv) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["arm"] for r in records) == ["clip_ft", "e2_full"]
    for r in records:
        assert {"bleu4", "cider_d", "rouge_l"} <= set(r["metrics"]) and r["metrics"]["caption_images"] > 0
        assert "examples/train_captioner.py" in r["command"] and "--max_steps 3" in r["command"]
        # The encoder was not trained again: its folder is e2_components' (one pretrain.log, one run).
        folder = Path(shlex.split(r["command"])[shlex.split(r["command"]).index("--output_dir") + 1])
        assert (folder / "pretrain.log").read_text().count("model and processor saved") == 1
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| E2 | e2_captioning | scratch | 4 | CIDEr-D | e2_full | clip_ft | 1 |" in text and "CIDEr-D |" in text


@pytest.mark.slow
def test_adapted_clip_start_prepares_one_clip_and_adapts_it(tmp_path):
    """E2's "adapt a pretrained CLIP" proxy: one CLIP-FT run made first (the prepare run), then each arm starts from
    its CLIP part (`--vision_pretrained` an E2 folder); the record's command reproduces both steps."""
    argv = [
        "--ablation",
        "e2_components",
        "--start",
        "clip_hm_to_myntra",
        "--seeds",
        "0",
        "--dataset",
        "synthetic:200",
    ]
    argv += ["--steps", "4", "--eval_every", "2", "--output_dir", str(tmp_path / "runs")]
    assert run.main([*argv, "--results", str(tmp_path / "results.json")]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["arm"] for r in records) == ["clip_ft", "e2_full"]  # the start's arms only
    prepared = set()
    for r in records:
        prepare, adapt = r["command"].split(" && ")
        assert "use_selection_tokens" in prepare and "--vision_pretrained" not in prepare
        folder = shlex.split(prepare)[shlex.split(prepare).index("--output_dir") + 1]
        assert f"--vision_pretrained {folder}/final" in adapt
        prepared.add(folder)
        config = json.loads(
            (
                Path(shlex.split(adapt)[shlex.split(adapt).index("--output_dir") + 1]) / "final" / "config.json"
            ).read_text()
        )
        assert config["use_selection_tokens"] == (r["arm"] == "e2_full")
    assert len(prepared) == 1  # one CLIP for every arm and seed


def test_paired_differences_and_difference_of_gains():
    """Pairs are matched by seed (a seed one arm lacks is left out); four arms give the gain of the first pair minus
    the gain of the second (E2's claim: a larger gain over CLIP-FT at the smaller batch)."""
    values = {  # arm: {seed: full SumR}
        "e2_full_b16": {0: 50.0, 1: 60.0, 2: 55.0},
        "clip_ft_b16": {0: 40.0, 1: 45.0, 2: 50.0},
        "e2_full_b32": {0: 70.0, 1: 72.0, 2: 71.0},
        "clip_ft_b32": {0: 69.0, 1: 70.0},
    }
    records = [
        {
            "ablation": "e2_batch_size",
            "start": "scratch",
            "steps": 10,
            "data": "hm",
            "arm": arm,
            "seed": seed,
            "metrics": {**dict.fromkeys(run.METRICS, 1.0), "full_sumr": v},
        }
        for arm, by_seed in values.items()
        for seed, v in by_seed.items()
    ]
    rows = {(r["method"], r["baseline"]): r for r in report.comparisons(records)}
    b16 = rows[("e2_full_b16", "clip_ft_b16")]
    assert b16["seeds"] == [0, 1, 2] and b16["diffs"] == [10.0, 15.0, 5.0] and b16["verdict"].startswith("holds")
    assert rows[("e2_full_b32", "clip_ft_b32")]["seeds"] == [0, 1]
    gains = rows[("(e2_full_b16 − clip_ft_b16)", "(e2_full_b32 − clip_ft_b32)")]
    assert gains["seeds"] == [0, 1] and gains["diffs"] == [9.0, 13.0]
    text = report.render(records)
    assert "| (e2_full_b16 − clip_ft_b16) | (e2_full_b32 − clip_ft_b32) | 2 |" in text
