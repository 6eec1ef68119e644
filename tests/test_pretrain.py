"""examples/pretrain.py end to end: a run killed with SIGKILL resumes to the same weights as an uninterrupted run,
two gloo processes match one with the same global batch, and bad images are skipped and counted (or stop the run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "pretrain.py"
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO / "src"),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
TINY = [
    "--dataset",
    "synthetic:96",
    "--batch_size",
    "8",
    "--report_to",
    "none",
    "--test_products",
    "0.2",
    "--val_products",
    "0.0",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args, timeout=600):
    """pretrain.py under two gloo processes (torchrun: `accelerate launch --cpu --num_processes 2` starts one process
    unless MPI is set up); a hang fails at `timeout` instead of blocking the suite."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(SCRIPT), *args]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on 2 processes" in proc.stderr  # a real gloo group, not two lone processes
    return proc


def run(args, **kwargs):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=600, **kwargs
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


def assert_same_weights(a: Path, b: Path, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


@pytest.mark.slow
# fashionfae: its task sequence (one task per step, drawn by a seeded sampler) must resume exactly as well.
@pytest.mark.parametrize("model", ["syncmask", "fashionfae"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, model):
    common = [
        *TINY,
        "--model",
        model,
        "--config",
        f"{model}-tiny",
        "--max_steps",
        "8",
        "--checkpoint_every",
        "2",
        "--keep_checkpoints",
        "10",
    ]
    ref = run([*common, "--output_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *common, "--output_dir", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step_4" / "progress.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()

    resumed = run([*common, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    assert_same_weights(tmp_path / "ref" / "final", out / "final")


def test_accelerate_cpu_launch_that_starts_one_process_is_refused(tmp_path):
    """accelerate 1.x's `launch --cpu --num_processes 2` starts a single process without MPI: refuse, name the fix."""
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *TINY, "--max_steps", "1",
         "--output_dir", str(tmp_path / "run")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "started a single process" in proc.stderr and "torchrun --nproc_per_node N" in proc.stderr


@pytest.mark.slow
def test_two_gloo_processes_match_one_with_the_same_global_batch(tmp_path):
    # A deterministic objective (E2 without Gumbel noise is not; SyncMask's ITM sampling is not): compare E2 with
    # the regional loss and fusion blocks off, i.e. a plain multi-positive CLIP loss, for which the gathered
    # two-process gradient equals the one-process gradient up to float rounding. Adam's default epsilon (1e-8)
    # would turn that rounding into full +-lr steps for the parameters whose gradient is ~1e-8 at initialisation
    # (attention query / key weights of a random tiny model), so the test uses a larger one.
    common = [
        "--model",
        "e2",
        "--dataset",
        "synthetic:64",
        "--report_to",
        "none",
        "--max_steps",
        "3",
        "--checkpoint_every",
        "0",
        "--test_products",
        "0.25",
        "--val_products",
        "0.0",
        "--sampler",
        "random",
        "--e2_stage",
        "2",
        "--config_override",
        '{"use_fusion_blocks": false, "use_regional_loss": false}',
        "--adam_epsilon",
        "1e-4",
    ]
    one = run([*common, "--batch_size", "8", "--output_dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun([*common, "--batch_size", "4", "--output_dir", str(tmp_path / "two")])
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", atol=2e-5)


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_counted_or_stops_the_run(tmp_path):
    folder = tmp_path / "catalog"
    (folder / "images").mkdir(parents=True)
    from syncmask_hf.data import load_catalog

    rows = load_catalog("synthetic:40")
    lines = []
    for i, row in enumerate(rows):
        name = f"images/{i}.png"
        row["image"].save(folder / name)
        lines.append(
            json.dumps(
                {"file_name": name, "text": row["text"], "product_id": row["product_id"], "category": row["category"]}
            )
        )
    (folder / "images" / "3.png").write_bytes(b"definitely not a png")
    (folder / "metadata.jsonl").write_text("\n".join(lines))

    common = [
        "--model",
        "syncmask",
        "--config",
        "syncmask-tiny",
        "--dataset",
        f"folder:{folder}",
        "--batch_size",
        "8",
        "--report_to",
        "none",
        "--max_steps",
        "3",
        "--checkpoint_every",
        "0",
        "--test_products",
        "0.25",
        "--val_products",
        "0.0",
        "--sampler",
        "random",
    ]
    ok = run([*common, "--output_dir", str(tmp_path / "skip")])
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((tmp_path / "skip" / "final" / "eval_results.json").read_text())
    assert report["training"]["skipped_bad_items"] >= 1

    strict = run([*common, "--output_dir", str(tmp_path / "strict"), "--bad_items", "error"])
    assert strict.returncode != 0
    assert "3.png" in strict.stderr


def test_periodic_validation_is_logged_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    proc = run(
        ["--model", "e2", "--dataset", "synthetic:160", "--batch_size", "8", "--max_steps", "4", "--eval_every", "2",
         "--val_products", "0.25", "--test_products", "0.25", "--checkpoint_every", "0", "--report_to",
         "tensorboard", "--output_dir", str(out)]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2: validation" in proc.stderr and "step 4: validation" in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.glob("logs/**/events.out.tfevents.*")).parent))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/sumR")]
    assert steps == [2, 4] and len(events.Scalars("loss")) == 4
    assert (out / "final" / "model.safetensors").is_file()


def test_time_budget_schedule_follows_the_spent_share_of_the_budget():
    from syncmask_hf.training import TimeBudget, cosine_with_budget

    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    budget = TimeBudget(100.0)
    sched = cosine_with_budget(opt, warmup_steps=4, budget=budget, num_processes=2)
    rates = []
    for _ in range(8):  # warm-up: 4 optimizer steps = 8 scheduler steps with two processes
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([i / 8 for i in range(8)])
    budget.spent = 50.0  # half the budget spent, whatever the step count
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    budget.spent = 120.0  # over budget: the rate stays at 0
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0)


def test_time_budget_alone_stops_in_time_and_spans_a_resume(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "e2", *TINY, "--max_train_minutes", "0.15", "--checkpoint_every", "5", "--output_dir", str(out)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    training = json.loads((out / "final" / "eval_results.json").read_text())["training"]
    assert training["steps"] > 5 and 0.15 <= training["train_minutes"] < 0.3
    # Resumed from its last checkpoint, the run gets only what is left of its budget, not a new one.
    last = sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    spent = json.loads((last / "progress.json").read_text())["train_seconds"]
    assert 0 < spent <= 0.15 * 60 + 5
    shutil.rmtree(out / "final")
    proc = run([*args, "--resume_from_checkpoint", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((out / "final" / "eval_results.json").read_text())["training"]
    assert 0.15 <= resumed["train_minutes"] < 0.3
    assert resumed["steps"] - int(last.name.split("_")[1]) < training["steps"]


def test_tracker_config_leaves_tokens_out():
    from types import SimpleNamespace

    from syncmask_hf.training import tracker_config

    args = SimpleNamespace(model="e2", learning_rate=1e-4, dataset=["hm:x"], hub_token="hf_secret", push_to_hub=True)
    config = tracker_config(args)
    assert config == {"model": "e2", "learning_rate": 1e-4, "dataset": "['hm:x']", "push_to_hub": True}
    assert "hf_secret" not in str(config)


def test_copied_weights_rate_defaults_per_model_and_the_flag_wins():
    from types import SimpleNamespace

    from syncmask_hf.pretraining import checkpoint_lr_scale

    assert checkpoint_lr_scale(SimpleNamespace(model="fashionfae", checkpoint_lr_scale=None)) == 0.2
    assert checkpoint_lr_scale(SimpleNamespace(model="syncmask", checkpoint_lr_scale=None)) == 1.0
    assert checkpoint_lr_scale(SimpleNamespace(model="fashionfae", checkpoint_lr_scale=1.0)) == 1.0
