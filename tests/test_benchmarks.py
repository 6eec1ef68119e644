"""The benchmark scripts run and report what they promise: gpu_check.sh at tiny size on CPU (utilisation against
the measured ceiling, peak memory with and without checkpointing, losses that fall), bench_serving.py's table per
runtime with held-out R@10."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
from test_pretrain import ENV

from syncmask_hf import training

BENCH = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_size_on_cpu():
    env = dict(ENV, DEVICE="cpu", STEPS="60", BATCH="8", PYTHON=os.environ.get("PYTHON", "python"))
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    ceiling = float(re.search(r"matmul ceiling \(fp32, measured now\): ([\d.]+) GFLOP/s", out).group(1))
    assert ceiling > 0
    rows = table_rows(out, "| size | model | config | batch | GFLOP / step")
    assert {r[1] for r in rows} == {"syncmask", "e2", "fashionfae"} and all(r[0] == "tiny" for r in rows)
    for r in rows:
        gflop, rate, share = float(r[4]), float(r[6]), float(r[7].rstrip("%"))
        assert gflop > 0 and 0 < rate <= 1.5 * ceiling and share > 0
        assert float(r[8]) > 0 and float(r[9]) > 0  # peak memory without / with checkpointing
    losses = table_rows(out, "| size | model | loss | first | last | falls |")
    verdicts = {r[1]: r for r in losses if r[2] in ("loss", "all tasks")}  # FashionFAE: the sum over its tasks
    assert set(verdicts) == {"syncmask", "e2", "fashionfae"} and verdicts["fashionfae"][2] == "all tasks"
    assert all(r[5] == "yes" and float(r[4]) < float(r[3]) for r in verdicts.values())
    assert {r[2] for r in losses if r[1] == "fashionfae"} >= {"itc", "itm", "mlm", "all tasks"}  # a row per task


def test_bench_serving_reports_each_runtime_with_held_out_recall(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = training.save_random_model("e2", tmp_path / "e2", seed=1)
    bench = load("bench_serving")
    args = ["--model", f"e2={model}", "--batches", "1", "4", "--repeats", "1", "--dataset", "synthetic:400"]
    rows = bench.main([*args, "--output_dir", str(tmp_path / "work")])
    assert set(rows) == {f"e2, {r}" for r in bench.RUNTIMES}
    for row in rows.values():
        assert row["images/s b1"] > 0 and row["texts/s b4"] > 0
        assert 0 <= row["i2t R@10"] <= 100 and 0 <= row["t2i R@10"] <= 100
    assert rows["e2, PyTorch fp32"]["image x b4"] == 1.0
    # ONNX Runtime fp32 computes PyTorch's features (cosine > 0.999): the same ranking, the same recall
    assert abs(rows["e2, ONNX Runtime fp32"]["R@10 diff"]) <= 0.5


def test_torch_compile_flag_compiles_the_prepared_model(tmp_path):
    """--torch_compile (every training script's) hands the model to Accelerate's dynamo backend: `prepare` returns
    it compiled with inductor; without the flag it stays eager. (Compiling itself takes minutes on CPU: the
    end-to-end run and its speed are in examples/benchmarks/README.md.)"""
    import argparse

    import torch
    from accelerate.state import AcceleratorState

    spec = importlib.util.spec_from_file_location("pretrain_script", BENCH.parent / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    assert pretrain.parse_args(["--torch_compile"]).torch_compile  # pretrain.py's own parser carries it too

    parser = argparse.ArgumentParser()
    training.add_training_arguments(parser, str(tmp_path))
    for flag, compiled in (([], False), (["--torch_compile"], True)):
        args = parser.parse_args(["--model_path", "m", "--report_to", "none", *flag])
        assert args.torch_compile is compiled
        AcceleratorState._reset_state(reset_partial_state=True)  # one state per process: start afresh each time
        accelerator, _ = training.make_accelerator(args, "test")
        model = accelerator.prepare(torch.nn.Linear(4, 2))
        assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule) is compiled
        if compiled:
            assert accelerator.state.dynamo_plugin.backend.value.lower() == "inductor"
            assert accelerator.unwrap_model(model, keep_torch_compile=False).__class__ is torch.nn.Linear
    AcceleratorState._reset_state(reset_partial_state=True)
