"""Hostile files, untrusted code, paths, secrets and resources: the security rows of the bad-input table
(tests/test_faults.py holds the reliability rows, issue 28; these are issue 29's). Same `Row` shape: each row names
the entry point, the hostile input, and the named error or counted skip that must follow. Each failed before its fix.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from syncmask_hf import training
from tests.test_faults import Row, _Run, _two_checkpoints


# ------------------------------------------------------------------------------------------ 10: no pickles of ours
class _Payload:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint file does to a `weights_only=False` load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _as_legacy_checkpoint(folder: Path, payload) -> None:
    """Rewrite a checkpoint as an earlier version wrote it (our state in Accelerate's custom_checkpoint_<i>.pkl) with
    `payload` as the first file; the checksums in progress.json are rewritten too, as an attacker would."""
    for path in folder.glob(f"{training.STATE_PREFIX}*"):
        path.unlink()
    torch.save(payload, folder / "custom_checkpoint_0.pkl")
    progress = training.Progress.load(folder)
    progress.files = training.file_checksums(folder)
    progress.save(folder)


def _crafted_pickle_in_checkpoint(tmp_path, row):
    _, first, second = _two_checkpoints(tmp_path)
    marker = tmp_path / "pwned"
    _as_legacy_checkpoint(second, {"queue": _Payload(marker)})
    with pytest.raises(training.CheckpointError, match=row.expected) as err:
        _Run(tmp_path / "out").resume()
    assert "custom_checkpoint_0.pkl" in str(err.value)
    assert not marker.exists()  # the payload never ran


def _checkpoint_state_is_not_a_pickle(tmp_path, row):
    run, first, second = _two_checkpoints(tmp_path)
    names = sorted(p.name for p in second.iterdir())
    assert not [n for n in names if n.startswith("custom_checkpoint")], names
    assert {f"{training.STATE_PREFIX}buffers.safetensors", f"{training.STATE_PREFIX}task_sampler.json"} <= set(names)
    queue = run.accelerator.unwrap_model(run.model).queue.clone()
    next_task = run.accelerator.unwrap_model(run.model).task_sampler.sample()
    resumed = _Run(tmp_path / "out")
    assert resumed.resume().global_step == 2
    unwrapped = resumed.accelerator.unwrap_model(resumed.model)
    assert torch.equal(unwrapped.queue, queue)  # the buffers and the task sequence come back exactly
    assert unwrapped.task_sampler.sample() == next_task
    assert row.expected in json.loads((second / f"{training.STATE_PREFIX}task_sampler.json").read_text())


def _earlier_versions_plain_pickle(tmp_path, row):
    run, first, second = _two_checkpoints(tmp_path)
    queue = torch.full((4, 3), 7.0)
    state = run.state["task_sampler"].state_dict()
    state["rng_state"] = (state["rng_state"][0], tuple(state["rng_state"][1]), None)
    _as_legacy_checkpoint(second, {"queue": queue})
    torch.save(state, second / "custom_checkpoint_1.pkl")
    progress = training.Progress.load(second)
    progress.files = training.file_checksums(second)
    progress.save(second)
    resumed = _Run(tmp_path / "out")
    assert resumed.resume().global_step == int(row.expected)
    assert torch.equal(resumed.accelerator.unwrap_model(resumed.model).queue, queue)


def _checkpoint_without_its_state(tmp_path, row):
    _, first, second = _two_checkpoints(tmp_path)
    for path in second.glob(f"{training.STATE_PREFIX}*"):
        path.unlink()
    progress = training.Progress.load(second)
    progress.files = training.file_checksums(second)
    progress.save(second)
    with pytest.raises(training.CheckpointError, match=row.expected):
        _Run(tmp_path / "out").resume()


# -------------------------------------------------------------------------- 11: no model code the user did not ask for
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.helpers import save_tiny_model

    return save_tiny_model("syncmask", tmp_path_factory.mktemp("model") / "syncmask")


MALICIOUS = """
from pathlib import Path
Path({marker!r}).touch()  # what a hostile modeling file does at import
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evil_type"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


def _hostile_folder(model_dir: Path, tmp_path: Path, registered: bool = False) -> tuple[Path, Path]:
    """A copy of a saved model whose folder holds code that touches a marker file when imported: with another
    `model_type` (auto_map pointing at that code), or, `registered`, the package's type with a tampered copy of its
    modeling file (what a Hub repo could hold)."""
    import shutil

    folder, marker = tmp_path / "hostile", tmp_path / "code-ran"
    shutil.copytree(model_dir, folder)
    code = MALICIOUS.format(marker=str(marker))
    config = json.loads((folder / "config.json").read_text())
    if registered:
        modeling = folder / "modeling_syncmask.py"
        modeling.write_text(code + modeling.read_text())
    else:
        (folder / "evil.py").write_text(code)
        config["model_type"] = "evil_type"
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
        processor = json.loads((folder / "processor_config.json").read_text())
        processor["auto_map"] = {"AutoProcessor": "evil.EvilModel"}
        (folder / "processor_config.json").write_text(json.dumps(processor))
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def _refused(load, row, marker):
    with pytest.raises(ValueError, match=row.expected) as err:
        load()
    assert "--trust_remote_code" in str(err.value)
    assert not marker.exists()  # the folder's code never ran


def _load_model_folder_other_type(tmp_path, row, model_dir):
    folder, marker = _hostile_folder(model_dir, tmp_path)
    _refused(lambda: training.load_model_folder(folder), row, marker)


def _catalog_search_other_type(tmp_path, row, model_dir):
    from syncmask_hf.search import CatalogSearch

    folder, marker = _hostile_folder(model_dir, tmp_path)
    _refused(lambda: CatalogSearch(folder, "synthetic:8", cache_dir=tmp_path / "cache"), row, marker)


def _demo_captioner_other_type(tmp_path, row, model_dir, monkeypatch):
    monkeypatch.setenv("SYNCMASK_DEMO_NO_AUTOLOAD", "1")  # importing the app must not build the default demo
    from demo.app import make_engine, parse_args

    folder, marker = _hostile_folder(model_dir, tmp_path)
    args = parse_args(["--model", str(model_dir), "--catalog", "synthetic:8", "--captioner", str(folder)])
    args.cache_dir = str(tmp_path / "cache")
    assert args.trust_remote_code is False
    _refused(lambda: make_engine(args), row, marker)


def _tgir_other_type(tmp_path, row, model_dir):
    from syncmask_hf.tgir import load_tgir_model

    folder, marker = _hostile_folder(model_dir, tmp_path)
    _refused(lambda: load_tgir_model(folder), row, marker)


def _finetune_script_other_type(tmp_path, row, model_dir):
    from tests.test_finetune import load_script

    folder, marker = _hostile_folder(model_dir, tmp_path)
    retrieval, classification = load_script("finetune_retrieval"), load_script("finetune_classification")
    argv = ["--model_path", str(folder), "--dataset", "synthetic:8"]
    args = retrieval.parse_args(argv)
    assert args.trust_remote_code is False
    _refused(lambda: retrieval.load_model(args), row, marker)
    _refused(lambda: classification.build_model(classification.parse_args(argv), {}), row, marker)


def _registered_type_with_tampered_code(tmp_path, row, model_dir):
    folder, marker = _hostile_folder(model_dir, tmp_path, registered=True)
    model, processor = training.load_model_folder(folder)
    assert type(model).__module__ == row.expected  # the package's class, not the folder's copy
    assert not marker.exists()


def _trust_remote_code_opt_in(tmp_path, row, model_dir):
    folder, marker = _hostile_folder(model_dir, tmp_path)
    with pytest.raises(Exception):  # noqa: B017  (the hostile class builds nothing usable; its import is the point)
        training.load_model_folder(folder, trust_remote_code=True)
    assert marker.exists(), row.expected  # asked for, the folder's code runs: the flag is wired through


# --------------------------------------------------------------------------------- 12: paths stay inside their root
def _outside_file(tmp_path: Path) -> Path:
    from PIL import Image

    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    return secret


def _catalog_naming(tmp_path: Path, file_name: str) -> Path:
    from tests.test_faults import _folder_catalog

    catalog = _folder_catalog(tmp_path / "catalog", n=3)
    with open(catalog / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": file_name, "text": "a stolen dress", "product_id": "px"}) + "\n")
    return catalog


def _expect_refused_then_counted(catalog: Path, row, **kwargs) -> None:
    from syncmask_hf.data import BadItemError, load_catalog

    with pytest.raises(BadItemError, match=row.expected):
        load_catalog(f"folder:{catalog}", **kwargs)
    ds, report = load_catalog(f"folder:{catalog}", skip_bad=True, return_report=True, **kwargs)
    assert len(ds) == 3 and report.counts["outside_root"] == 1
    assert "a stolen dress" not in ds["text"]


def _folder_dotdot(tmp_path, row):
    _outside_file(tmp_path)
    _expect_refused_then_counted(_catalog_naming(tmp_path, "../private/secret.png"), row)


def _folder_absolute(tmp_path, row):
    _expect_refused_then_counted(_catalog_naming(tmp_path, "/etc/passwd"), row)


def _folder_symlink_out(tmp_path, row):
    secret = _outside_file(tmp_path)
    catalog = _catalog_naming(tmp_path, "link.png")
    (catalog / "link.png").symlink_to(secret)
    _expect_refused_then_counted(catalog, row)


def _folder_opt_out(tmp_path, row):
    from syncmask_hf.data import load_catalog

    _outside_file(tmp_path)
    catalog = _catalog_naming(tmp_path, "../private/secret.png")
    ds = load_catalog(f"folder:{catalog}", allow_outside_root=True)
    assert len(ds) == 4 and row.expected in ds["text"]


def _hub_rows_with_local_paths(tmp_path, row):
    import io

    import datasets
    from PIL import Image

    from syncmask_hf.data import BadItemError, load_catalog

    secret = _outside_file(tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    rows = {"image": [{"bytes": buffer.getvalue(), "path": None}, {"bytes": None, "path": str(secret)}]}
    rows["text"] = ["a shared dress", "a stolen dress"]
    (tmp_path / "dataset").mkdir()
    parquet = str(tmp_path / "dataset" / "rows.parquet")
    datasets.Dataset.from_dict(rows, features=features).to_parquet(parquet)
    source = dict(data_files=parquet, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(BadItemError, match=row.expected) as err:
        load_catalog("hub:parquet", **source)
    assert "row 1" in str(err.value)
    ds, report = load_catalog("hub:parquet", skip_bad=True, return_report=True, **source)
    assert ds["text"] == ["a shared dress"] and report.counts["outside_root"] == 1


def _myntra_id_leading_out(tmp_path, row):
    from syncmask_hf.data import load_catalog

    root = tmp_path / "myntra"
    (root / "images").mkdir(parents=True)
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    (root / "styles.csv").write_text(f"{header}\n../../x,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt\n")
    ds, report = load_catalog(f"myntra:{root}", skip_bad=True, return_report=True)
    assert len(ds) == 0 and report.counts[row.expected] == 1  # refused before any path is built from it


def _demo_index_outside_root(tmp_path, row, model_dir):
    from syncmask_hf.search import CatalogSearch

    _outside_file(tmp_path)
    catalog = _catalog_naming(tmp_path, "../private/secret.png")
    engine = CatalogSearch(model_dir, f"folder:{catalog}", cache_dir=tmp_path / "cache")
    assert engine.load_report.counts[row.expected] == 1
    assert len(engine.catalog) == 3 and "a stolen dress" not in engine.texts  # never embedded, never served


# ---------------------------------------------------------------------------------------- 13: secrets never logged
def _hub_token_in_tracker_logs(tmp_path, row):
    import subprocess
    import sys

    from tests.test_pretrain import ENV, SCRIPT, TINY

    token = "hf_" + "s3cr3t" * 6
    argv = [sys.executable, str(SCRIPT), "--model", "e2", *TINY[:-6], "--max_steps", "2", "--checkpoint_every", "1"]
    argv += ["--report_to", "tensorboard", "--hub_token", token, "--output_dir", str(tmp_path / "out")]
    argv += ["--test_products", "0.2", "--val_products", "0.0"]
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any("events.out.tfevents" in p.name for p in written)  # the tracker did log the run's config
    leaked = [str(p) for p in written if token.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert token not in proc.stdout + proc.stderr, row.expected


# ------------------------------------------------------------------------------------------- 14: resources capped
def _huge_jpeg_decoded_reduced(tmp_path, row):
    from PIL import Image

    from syncmask_hf.models.image_loading import DECODE_SIDE, load_image

    path = tmp_path / "huge.jpg"
    Image.new("L", (8192, 4096), 128).save(path, quality=50)
    image = load_image(str(path))
    assert image.size == (2 * DECODE_SIDE, DECODE_SIDE), row.expected  # 1/4 scale: 16x fewer pixels decoded
    assert load_image(path.read_bytes()).size == image.size


def _decompression_bomb_png(tmp_path, row):
    from PIL import Image

    from syncmask_hf.models.image_loading import FashionInputError, load_image

    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 5_000)).save(path)  # 50 Mpx, a few kB on disk
    with pytest.raises(FashionInputError, match=row.expected):
        load_image(str(path), index=3, item_id="bomb")


def _bomb_in_a_training_batch(tmp_path, row, model_dir):
    from PIL import Image
    from transformers import AutoProcessor

    from syncmask_hf.data.collator import FashionCollator

    Image.new("1", (10_000, 5_000)).save(tmp_path / "bomb.png")
    Image.new("RGB", (40, 40), (9, 90, 200)).save(tmp_path / "ok.png")
    collator = FashionCollator(AutoProcessor.from_pretrained(model_dir), skip_bad=True)
    rows = [
        {"image": str(tmp_path / name), "text": "a dress", "product_id": name, "item_id": name}
        for name in ("ok.png", "bomb.png", "ok.png")
    ]
    batch = collator(rows)
    assert batch["pixel_values"].shape[0] == 2 and collator.num_skipped == 1
    assert collator.skipped_item_ids == ["bomb.png"] and row.expected in collator.report()


def _synthetic_cap(spec):
    def run(tmp_path, row):
        from syncmask_hf.data import load_catalog

        with pytest.raises(ValueError, match=row.expected):
            load_catalog(spec)

    return run


def _huge_upload_decoded_reduced(tmp_path, row):
    from PIL import Image

    from syncmask_hf.search import open_image

    path = tmp_path / "camera.jpg"
    Image.new("L", (7360, 4912), 90).save(path, quality=50)  # a 36 Mpx camera photo
    image = open_image(str(path))
    assert image.width * image.height <= 2_500_000, (image.size, row.expected)


def _demo_endpoints_share_a_pool(tmp_path, row, model_dir, monkeypatch):
    monkeypatch.setenv("SYNCMASK_DEMO_NO_AUTOLOAD", "1")
    from demo.app import CONCURRENCY, build_demo
    from syncmask_hf.search import CatalogSearch

    demo = build_demo(CatalogSearch(model_dir, "synthetic:8", cache_dir=tmp_path / "cache"))
    named = [d for d in demo.fns.values() if d.api_name]
    assert len(named) >= 4 and {(d.concurrency_id, d.concurrency_limit) for d in named} == {("model", CONCURRENCY)}
    assert CONCURRENCY == int(row.expected)


# --------------------------------------------------------------------------------- 15: the demo serves thumbnails
def _upload_error_hides_server_paths(tmp_path, row):
    from syncmask_hf.search import BadImageError, open_image

    upload = tmp_path / "gradio" / "f3a9c1" / "notes.txt"
    upload.parent.mkdir(parents=True)
    upload.write_text("not a picture")
    with pytest.raises(BadImageError, match=row.expected) as err:
        open_image(str(upload), "notes.txt")
    assert str(tmp_path) not in str(err.value) and "f3a9c1" not in str(err.value)


def _demo_serves_thumbnails_only(tmp_path, row, model_dir, monkeypatch):
    import socket
    import urllib.error
    import urllib.request
    from types import SimpleNamespace

    monkeypatch.setenv("SYNCMASK_DEMO_NO_AUTOLOAD", "1")
    from demo.app import build_demo, launch
    from syncmask_hf.search import THUMBNAIL_SIDE, CatalogSearch

    engine = CatalogSearch(model_dir, "synthetic:8?size=800", cache_dir=tmp_path / "cache")
    thumbnail = engine.image_path(0)
    with __import__("PIL.Image").Image.open(thumbnail) as picture:
        assert max(picture.size) <= THUMBNAIL_SIDE
    cached = [p for p in engine.cache_dir.iterdir() if p.suffix in (".npz", ".json")]
    assert cached
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(engine)
    launch(demo, engine, SimpleNamespace(host="127.0.0.1", port=port, max_file_size="1mb"), prevent_thread_lock=True)
    try:

        def status(path):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={path}", timeout=30).status
            except urllib.error.HTTPError as err:
                return err.code

        assert status(thumbnail) == 200
        refused = {p.name: status(p) for p in cached}
        assert all(code in (403, 404) for code in refused.values()), (refused, row.expected)
    finally:
        demo.close()


# ------------------------------------------------------------ the other entry points: each bad input, a named error
def _raises(exc, call):
    """A row that calls `call(tmp_path)` and expects `exc` whose message holds the row's expected text."""

    def run(tmp_path, row):
        with pytest.raises(exc, match=row.expected):
            call(tmp_path)

    return run


def _skips(source_of, kind):
    """A row whose catalogue (built by `source_of(tmp_path)`) loads with skip_bad, one item counted as `kind`."""

    def run(tmp_path, row):
        from syncmask_hf.data import BadItemError, load_catalog

        source = source_of(tmp_path)
        with pytest.raises(BadItemError, match=row.expected):
            load_catalog(source)
        _, report = load_catalog(source, skip_bad=True, return_report=True)
        assert report.counts[kind] == 1

    return run


def _hm(tmp_path, article_id="0108775015"):
    root = tmp_path / "hm"
    (root / "images" / "010").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "images" / "010" / "0108775015.jpg")
    header = (
        "article_id,product_code,prod_name,product_type_name,product_group_name,graphical_appearance_name,"
        "colour_group_name,perceived_colour_value_name,department_name,index_name,index_group_name,section_name,"
        "garment_group_name,detail_desc"
    )
    good = "0108775015,0108775,Strap top,Vest top,Garment Upper body,Solid,Black,Dark,Jersey,Ladieswear,Ladieswear,Womens,Jersey,Jersey top"
    bad = good.replace("0108775015", article_id, 1)
    (root / "articles.csv").write_text(f"{header}\n{good}\n{bad}\n")
    return f"hm:{root}"


def _folder_with(lines: str, name: str = "metadata.jsonl"):
    def make(tmp_path):
        from PIL import Image

        root = tmp_path / "folder"
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "a.png")
        (root / name).write_text(lines)
        return f"folder:{root}"

    return make


def _load(source_of, **kwargs):
    def call(tmp_path):
        from syncmask_hf.data import load_catalog

        return load_catalog(source_of(tmp_path) if callable(source_of) else source_of, **kwargs)

    return call


def _fashiongen_without(tmp_path):
    import h5py
    import numpy as np

    path = tmp_path / "fashiongen_256_256_train.h5"
    with h5py.File(path, "w") as f:
        f["input_image"] = np.zeros((1, 8, 8, 3), np.uint8)
    return f"fashiongen:{path}"


def _hub_text_only(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"image": ["a.png"], "text": ["a dress"]}).to_parquet(str(tmp_path / "t.parquet"))
    return _load("hub:parquet", data_files=str(tmp_path / "t.parquet"), cache_dir=str(tmp_path / "hf"))(tmp_path)


def _fashioniq(tmp_path, triplets, gallery=("B001",)):
    root = tmp_path / "fiq"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    (root / "captions" / "cap.dress.train.json").write_text(json.dumps(triplets))
    (root / "image_splits" / "split.dress.train.json").write_text(json.dumps(list(gallery)))
    return root


def _fashioniq_not_json(tmp_path):
    from syncmask_hf.data.fashioniq import load_fashioniq

    root = _fashioniq(tmp_path, [])
    (root / "captions" / "cap.dress.train.json").write_text("{oops")
    load_fashioniq(str(root), "dress", "train")


def _fashioniq_id_leading_out(tmp_path, row):
    from syncmask_hf.data.fashioniq import load_fashioniq, load_fashioniq_gallery

    bad = {"candidate": "../../../etc/passwd", "target": "B002", "captions": ["is red", "is longer"]}
    ok = {"candidate": "B001", "target": "B002", "captions": ["is red", "is longer"]}
    root = _fashioniq(tmp_path, [ok, bad], gallery=["B001", "../secret"])
    ds, report = load_fashioniq(str(root), "dress", "train", skip_bad=True, return_report=True)
    assert len(ds) == 1 and report.counts["bad_row"] == 1 and row.expected in report.skipped[0][1]
    gallery = load_fashioniq_gallery(str(root), "dress", "train", str(root / "images"), skip_bad=True)
    assert len(gallery) == 0  # B001 is missing (skipped), ../secret is refused before any path is tried


def _processor(call):
    def run(tmp_path, row, model_dir):
        from transformers import AutoProcessor

        from syncmask_hf.models.image_loading import FashionInputError

        processor = AutoProcessor.from_pretrained(model_dir)
        with pytest.raises((FashionInputError, ValueError), match=row.expected):
            call(processor)

    return run


def _collator_row(image, text="a dress", item_id="i1"):
    return {"image": image, "text": text, "product_id": "p", "item_id": item_id}


def _collator_names_the_item(tmp_path, row, model_dir):
    from transformers import AutoProcessor

    from syncmask_hf.data.collator import FashionCollator
    from syncmask_hf.models.image_loading import FashionInputError

    collator = FashionCollator(AutoProcessor.from_pretrained(model_dir))
    with pytest.raises(FashionInputError, match=row.expected):
        collator([_collator_row(str(tmp_path / "gone.jpg"), item_id="sku-17")])


def _collator_whole_batch_bad(tmp_path, row, model_dir):
    from transformers import AutoProcessor

    from syncmask_hf.data.collator import FashionCollator

    collator = FashionCollator(AutoProcessor.from_pretrained(model_dir), skip_bad=True)
    assert collator([_collator_row(None, item_id="a"), _collator_row(b"", item_id="b")]) is None
    assert collator.num_skipped == 2 and row.expected in collator.report()


def _resume_from_a_folder_that_is_not_a_checkpoint(tmp_path, row):
    run = _Run(tmp_path / "out")
    run.args.resume_from_checkpoint = str(tmp_path / "out" / "checkpoints" / "step_9")
    with pytest.raises(FileNotFoundError, match=row.expected):
        run.resume()


def _progress_json_of_another_shape(tmp_path, row):
    _, first, second = _two_checkpoints(tmp_path)
    (second / "progress.json").write_text("[1, 2, 3]")
    run = _Run(tmp_path / "out")
    run.args.resume_from_checkpoint = str(second)
    with pytest.raises(FileNotFoundError, match=row.expected):
        run.resume()


def _demo_call(call):
    def run(tmp_path, row, model_dir):
        from syncmask_hf.search import CatalogSearch

        engine = CatalogSearch(model_dir, "synthetic:8", cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match=row.expected):
            call(engine, tmp_path)

    return run


def _empty_upload(engine, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    engine.search_image(str(tmp_path / "empty.jpg"))


def _hub_folder(change):
    def run(tmp_path, row, model_dir):
        import shutil

        from syncmask_hf.hub import HubFolderError, check_model_folder

        folder = tmp_path / "upload"
        shutil.copytree(model_dir, folder)
        check_model_folder(folder)  # intact, it passes
        change(folder)
        with pytest.raises(HubFolderError, match=row.expected):
            check_model_folder(folder)

    return run


def _drop_auto_map(folder):
    config = json.loads((folder / "config.json").read_text())
    config.pop("auto_map")
    (folder / "config.json").write_text(json.dumps(config))


def _import_the_package(folder):
    modeling = folder / "modeling_syncmask.py"
    modeling.write_text("import syncmask_hf\n" + modeling.read_text())


ROWS = [
    Row(
        "10a",
        "--resume_from_checkpoint latest",
        "custom_checkpoint_0.pkl holding a payload that runs a shell command (checksums rewritten to match)",
        "could run code",
        _crafted_pickle_in_checkpoint,
    ),
    Row(
        "10b",
        "save_checkpoint / resume",
        "the package's own state (feature queues, FashionFAE's task sampler) in a checkpoint",
        "rng_state",
        _checkpoint_state_is_not_a_pickle,
    ),
    Row(
        "10c",
        "--resume_from_checkpoint latest",
        "an earlier version's checkpoint (plain tensors and numbers in custom_checkpoint_<i>.pkl)",
        "2",
        _earlier_versions_plain_pickle,
    ),
    Row(
        "10d",
        "--resume_from_checkpoint latest",
        "a checkpoint whose training-state files were removed",
        "lacks the training state 'buffers'",
        _checkpoint_without_its_state,
    ),
    Row(
        "11a",
        "load_model_folder (evaluate.py, linear_probe.py, train_captioner.py)",
        "a folder of another model_type whose code runs at import",
        "not one of this package's model types",
        _load_model_folder_other_type,
    ),
    Row(
        "11b",
        "CatalogSearch / the demo's --model, MODEL_ID",
        "a folder of another model_type whose code runs at import",
        "not one of this package's model types",
        _catalog_search_other_type,
    ),
    Row(
        "11c",
        "the demo's --captioner, CAPTIONER_ID",
        "a captioner folder of another model_type",
        "not one of this package's model types",
        _demo_captioner_other_type,
    ),
    Row(
        "11d",
        "load_tgir_model (finetune_tgir.py, evaluate.py --tasks tgir)",
        "a folder of another model_type",
        "not one of this package's model types",
        _tgir_other_type,
    ),
    Row(
        "11e",
        "finetune_retrieval.py / finetune_classification.py --model_path",
        "a folder of another model_type",
        "not one of this package's model types",
        _finetune_script_other_type,
    ),
    Row(
        "11f",
        "load_model_folder",
        "the package's model_type with a tampered modeling_syncmask.py in the folder",
        "syncmask_hf.models.modeling_syncmask",
        _registered_type_with_tampered_code,
    ),
    Row(
        "11g",
        "load_model_folder(trust_remote_code=True) / --trust_remote_code",
        "the user opts in to the folder's code",
        "the flag reaches transformers",
        _trust_remote_code_opt_in,
    ),
    Row(
        "12a",
        "load_catalog('folder:...')",
        "metadata naming ../private/secret.png",
        "lies outside",
        _folder_dotdot,
    ),
    Row("12b", "load_catalog('folder:...')", "metadata naming /etc/passwd", "lies outside", _folder_absolute),
    Row(
        "12c",
        "load_catalog('folder:...')",
        "an image inside the root that is a symbolic link out of it",
        "lies outside",
        _folder_symlink_out,
    ),
    Row(
        "12d",
        "load_catalog('folder:...', allow_outside_root=True)",
        "the caller opts out for a catalogue of their own",
        "a stolen dress",
        _folder_opt_out,
    ),
    Row(
        "12e",
        "load_catalog('hub:...')",
        "rows whose image is a local absolute path (no bytes)",
        "lies outside",
        _hub_rows_with_local_paths,
    ),
    Row("12f", "load_catalog('myntra:...')", "a style id of ../../x", "bad_row", _myntra_id_leading_out),
    Row(
        "12g",
        "CatalogSearch / the demo's index",
        "a folder catalogue naming a file outside it",
        "outside_root",
        _demo_index_outside_root,
    ),
    Row(
        "13",
        "pretrain.py --report_to tensorboard --hub_token ...",
        "the token in every file the run writes (events, hparams) and its output",
        "the token is nowhere",
        _hub_token_in_tracker_logs,
    ),
    Row(
        "14a",
        "load_image (the processor, the collator, the loaders)",
        "an 8192 x 4096 JPEG",
        "decoded at a quarter scale",
        _huge_jpeg_decoded_reduced,
    ),
    Row(
        "14b",
        "load_image",
        "a 10,000 x 5,000 PNG of a few kB (decompression bomb)",
        "more than the 40,000,000",
        _decompression_bomb_png,
    ),
    Row(
        "14c",
        "FashionCollator(skip_bad=True) (training)",
        "a decompression bomb inside a batch",
        "skipped 1 bad rows",
        _bomb_in_a_training_batch,
    ),
    Row(
        "14d",
        "load_catalog('synthetic:...')",
        "synthetic:1?size=100000",
        "image_size must be between",
        _synthetic_cap("synthetic:1?size=100000"),
    ),
    Row(
        "14e",
        "load_catalog('synthetic:...')",
        "synthetic:5000000",
        "num_items must be between",
        _synthetic_cap("synthetic:5000000"),
    ),
    Row(
        "14f",
        "load_catalog('synthetic:...')",
        "synthetic:10?views=0",
        "max_views must be between",
        _synthetic_cap("synthetic:10?views=0"),
    ),
    Row(
        "14g",
        "the demo's uploads (open_image)",
        "a 36 Mpx camera JPEG",
        "decoded reduced",
        _huge_upload_decoded_reduced,
    ),
    Row(
        "14h",
        "the demo's four endpoints",
        "16 concurrent requests with large uploads",
        "2",
        _demo_endpoints_share_a_pool,
    ),
    Row(
        "15a",
        "the demo's uploads (open_image)",
        "a text file uploaded as a photo",
        "notes.txt is not an image",
        _upload_error_hides_server_paths,
    ),
    Row(
        "15b",
        "the demo's file route (/gradio_api/file=)",
        "asking for the embedding cache (.npz) and its JSON by path",
        "refused; thumbnails served",
        _demo_serves_thumbnails_only,
    ),
    Row(
        "L1",
        "load_catalog('hm:...')",
        "no articles.csv",
        "articles.csv not found",
        _raises(FileNotFoundError, _load(lambda t: f"hm:{t}")),
    ),
    Row(
        "L2",
        "load_catalog('hm:...')",
        "an article_id of ../../x",
        "non-numeric article_id",
        _skips(lambda t: _hm(t, "../../x"), "bad_row"),
    ),
    Row(
        "L3",
        "load_catalog('folder:...')",
        "a metadata.jsonl line that is a JSON list",
        "not a JSON object",
        _skips(_folder_with('{"file_name": "a.png", "text": "a dress"}\n[1, 2]\n'), "bad_row"),
    ),
    Row(
        "L4",
        "load_catalog('folder:...')",
        "a metadata.csv line with an extra field",
        "wrong number of fields",
        _skips(_folder_with("file_name,text\na.png,a dress\na.png,a dress,extra\n", "metadata.csv"), "bad_row"),
    ),
    Row(
        "L5",
        "load_catalog('folder:...')",
        "no metadata file",
        "no metadata.jsonl or metadata.csv",
        _raises(FileNotFoundError, _load(lambda t: (t / "empty").mkdir() or f"folder:{t / 'empty'}")),
    ),
    Row(
        "L6",
        "load_catalog('folder:...')",
        "metadata without a text column",
        "no text column 'text'",
        _raises(Exception, _load(_folder_with('{"file_name": "a.png", "caption": "x"}\n'))),
    ),
    Row(
        "L7",
        "load_catalog('fashiongen:...')",
        "an HDF5 file without the text keys",
        "input_",
        _raises(Exception, lambda t: _load(_fashiongen_without(t))(t)),
    ),
    Row(
        "L8",
        "load_catalog('hub:...')",
        "an image column of strings, not datasets.Image",
        "not a datasets.Image feature",
        _raises(Exception, _hub_text_only),
    ),
    Row(
        "L9",
        "load_catalog",
        "an unknown source kind (s3:bucket)",
        "unknown catalogue source",
        _raises(ValueError, _load("s3:bucket")),
    ),
    Row(
        "L10",
        "load_catalog('synthetic:...')",
        "a keyword the source does not take (colums=)",
        "colums",
        _raises(TypeError, _load("synthetic:8", colums={})),
    ),
    Row(
        "L11",
        "load_catalog('synthetic:...')",
        "synthetic:many",
        "must be an integer",
        _raises(ValueError, _load("synthetic:many")),
    ),
    Row(
        "L12",
        "load_fashioniq",
        "a captions file that is not JSON",
        "not valid JSON",
        _raises(Exception, lambda t: _fashioniq_not_json(t)),
    ),
    Row(
        "L13",
        "load_fashioniq / load_fashioniq_gallery",
        "image ids of ../../../etc/passwd",
        "is not a file name",
        _fashioniq_id_leading_out,
    ),
    Row(
        "P1",
        "FashionProcessor",
        "called with nothing",
        "needs at least one of images, text",
        _processor(lambda p: p()),
    ),
    Row(
        "P2",
        "FashionProcessor",
        "an image given as a URL",
        "is a URL; the processor does not download",
        _processor(lambda p: p(images=["https://example.com/a.jpg"])),
    ),
    Row(
        "P3",
        "FashionProcessor",
        "empty image bytes",
        "the image bytes are empty",
        _processor(lambda p: p(images=[b""])),
    ),
    Row("P4", "FashionProcessor", "an int as an image", "int is not an image", _processor(lambda p: p(images=[5]))),
    Row(
        "P5",
        "FashionProcessor",
        "a 1-D array as an image",
        "an image array must be HxW",
        _processor(lambda p: p(images=[np.zeros(5)])),
    ),
    Row("P6", "FashionProcessor", "an int as a text", "text must be a string", _processor(lambda p: p(text=[5]))),
    Row(
        "P7",
        "FashionProcessor",
        "an image dict with neither bytes nor path",
        "neither bytes nor a path",
        _processor(lambda p: p(images=[{"bytes": None, "path": None}])),
    ),
    Row("C1", "FashionCollator", "a missing image file, skip_bad off", "item_id='sku-17'", _collator_names_the_item),
    Row(
        "C2",
        "FashionCollator(skip_bad=True)",
        "every row of a batch bad (None image, empty bytes)",
        "skipped 2 bad rows",
        _collator_whole_batch_bad,
    ),
    Row(
        "R1",
        "--resume_from_checkpoint <folder>",
        "a folder that does not exist",
        "is not a complete checkpoint",
        _resume_from_a_folder_that_is_not_a_checkpoint,
    ),
    Row(
        "R2",
        "--resume_from_checkpoint <folder>",
        "progress.json holding a JSON list",
        "is not a complete checkpoint",
        _progress_json_of_another_shape,
    ),
    Row(
        "D1",
        "the demo's text search",
        "an empty query",
        "Type a description",
        _demo_call(lambda e, t: e.search_text("   ")),
    ),
    Row("D2", "the demo's image search", "no image", "No image given", _demo_call(lambda e, t: e.search_image(None))),
    Row("D3", "the demo's image search", "an empty file", "is an empty file", _demo_call(_empty_upload)),
    Row(
        "D4",
        "the demo's 'this, but' search",
        "a modification with no reference photo",
        "No image given",
        _demo_call(lambda e, t: e.search_modified(None, "in red")),
    ),
    Row(
        "H1",
        "check_model_folder (push_to_hub.py)",
        "config.json without auto_map",
        "has no `auto_map`",
        _hub_folder(_drop_auto_map),
    ),
    Row(
        "H2",
        "check_model_folder (push_to_hub.py)",
        "no weights file",
        "safetensors",
        _hub_folder(lambda f: (f / "model.safetensors").unlink()),
    ),
    Row(
        "H3",
        "check_model_folder (push_to_hub.py)",
        "a code file importing syncmask_hf",
        "syncmask_hf",
        _hub_folder(_import_the_package),
    ),
    Row(
        "H4",
        "check_model_folder (push_to_hub.py)",
        "config.json that is not JSON",
        "config.json",
        _hub_folder(lambda f: (f / "config.json").write_text("{oops")),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.case}: {r.fault}" for r in ROWS])
def test_hostile_input(row, tmp_path, request):
    extra = {name: request.getfixturevalue(name) for name in list(inspect.signature(row.run).parameters)[2:]}
    row.run(tmp_path, row, **extra)


def test_the_table_covers_every_case():
    from tests.test_faults import ROWS as RELIABILITY

    cases = [r.case for r in RELIABILITY + ROWS]
    assert len(cases) == len(set(cases)), "two rows share a case id"
