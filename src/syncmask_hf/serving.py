"""CPU serving: the image and text encoders of any of the package's models as ONNX files, run by ONNX Runtime in
fp32 or int8, behind the same feature contract as the PyTorch model (`FeatureEncoder`).

    export_onnx("outputs/e2/final", "outputs/e2/onnx")            # image_encoder.onnx, text_encoder.onnx, + int8
    encoder = OnnxFeatureEncoder("outputs/e2/onnx", precision="int8")
    encoder.texts(["red striped dress"])                           # (1, D) unit vectors, as FeatureEncoder gives
    CatalogIndex.open("outputs/hm.lance", encoder=encoder)         # the index queried through ONNX Runtime

Each tower is what `get_image_features(pixel_values).pooler_output` / `get_text_features(input_ids,
attention_mask).pooler_output` compute (E2's selection tokens and fusion blocks included), exported with
`torch.onnx.export(dynamo=True)` with a dynamic batch (and text length). optimum's exporters take only architectures
they know (CLIP, BERT, ...), not these models' towers, so the export goes through torch.onnx directly. Every export
is checked: ONNX Runtime's features on inputs of another batch size and text length than the export's must match
PyTorch's (cosine >= `PARITY_MIN`), or the export fails. int8: ONNX Runtime's dynamic quantisation (weights int8 per
channel, activations quantised on the fly); `FeatureEncoder(..., int8=True)` is torch.ao's. How much either costs in
retrieval is measured, not assumed: examples/benchmarks/bench_serving.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .catalog_index import FeatureEncoder, image_token

logger = logging.getLogger("syncmask_hf.serving")

ONNX_FILES = {
    ("image", "fp32"): "image_encoder.onnx",
    ("text", "fp32"): "text_encoder.onnx",
    ("image", "int8"): "image_encoder.int8.onnx",
    ("text", "int8"): "text_encoder.int8.onnx",
}
MANIFEST = "onnx_export.json"
#: ONNX Runtime's fp32 features against PyTorch's: the least cosine an export may show.
PARITY_MIN = 0.999
PRECISIONS = ("fp32", "int8")


class _ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


class _TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _check_images(n: int, seed: int) -> list[Image.Image]:
    """Varied pictures (colours, stripes, blocks) for the parity check: constant images would hide errors."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(48, 200, 2)
        base = rng.integers(0, 256, 3)
        pic = np.broadcast_to(base, (h, w, 3)).copy()
        pic[:: rng.integers(2, 9)] = rng.integers(0, 256, 3)  # stripes
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        pic[y : y + h // 3, x : x + w // 3] = rng.integers(0, 256, 3)  # a block
        out.append(Image.fromarray((pic + rng.normal(0, 12, pic.shape)).clip(0, 255).astype(np.uint8)))
    return out


_CHECK_TEXTS = [
    "red dress",
    "blue striped cotton shirt with long sleeves and a button-down collar",
    "black leather ankle boots",
    "a",
    "light denim jacket, relaxed fit, chest pockets, washed finish",
]


def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def export_onnx(
    model_path,
    output_dir,
    *,
    quantize: bool = True,
    trust_remote_code: bool = False,
    parity_min: float = PARITY_MIN,
) -> dict:
    """Export the image and text encoders of the model at `model_path` to `output_dir` (with its processor, so the
    folder serves on its own), check their parity with PyTorch, and with `quantize` write their int8 versions.
    Returns the manifest written to `output_dir/onnx_export.json` (files, parity and int8 cosines)."""
    import onnxruntime as ort
    from transformers import AutoModel, AutoProcessor

    from .specs import load_pretrained

    remote = {"trust_remote_code": trust_remote_code}
    model = load_pretrained(AutoModel, model_path, **remote).float().eval()
    processor = load_pretrained(AutoProcessor, model_path, **remote)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    export_images = processor(images=_check_images(2, 0), return_tensors="pt")["pixel_values"]
    export_texts = processor(text=_CHECK_TEXTS[:2], return_tensors="pt", padding=True, truncation=True)
    check_images = processor(images=_check_images(5, 1), return_tensors="pt")["pixel_values"]
    check_texts = processor(text=_CHECK_TEXTS, return_tensors="pt", padding=True, truncation=True)
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=4096)
    towers = {
        "image": (
            _ImageTower(model),
            {"pixel_values": export_images},
            {"pixel_values": {0: batch}},
            {"pixel_values": check_images},
        ),
        "text": (
            _TextTower(model),
            {"input_ids": export_texts["input_ids"], "attention_mask": export_texts["attention_mask"]},
            {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            {"input_ids": check_texts["input_ids"], "attention_mask": check_texts["attention_mask"]},
        ),
    }
    parity, int8_cosine = {}, {}
    for kind, (tower, example, dynamic, check) in towers.items():
        path = out / ONNX_FILES[kind, "fp32"]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes; failures still raise
            torch.onnx.export(
                tower,
                (),
                str(path),
                kwargs=example,
                input_names=list(example),
                output_names=["embeds"],
                dynamic_shapes=dynamic,
                dynamo=True,
                verbose=False,
                # one file (what a Space or an index server copies) unless protobuf's 2 GB limit forbids it
                external_data=sum(p.numel() * 4 for p in tower.parameters()) > 1.8e9,
            )
            reference = tower(**check).numpy()
        # another batch size and text length than the export's: the dynamic axes must hold
        inputs = {name: t.numpy() for name, t in check.items()}
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        parity[kind] = float(_cosines(got, reference).min())
        if not parity[kind] >= parity_min:
            raise RuntimeError(
                f"the exported {kind} encoder of {model_path} disagrees with PyTorch (least cosine {parity[kind]:.5f} "
                f"< {parity_min}): {path} is not usable; please report it with the model's config.json"
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = out / ONNX_FILES[kind, "int8"]
            prepared = out / f"{kind}_encoder.prep.onnx"
            source = _prepare_for_quantisation(path, prepared)
            quantize_dynamic(str(source), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
            prepared.unlink(missing_ok=True)
            got = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
            int8_cosine[kind] = float(_cosines(got, reference).min())
    processor.save_pretrained(out)
    model.config.save_pretrained(out)
    files = {f"{kind}_{precision}": name for (kind, precision), name in ONNX_FILES.items() if (out / name).is_file()}
    manifest = {
        "source_model": str(model_path),
        "model_type": model.config.model_type,
        "embedding_dim": int(reference.shape[-1]),
        "files": files,
        "parity_min_cosine": parity,
        "int8_min_cosine": int8_cosine,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _prepare_for_quantisation(path: Path, prepared: Path) -> Path:
    """ONNX Runtime's advice before quantising: shape inference and graph optimisation. Its symbolic shape inference
    gives up on some dynamic text lengths (min(max_positions, length)); ONNX's own shape inference then does."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            # its shape inference leaves scratch files (sym_shape_infer_temp.onnx, <uuid>.data) in the working
            # directory: run it inside a temporary one
            with _quiet_logger("onnxruntime.tools.symbolic_shape_infer"), tempfile.TemporaryDirectory() as scratch:
                cwd = os.getcwd()
                os.chdir(scratch)
                try:
                    quant_pre_process(str(path.resolve()), str(prepared.resolve()), skip_symbolic_shape=skip_symbolic)
                finally:
                    os.chdir(cwd)
            return prepared
        except Exception as err:  # noqa: BLE001 - the next way, then the export as it is
            last = err
    logger.warning("pre-processing %s for quantisation failed (%s); quantising it as exported", path, last)
    return path


class _quiet_logger:
    def __init__(self, name: str):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def torch_int8(model: torch.nn.Module, per_channel: bool = True) -> torch.nn.Module:
    """torch.ao's dynamic int8 quantisation of every `nn.Linear` (weights int8, activations quantised per batch).
    Weights per output channel, as the ONNX export's (`per_channel=False`: torch.ao's default, one scale a matrix)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (torchao is its successor)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)


class OnnxFeatureEncoder(FeatureEncoder):
    """`FeatureEncoder`'s contract (`image_features` / `text_features`: unit-normalised torch tensors; `images` /
    `texts`: numpy) from a folder `export_onnx` wrote, run by ONNX Runtime. `precision`: "fp32" or "int8";
    `threads`: ONNX Runtime's intra-op threads (default: torch's). No PyTorch model is loaded (`model` is None)."""

    def __init__(self, onnx_dir, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoProcessor

        from .specs import load_pretrained

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} (got {precision!r})")
        self.onnx_dir = Path(onnx_dir)
        manifest_path = self.onnx_dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.onnx_dir} holds no ONNX export ({MANIFEST} missing): write one with "
                f"`python examples/export_onnx.py --model_path MODEL --output_dir {self.onnx_dir}`"
            )
        self.manifest = json.loads(manifest_path.read_text())
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        self.sessions = {}
        for kind in ("image", "text"):
            path = self.onnx_dir / ONNX_FILES[kind, precision]
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: export with int8 versions (examples/export_onnx.py without --no_int8)"
                    if precision == "int8"
                    else f"{path} is missing: export the folder again with examples/export_onnx.py"
                )
            self.sessions[kind] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.processor = load_pretrained(AutoProcessor, self.onnx_dir)
        self.model = None  # no PyTorch model behind it
        digest = hashlib.sha256()
        for kind in ("image", "text"):  # each file's path, size and modification time
            digest.update(image_token(self.onnx_dir / ONNX_FILES[kind, precision]))
        #: what tells a cache that these features come from this export at this precision
        self.key = f"onnx-{precision}-{digest.hexdigest()[:16]}"

    def image_features(self, images) -> torch.Tensor:
        pixel_values = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        out = self.sessions["image"].run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]
        return F.normalize(torch.from_numpy(np.ascontiguousarray(out)).float(), dim=-1)

    def text_features(self, texts) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="np", padding=True, truncation=True)
        feed = {name: inputs[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        out = self.sessions["text"].run(None, feed)[0]
        return F.normalize(torch.from_numpy(np.ascontiguousarray(out)).float(), dim=-1)


__all__ = ["MANIFEST", "ONNX_FILES", "PARITY_MIN", "OnnxFeatureEncoder", "export_onnx", "torch_int8"]
