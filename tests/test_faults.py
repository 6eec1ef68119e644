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
from syncmask_hf.data import BadItemError
from syncmask_hf.models.task_sampler import FashionFAETaskSampler


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
        # what an exact resume needs beside the weights: a feature queue and FashionFAE's task sampler
        model.register_buffer("queue", torch.zeros(4, 3), persistent=False)
        model.task_sampler = FashionFAETaskSampler({"itc": 0.5, "mlm": 0.5}, seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.state = training.training_state(self.accelerator.unwrap_model(self.model))

    def step(self, progress: training.Progress) -> None:
        loss = self.model(torch.randn(4, 8)).square().mean()
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.queue.add_(torch.randn(4, 3))
        unwrapped.task_sampler.sample()
        progress.global_step += 1

    def save(self, progress: training.Progress, keep: int = 3) -> Path:
        return training.save_checkpoint(self.accelerator, self.args.output_dir, progress, keep, state=self.state)

    def resume(self) -> training.Progress:
        return training.resume_progress(self.accelerator, self.args, state=self.state)


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


def _real_full_disk(tmp_path, row):
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (the mocked row 1b covers the message)")
    try:
        run = _Run(disk / "out", width=1000)  # about 160 kB a checkpoint: the first fits, the second does not
        progress = training.Progress()
        run.step(progress)
        first = run.save(progress)
        run.step(progress)
        with pytest.raises(OSError, match=row.expected):
            run.save(progress)
        assert not (disk / "out" / "checkpoints" / "step_2").exists()
        assert _Run(disk / "out", width=1000).resume().global_step == 1 and first.exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


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


# --------------------------------------------------------------------------------- the catalogue index (3, 4, 5)
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.helpers import save_tiny_model

    return save_tiny_model("syncmask", tmp_path_factory.mktemp("model") / "syncmask")


def _folder_catalog(root: Path, n: int = 6, shade: int = 0) -> Path:
    import json

    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = ((40 * i + shade) % 256, (90 + 30 * i) % 256, (200 - 20 * i + shade) % 256)
        Image.new("RGB", (40, 56), colour).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"plain dress number {i}", "product_id": f"p{i}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _truncated_catalogue_image(tmp_path, row, model_dir):
    from syncmask_hf.search import CatalogSearch

    catalog = _folder_catalog(tmp_path / "catalog")
    bad = catalog / "2.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with _warnings() as records:
        engine = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    assert [(r, item) for r, item, _ in engine.skipped] == [(2, "2.png")]
    assert row.expected in engine.skipped[0][2]
    assert any("1 of 6 catalogue images" in r.getMessage() for r in records)
    assert len(engine.index) == 5 and 2 not in {h.index for h in engine.search_text("dress", k=10)}
    assert len(engine.text_index) == 6  # its text stays searchable


def _missing_catalogue_image(tmp_path, row, model_dir):
    from syncmask_hf.search import CatalogSearch

    catalog = _folder_catalog(tmp_path / "catalog")
    (catalog / "4.png").unlink()
    engine = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    assert engine.load_report.num_skipped == 1 and row.expected in engine.load_report.skipped[0][1]
    assert len(engine.index) == 5


class _Killed(Exception):
    pass


def _indexing_interrupted(tmp_path, row, model_dir, monkeypatch):
    from syncmask_hf import search

    catalog = _folder_catalog(tmp_path / "catalog")
    monkeypatch.setattr(search, "INDEX_CHUNK", 2)
    embed_rows, calls = search.CatalogSearch._embed_rows, []

    def failing(self, start, end):
        calls.append(start)
        if len(calls) == 3:
            raise _Killed  # stopped while embedding the third chunk
        return embed_rows(self, start, end)

    monkeypatch.setattr(search.CatalogSearch, "_embed_rows", failing)
    with pytest.raises(_Killed):
        search.CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    calls.clear()
    resumed = search.CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    assert calls == [4]  # only the chunk that was lost is embedded again
    monkeypatch.undo()
    fresh = search.CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "fresh")
    assert torch.allclose(resumed.image_embeds, fresh.image_embeds, atol=1e-6)
    assert not list((tmp_path / "cache").glob("*-partial"))  # cleaned once complete


def _every_image_replaced(tmp_path, row, model_dir):
    import os

    from syncmask_hf.search import CatalogSearch

    catalog = _folder_catalog(tmp_path / "catalog")
    before = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    _folder_catalog(catalog, shade=128)  # the same file names and texts, new photos
    for f in catalog.glob("*.png"):  # even with the old modification times, the sizes or bytes differ
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    after = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    fresh = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "fresh")
    assert torch.allclose(after.image_embeds, fresh.image_embeds, atol=1e-6)
    assert not torch.allclose(after.image_embeds, before.image_embeds, atol=1e-3)
    assert after.image_dir != before.image_dir  # the thumbnails are new too


def _truncated_cache_file(tmp_path, row, model_dir):
    from syncmask_hf.search import CatalogSearch

    catalog = _folder_catalog(tmp_path / "catalog")
    first = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with _warnings() as records:
        again = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    assert any(row.expected in r.getMessage() for r in records)
    assert torch.allclose(again.image_embeds, first.image_embeds, atol=1e-6)
    import numpy as np

    np.savez(cache, image=np.zeros((2, 3), np.float32))  # another format: rebuilt too
    assert torch.allclose(
        CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache").image_embeds,
        first.image_embeds,
        atol=1e-6,
    )


def _uploads_decoded_as_in_training(tmp_path, row):
    import numpy as np
    from PIL import Image

    from syncmask_hf.models.image_loading import load_image
    from syncmask_hf.search import open_image

    portrait = Image.new("RGB", (60, 40), (200, 30, 30))
    exif = portrait.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 40 wide, 60 tall
    portrait.save(tmp_path / "portrait.jpg", exif=exif)
    assert open_image(str(tmp_path / "portrait.jpg")).size == (40, 60)  # row.expected: stays portrait
    grey16 = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    grey16.save(tmp_path / "grey16.png")
    floats = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F")
    clear = Image.new("L", (8, 8), 0)
    clear.info["transparency"] = 0
    clear.save(tmp_path / "clear.png")
    for image in (str(tmp_path / "portrait.jpg"), str(tmp_path / "grey16.png"), floats, str(tmp_path / "clear.png")):
        assert np.array_equal(np.asarray(open_image(image)), np.asarray(load_image(image)))
    assert 120 <= np.asarray(open_image(str(tmp_path / "grey16.png"))).mean() <= 135  # not saturated to white
    assert 120 <= np.asarray(open_image(floats)).mean() <= 135  # not black
    assert np.asarray(open_image(str(tmp_path / "clear.png"))).min() == 255  # transparent = white, not black


# ------------------------------------------------------------------------------------- data and evaluation (6-8)
def _fashiongen(tmp_path, images, strings=None):
    """A FashionGen HDF5 of 2 rows in the official schema but for the given images / description bytes."""
    import h5py
    import numpy as np

    path = tmp_path / "fashiongen_256_256_validation.h5"
    keys = ("input_description", "input_category", "input_subcategory", "input_brand", "input_season")
    with h5py.File(path, "w") as f:
        f.create_dataset("input_image", data=images)
        for key in (*keys, "input_composition", "input_gender"):
            values = strings if key == "input_description" and strings else [b"x", b"x"]
            f.create_dataset(key, data=np.array([[v] for v in values], dtype="S64"))
        f.create_dataset("input_productID", data=np.array([[1], [2]], dtype=np.int32))
    return path


def _fashiongen_float_and_uint16_images(tmp_path, row):
    import numpy as np

    from syncmask_hf.data import load_catalog

    for images, expected_mean in (
        (np.full((2, 8, 8, 3), 0.5, np.float32), 128),  # 0-1 floats: was black (cast to 0)
        (np.full((2, 8, 8, 3), 40000, np.uint16), 156),  # 16-bit: was wrapped mod 256 (64)
    ):
        path = _fashiongen(tmp_path, images)
        ds = load_catalog(f"fashiongen:{path}", streaming=True)
        pixels = np.asarray(next(iter(ds))["image"])
        assert abs(pixels.mean() - expected_mean) <= 1, (images.dtype, pixels.mean())
    path = _fashiongen(tmp_path, np.zeros((2, 8, 8, 3), np.int8))
    with pytest.raises(BadItemError, match=row.expected):
        load_catalog(f"fashiongen:{path}")


def _fashiongen_wrong_image_shape(tmp_path, row):
    import numpy as np

    from syncmask_hf.data import load_catalog

    path = _fashiongen(tmp_path, np.zeros((2, 8, 8), np.uint8))  # grey images without a channel axis
    with pytest.raises(BadItemError, match=row.expected) as err:
        load_catalog(f"fashiongen:{path}", cache_dir=str(tmp_path / "cache"))
    assert str(path) in str(err.value)


def _fashiongen_utf8_strings(tmp_path, row):
    import numpy as np

    from syncmask_hf.data import load_catalog

    path = _fashiongen(
        tmp_path, np.zeros((2, 8, 8, 3), np.uint8), ["café coat".encode(), "caf\xe9 coat".encode("latin-1")]
    )
    texts = [r["text"] for r in load_catalog(f"fashiongen:{path}", streaming=True)]
    assert texts == [row.expected, row.expected]  # UTF-8 and the official latin-1 alike


def _catalogue_csv_not_utf8(tmp_path, row):
    from syncmask_hf.data import load_catalog

    catalog = _folder_catalog(tmp_path / "catalog", n=4)
    lines = ["file_name,text,product_id"] + [f"{i}.png,plain dress number {i},p{i}" for i in range(4)]
    (catalog / "metadata.jsonl").unlink()
    data = ("\n".join(lines) + "\n").encode()
    data = data.replace(b"dress number 2", b"dress caf\xe9 2")  # one latin-1 byte
    (catalog / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + data)  # and a BOM, as spreadsheets write
    ds, report = load_catalog(f"folder:{catalog}", skip_bad=True, return_report=True)
    assert len(ds) == 3 and report.counts["bad_encoding"] == 1
    ((item, reason),) = report.skipped
    assert item.endswith("metadata.csv line 4") and row.expected in reason
    with pytest.raises(BadItemError, match="metadata.csv line 4"):
        load_catalog(f"folder:{catalog}")


def _hm_csv_with_bom_and_a_bad_byte(tmp_path, row):
    from PIL import Image

    from syncmask_hf.data import load_catalog

    root = tmp_path / "hm"
    header = "article_id,product_code,prod_name,detail_desc"
    lines = [header]
    for i in range(3):
        aid = f"0{108775015 + i}"
        (root / "images" / aid[:3]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / "images" / aid[:3] / f"{aid}.jpg")
        lines.append(f"{aid},0108775,Strap top {i},Jersey top")
    data = ("\n".join(lines) + "\n").encode().replace(b"Strap top 1", b"Strap top \xff1")
    (root / "articles.csv").write_bytes(b"\xef\xbb\xbf" + data)
    ds, report = load_catalog(f"hm:{root}", skip_bad=True, return_report=True)
    assert len(ds) == 2 and report.skipped[0][0].endswith("articles.csv line 3")
    assert row.expected in report.skipped[0][1]


def _small_held_out_split_with_skips(tmp_path, row, caplog):
    import datasets

    from syncmask_hf.data import load_catalog
    from syncmask_hf.data.collator import FashionCollator
    from syncmask_hf.training import build_processor, build_random_model, evaluate_retrieval

    source = load_catalog("synthetic:40").cast_column("image", datasets.Image(decode=False))
    rows, products = [], set()
    for rec in source:  # one row per product: 9 products
        if rec["product_id"] not in products and len(products) < 9:
            products.add(rec["product_id"])
            rows.append(rec)
    rows[7]["image"] = rows[8]["image"] = {"bytes": b"not an image", "path": None}  # two products lose their pair
    rows.append({**rows[0], "text": " "})  # an empty text
    rows.append(dict(rows[1]))  # a repeated item id
    held = datasets.Dataset.from_list(rows, features=source.features)
    model = build_random_model("syncmask")
    collator = FashionCollator(build_processor("syncmask", model.config), "syncmask", skip_bad=True)
    results = evaluate_retrieval(model, held, collator, "cpu", show_progress=False)
    assert results["sample100"]["num_negatives"] == 6  # 7 products embedded, not the 9 of the split
    assert results["items"] == {
        "pairs": 7,
        "skipped_images": 2,
        "excluded": {"empty_text": 1, "duplicate_item_id": 1},
    }
    assert row.expected in caplog.text


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
    Row("1c", "save_checkpoint", "a real full disk (a 256 kB tmpfs)", "no space left on", _real_full_disk),
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
    Row(
        "3a",
        "CatalogSearch / the demo's index",
        "one truncated image in the catalogue",
        "cannot decode the image",
        _truncated_catalogue_image,
    ),
    Row(
        "3b", "CatalogSearch / the demo's start-up", "a missing image file", "does not exist", _missing_catalogue_image
    ),
    Row(
        "3c",
        "CatalogSearch / the demo's index",
        "indexing killed part-way",
        "the chunks already embedded are kept",
        _indexing_interrupted,
    ),
    Row(
        "4a",
        "CatalogSearch cache",
        "every image replaced, texts unchanged",
        "re-embedded (the key hashes the images)",
        _every_image_replaced,
    ),
    Row("4b", "CatalogSearch cache", "a truncated cache file", "unreadable cache file", _truncated_cache_file),
    Row(
        "5",
        "the demo's uploads",
        "EXIF portrait, 16-bit, mode F, L with transparency",
        "decoded as in training",
        _uploads_decoded_as_in_training,
    ),
    Row(
        "6a",
        "load_catalog('fashiongen:...')",
        "float 0-1 and uint16 image arrays; an int8 one",
        "dtype int8",
        _fashiongen_float_and_uint16_images,
    ),
    Row(
        "6b",
        "load_catalog('fashiongen:...')",
        "images N x H x W (no channel axis)",
        r"shape \(2, 8, 8\), expected N x H x W x 3",
        _fashiongen_wrong_image_shape,
    ),
    Row("6c", "load_catalog('fashiongen:...')", "UTF-8 strings", "café coat", _fashiongen_utf8_strings),
    Row(
        "7a",
        "load_catalog('folder:...')",
        "metadata.csv with a UTF-8 BOM and one latin-1 byte",
        "not UTF-8 (byte 0xe9",
        _catalogue_csv_not_utf8,
    ),
    Row(
        "7b",
        "load_catalog('hm:...')",
        "articles.csv with a BOM and one bad byte",
        "re-save the file as UTF-8",
        _hm_csv_with_bom_and_a_bad_byte,
    ),
    Row(
        "8",
        "the final evaluation (evaluate_retrieval)",
        "a small held-out split whose images the collator skips; an empty text; a repeated item id",
        "evaluation leaves out 2 of 11 held-out rows",
        _small_held_out_split_with_skips,
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
