"""CPU serving (syncmask_hf.serving, examples/export_onnx.py): each model's encoders exported to ONNX match PyTorch's
features on inputs of other shapes than the export's; int8 (ONNX Runtime's and torch.ao's) runs on every model and
stays close; the catalogue index is built and queried through the ONNX files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx_lib = pytest.importorskip("onnx")

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_pretrain import ENV  # noqa: E402

from syncmask_hf import training  # noqa: E402
from syncmask_hf.catalog_index import FeatureEncoder  # noqa: E402
from syncmask_hf.serving import MANIFEST, ONNX_FILES, OnnxFeatureEncoder, _check_images, _cosines  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXTS = ["green knit jumper", "shoes", "a long floral summer dress with thin straps and a tie waist", "red"]


_EXPORTS: dict[str, tuple[Path, Path]] = {}


def export(name: str, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random model of kind `name` and its export, written by the script (once per session)."""
    if name not in _EXPORTS:
        root = tmp_path_factory.mktemp(name)
        training.save_random_model(name, root / "model", seed=3)
        cmd = [sys.executable, str(EXAMPLES / "export_onnx.py"), "--model_path", str(root / "model")]
        cmd += ["--output_dir", str(root / "onnx")]
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=root)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "fp32 cosine with PyTorch" in proc.stdout
        # nothing left in the working directory (ONNX Runtime's shape inference writes scratch files there)
        assert sorted(p.name for p in root.iterdir()) == ["model", "onnx"]
        _EXPORTS[name] = root / "model", root / "onnx"
    return _EXPORTS[name]


@pytest.fixture(params=["syncmask", "e2", "fashionfae"])
def exported(request, tmp_path_factory):
    return export(request.param, tmp_path_factory)


def test_onnx_encoders_match_pytorch_and_int8_stays_close(exported):
    model, onnx = exported
    manifest = json.loads((onnx / MANIFEST).read_text())
    assert manifest["parity_min_cosine"]["image"] >= 0.999 and manifest["parity_min_cosine"]["text"] >= 0.999
    assert set(manifest["files"]) == {"image_fp32", "text_fp32", "image_int8", "text_int8"}
    for kind in ("image", "text"):  # int8: the matrix products run on int8 weights (none left in fp32)
        fp32_ops = [n.op_type for n in onnx_lib.load(str(onnx / ONNX_FILES[kind, "fp32"])).graph.node]
        int8_ops = [n.op_type for n in onnx_lib.load(str(onnx / ONNX_FILES[kind, "int8"])).graph.node]
        assert "MatMulInteger" not in fp32_ops and int8_ops.count("MatMulInteger") >= fp32_ops.count("MatMul") // 2
        assert int8_ops.count("DynamicQuantizeLinear") >= 1

    reference = FeatureEncoder(str(model))
    fp32, int8 = OnnxFeatureEncoder(onnx, "fp32"), OnnxFeatureEncoder(onnx, "int8")
    torch_int8 = FeatureEncoder(str(model), int8=True)
    assert fp32.key != int8.key and reference.key != torch_int8.key
    for images in (_check_images(1, 7), _check_images(6, 8)):  # batch sizes the export never saw
        want = reference.images(images)
        assert _cosines(fp32.images(images), want).min() >= 0.999
        for quantised in (int8, torch_int8):
            got = quantised.images(images)
            assert _cosines(got, want).min() >= 0.99
            assert np.abs(got - want).max() > 1e-6  # quantised: not the fp32 computation again
    for texts in (TEXTS[:1], TEXTS):  # lengths and batch sizes the export never saw
        want = reference.texts(texts)
        assert want.shape == (len(texts), manifest["embedding_dim"])
        assert _cosines(fp32.texts(texts), want).min() >= 0.999
        for quantised in (int8, torch_int8):
            got = quantised.texts(texts)
            assert _cosines(got, want).min() >= 0.99
            assert np.abs(got - want).max() > 1e-6
    # the features still tell items apart (not collapsed to one direction)
    feats = fp32.texts(TEXTS)
    assert (feats @ feats.T)[~np.eye(len(TEXTS), dtype=bool)].max() < 0.999


def test_a_folder_without_an_export_is_refused_with_the_command_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx.py"):
        OnnxFeatureEncoder(tmp_path)


@pytest.mark.slow
def test_catalogue_index_built_and_queried_through_onnx(tmp_path_factory, tmp_path):
    """index_catalog.py --onnx writes the vectors ONNX Runtime computes; queries through the export find what the
    PyTorch model finds."""
    pytest.importorskip("lancedb")
    from syncmask_hf.catalog_index import CatalogIndex

    model, onnx = export("e2", tmp_path_factory)  # the plumbing with one model; parity is tested on all three
    common = ["--dataset", "synthetic:48", "--chunk_size", "16", "--batch_size", "16", "--no_progress"]
    for name, extra in (("torch", []), ("onnx", ["--onnx", str(onnx)])):
        cmd = [sys.executable, str(EXAMPLES / "index_catalog.py"), "--model_path", str(model)]
        cmd += ["--index_uri", str(tmp_path / name), *common, *extra]
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {}
    for name in ("torch", "onnx"):
        table = CatalogIndex.open(tmp_path / name)._table.to_arrow().to_pylist()
        rows[name] = {r["item_id"]: np.asarray(r["image_vec"]) for r in table}
    assert rows["torch"].keys() == rows["onnx"].keys() and len(rows["onnx"]) == 48
    ids = sorted(rows["torch"])
    got = np.stack([rows["onnx"][i] for i in ids])
    want = np.stack([rows["torch"][i] for i in ids])
    assert _cosines(got, want).min() >= 0.999
    index = CatalogIndex.open(tmp_path / "torch", encoder=OnnxFeatureEncoder(onnx))
    reference = CatalogIndex.open(tmp_path / "torch")
    for query in ("red striped dress", "black boots"):
        served = [h["item_id"] for h in index.search(text=query, k=5, group_by_product=False)]
        assert served == [h["item_id"] for h in reference.search(text=query, k=5, group_by_product=False)]


@pytest.mark.slow
def test_demo_engine_serves_from_the_onnx_export(tmp_path_factory, tmp_path):
    """CatalogSearch(onnx=...) (the demo's --onnx): the catalogue and the queries embedded by ONNX Runtime, in a cache
    of their own, finding what the PyTorch engine finds; the header says what serves."""
    pytest.importorskip("lancedb")
    from syncmask_hf.search import CatalogSearch

    model, onnx = export("e2", tmp_path_factory)
    reference = CatalogSearch(model, "synthetic:32", cache_dir=tmp_path)
    served = CatalogSearch(model, "synthetic:32", cache_dir=tmp_path, onnx=onnx)
    int8 = CatalogSearch(model, "synthetic:32", cache_dir=tmp_path, onnx=onnx, onnx_precision="int8")
    assert len({p.name for p in tmp_path.glob("*.npz")}) == 3  # three encoders, three caches: never mixed
    assert _cosines(served.image_embeds.numpy(), reference.image_embeds.numpy()).min() >= 0.999
    assert _cosines(int8.image_embeds.numpy(), reference.image_embeds.numpy()).min() >= 0.99
    for query in ("red striped dress", "black boots"):
        want = [h.product_id for h in reference.search_text(query, k=5)]
        assert [h.product_id for h in served.search_text(query, k=5)] == want
    photo = reference.image(3)
    products, _texts = served.search_image(photo, k=3)
    assert [h.product_id for h in products] == [h.product_id for h in reference.search_image(photo, k=3)[0]]

    import os

    os.environ["SYNCMASK_DEMO_NO_AUTOLOAD"] = "1"
    from demo.app import build_demo, parse_args

    assert parse_args(["--onnx", str(onnx), "--onnx_precision", "int8"]).onnx_precision == "int8"
    demo = build_demo(int8)
    assert "Embeddings served by ONNX Runtime (int8)" in str(demo.config)
