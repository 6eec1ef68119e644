"""examples/index_catalog.py: one process and two (torchrun, gloo) build the same index; a rerun embeds nothing;
a run killed mid-way resumes without embedding again what it had done."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

from test_pretrain import ENV, free_port  # noqa: E402

from syncmask_hf import training  # noqa: E402
from syncmask_hf.catalog_index import CatalogIndex  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "index_catalog.py"
# --ann_threshold 100: the end of the run sorts the table (`optimize`) and builds the vector and scalar indexes
DATA = ["--dataset", "synthetic:160", "--chunk_size", "20", "--batch_size", "16", "--ann_threshold", "100"]
DATA += ["--no_progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    training.save_random_model("e2", folder)
    return folder


def index_cmd(model, uri, processes=1):
    args = [str(SCRIPT), "--model_path", str(model), "--index_uri", str(uri), *DATA]
    if processes == 1:
        return [sys.executable, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [*launcher, "--master_port", str(free_port()), *args]


def run(model, uri, processes=1):
    proc = subprocess.run(index_cmd(model, uri, processes), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((Path(str(uri).removeprefix("file://")) / "index_report.json").read_text())


def table(uri):
    index = CatalogIndex.open(uri)
    rows = index._table.to_arrow().to_pylist()
    keys = [tuple(r[c] for c in index.meta["cluster_by"]) for r in rows]
    assert keys == sorted(keys) and any(i.name.startswith("image_vec") for i in index._table.list_indices())
    return {r["item_id"]: r for r in rows}


@pytest.mark.slow
def test_one_and_two_processes_build_the_same_index(model, tmp_path):
    one = run(model, tmp_path / "one")
    assert one["rows_in_index"] == 160 and one["embedded"] == 160 and one["processes"] == 1
    # As a URI (what machines sharing an object store pass): staging goes through the URI's filesystem.
    two = run(model, (tmp_path / "two").as_uri(), processes=2)
    assert two["processes"] == 2 and two["embedded"] == 160 and two["rows_in_index"] == 160
    assert not list((tmp_path / "two" / "_staging").iterdir())  # every staged chunk merged and removed
    a, b = table(tmp_path / "one"), table((tmp_path / "two").as_uri())
    assert a.keys() == b.keys()
    for item_id in a:
        np.testing.assert_allclose(a[item_id]["image_vec"], b[item_id]["image_vec"], atol=1e-5)
        assert a[item_id]["content_hash"] == b[item_id]["content_hash"]
    again = run(model, tmp_path / "one")  # nothing changed: nothing embedded
    assert again["embedded"] == 0 and again["unchanged"] == 160 and again["rows_in_index"] == 160


@pytest.mark.slow
def test_killed_run_resumes_without_embedding_again(model, tmp_path):
    uri = tmp_path / "killed"
    proc = subprocess.Popen(index_cmd(model, uri), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((uri / "_staging").glob("chunk-*.arrow"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staged = len(list((uri / "_staging").glob("chunk-*.arrow")))
    assert 2 <= staged < 8, staged  # killed mid-way, with chunks staged
    report = run(model, uri)
    assert report["staged_before"] == 20 * staged  # kept, not embedded again
    assert report["embedded"] == 160 - 20 * staged
    assert report["rows_in_index"] == 160 and report["chunks_merged"] == 8
    assert not list((uri / "_staging").glob("*.arrow"))
