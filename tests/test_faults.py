"""Bad input and faults, one table: each row names the entry point, the input or fault, and what must happen (a named
error or a counted skip; never lost work or a silently wrong result). Each row failed before its fix (issue 28); the
security issue's rows extend the same table.

A row is `Row(case, entry point, fault, expected, run)`; `run(tmp_path, row)` builds the situation, applies the fault
and asserts `row.expected` (a message fragment or a count).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from syncmask_hf import training


@dataclass(frozen=True)
class Row:
    case: str
    entry: str
    fault: str
    expected: str
    run: Callable


# ------------------------------------------------------------------------------------------ checkpoints (1, 2, 9)
class _Run:
    """A tiny model trained a step at a time with the package's checkpoint functions, as the scripts use them."""

    def __init__(self, output_dir: Path, width: int = 16):
        from accelerate import Accelerator

        self.args = SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint="latest")
        self.accelerator = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def step(self, progress: training.Progress) -> None:
        loss = self.model(torch.randn(4, 8)).square().mean()
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        progress.global_step += 1

    def save(self, progress: training.Progress, keep: int = 3) -> Path:
        return training.save_checkpoint(self.accelerator, self.args.output_dir, progress, keep)

    def resume(self) -> training.Progress:
        return training.resume_progress(self.accelerator, self.args)


def _two_checkpoints(tmp_path: Path) -> tuple[_Run, Path, Path]:
    run = _Run(tmp_path / "out")
    progress = training.Progress()
    run.step(progress)
    first = run.save(progress)
    run.step(progress)
    second = run.save(progress)
    return run, first, second


def _empty_progress_json(tmp_path, row):
    run, first, second = _two_checkpoints(tmp_path)
    (second / "progress.json").write_text("")  # what a full disk left behind
    with _warnings() as records:
        resumed = _Run(tmp_path / "out").resume()
    assert resumed.global_step == 1  # the intact earlier checkpoint, not a JSONDecodeError forever
    assert any(row.expected in r.getMessage() and "step_2" in r.getMessage() for r in records)
    progress = training.Progress(global_step=3)
    run.save(progress)  # the next save cleans the partial folder away
    assert not second.exists() and first.exists()


def _disk_full_while_saving(tmp_path, row, monkeypatch):
    import shutil

    run, first, second = _two_checkpoints(tmp_path)

    def full_disk(folder):
        Path(folder).mkdir(parents=True)
        Path(folder, "model.safetensors").write_bytes(b"\0" * 10)  # a partial file
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: basic_ios::clear")

    monkeypatch.setattr(run.accelerator, "save_state", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=1 << 30, free=0))
    with pytest.raises(OSError, match=row.expected) as err:
        run.save(training.Progress(global_step=3))
    assert str(tmp_path / "out" / "checkpoints") in str(err.value)
    assert not (tmp_path / "out" / "checkpoints" / "step_3").exists()  # the partial folder is gone
    monkeypatch.undo()
    assert _Run(tmp_path / "out").resume().global_step == 2  # the earlier checkpoints are intact


def _zeroed_weights(tmp_path, row):
    _, first, second = _two_checkpoints(tmp_path)
    path = second / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # zeroed bytes inside the tensor data: it still parses
    path.write_bytes(bytes(data))
    with pytest.raises(training.CheckpointError, match=row.expected) as err:
        _Run(tmp_path / "out").resume()
    assert str(first) in str(err.value)  # the way out: the earlier checkpoint, named


def _truncated_rng_state(tmp_path, row):
    _, first, second = _two_checkpoints(tmp_path)
    path = second / "random_states_0.pkl"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(training.CheckpointError, match=row.expected):
        _Run(tmp_path / "out").resume()


def _unreadable_checkpoint_without_checksums(tmp_path, row):
    # a checkpoint from before checksums were recorded, damaged: the error is about the file, not the options
    _, first, second = _two_checkpoints(tmp_path)
    progress = training.Progress.load(second)
    progress.files = {}
    progress.save(second)
    (second / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(training.CheckpointError, match=row.expected) as err:
        _Run(tmp_path / "out").resume()
    assert "other options" not in str(err.value)


def _another_models_checkpoint(tmp_path, row):
    _two_checkpoints(tmp_path)
    with pytest.raises(RuntimeError, match=row.expected):
        _Run(tmp_path / "out", width=32).resume()


class _warnings:
    """Collect the package's log records (caplog misses loggers configured by other tests)."""

    def __enter__(self):
        self.records, self.handler = [], logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append
        logging.getLogger("syncmask_hf").addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        logging.getLogger("syncmask_hf").removeHandler(self.handler)


ROWS = [
    Row(
        "1a",
        "--resume_from_checkpoint latest",
        "zero-byte progress.json in the newest checkpoint (disk full while saving)",
        "skipping incomplete checkpoint",
        _empty_progress_json,
    ),
    Row(
        "1b",
        "save_checkpoint",
        "disk full inside Accelerator.save_state (torch's `basic_ios::clear`)",
        "no space left on",
        _disk_full_while_saving,
    ),
    Row(
        "2a",
        "--resume_from_checkpoint latest",
        "zeroed bytes inside model.safetensors",
        "model.safetensors differs from what was saved",
        _zeroed_weights,
    ),
    Row(
        "2b",
        "--resume_from_checkpoint latest",
        "truncated random_states_0.pkl",
        "random_states_0.pkl differs from what was saved",
        _truncated_rng_state,
    ),
    Row(
        "9",
        "--resume_from_checkpoint latest",
        "an unreadable model.safetensors in a checkpoint without checksums",
        "could not be loaded",
        _unreadable_checkpoint_without_checksums,
    ),
    Row(
        "9b",
        "--resume_from_checkpoint latest",
        "an intact checkpoint of another model (other options)",
        "written with other options",
        _another_models_checkpoint,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.case}: {r.fault}" for r in ROWS])
def test_bad_input_and_faults(row, tmp_path, request):
    import inspect

    extra = {name: request.getfixturevalue(name) for name in list(inspect.signature(row.run).parameters)[2:]}
    row.run(tmp_path, row, **extra)


def test_an_intact_checkpoint_records_and_passes_its_checksums(tmp_path):
    _, first, second = _two_checkpoints(tmp_path)
    files = training.Progress.load(second).files
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(files)
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert _Run(tmp_path / "out").resume().global_step == 2
