"""CPU serving runtimes side by side in one run: PyTorch eager fp32, PyTorch int8 (torch.ao dynamic quantisation),
ONNX Runtime fp32 and ONNX Runtime int8 (examples/export_onnx.py's files), per model.

For each runtime: images/s and texts/s of the encoder alone (inputs already preprocessed; the processor is the same
for every runtime) at batch 1 and batch 32, medians of `--repeats` interleaved repeats (each repeat runs every
runtime once, so load from other processes hits all alike), and held-out retrieval (full-gallery I2T / T2I R@10,
the main job's protocol on the products `pretrain.py` held out) with each runtime's features. Ratios are against
PyTorch fp32 measured in the same run.

    # speed at the papers' sizes (random weights: only shapes matter for speed; R@10 needs a trained model)
    python examples/benchmarks/bench_serving.py --size base --no_retrieval
    # retrieval per runtime, with models pretrain.py trained (python examples/pretrain.py --model M --output_dir ...)
    python examples/benchmarks/bench_serving.py --model e2=outputs/e2/final --model syncmask=outputs/syncmask/final

Targets (issue 34): ONNX Runtime fp32 at least 1.3x PyTorch eager; int8 at least 2x with R@10 at most 1 point lower.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import syncmask_hf  # noqa: F401  (registers the package's models with the Auto classes)
from syncmask_hf.catalog_index import FeatureEncoder
from syncmask_hf.evaluation import format_results_markdown
from syncmask_hf.serving import OnnxFeatureEncoder, export_onnx
from syncmask_hf.specs import get_spec

RUNTIMES = ("PyTorch fp32", "PyTorch int8 (torch.ao)", "ONNX Runtime fp32", "ONNX Runtime int8")


class RuntimeModule(torch.nn.Module):
    """A runtime behind the evaluator's interface (CLIP's get_*_features returning `.pooler_output`)."""

    def __init__(self, image_fn, text_fn):
        super().__init__()
        self.image_fn, self.text_fn = image_fn, text_fn

    def get_image_features(self, pixel_values):
        return BaseModelOutputWithPooling(
            pooler_output=torch.from_numpy(np.asarray(self.image_fn(pixel_values.numpy())))
        )

    def get_text_features(self, input_ids, attention_mask):
        return BaseModelOutputWithPooling(
            pooler_output=torch.from_numpy(np.asarray(self.text_fn(input_ids.numpy(), attention_mask.numpy())))
        )


def runtimes(model_path: Path, onnx_dir: Path, threads: int) -> dict:
    """Runtime name -> (image_fn(pixel_values np) -> np, text_fn(input_ids np, attention_mask np) -> np)."""
    out = {}
    for name, int8 in (("PyTorch fp32", False), ("PyTorch int8 (torch.ao)", True)):
        model = FeatureEncoder(str(model_path), int8=int8).model

        def image_fn(pv, model=model):
            with torch.inference_mode():
                return model.get_image_features(pixel_values=torch.from_numpy(pv)).pooler_output.numpy()

        def text_fn(ids, mask, model=model):
            with torch.inference_mode():
                ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
                return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.numpy()

        out[name] = (image_fn, text_fn)
    for precision in ("fp32", "int8"):
        sessions = OnnxFeatureEncoder(onnx_dir, precision, threads=threads).sessions

        def image_fn(pv, s=sessions["image"]):
            return s.run(None, {"pixel_values": pv.astype(np.float32)})[0]

        def text_fn(ids, mask, s=sessions["text"]):
            return s.run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})[0]

        out[f"ONNX Runtime {precision}"] = (image_fn, text_fn)
    return out


def held_out(model_path: Path, args):
    """The products pretrain.py held out (same sources, sizes and seed) and the collator it evaluates with."""
    from transformers import AutoConfig, AutoProcessor

    from syncmask_hf.data.collator import FashionCollator
    from syncmask_hf.specs import load_pretrained
    from syncmask_hf.training import e2_text, load_catalog_splits

    config = AutoConfig.from_pretrained(model_path)
    processor = load_pretrained(AutoProcessor, model_path)
    splits = load_catalog_splits(args.dataset, args.test_products, args.val_products, args.seed)
    # seeded as pretrain.py's: FashionFAE's attribute templates are shuffled per batch from the seed
    collator = FashionCollator(processor, mode=get_spec(config).name, seed=args.seed, e2_text=e2_text(config))
    return splits["test"], collator


def timing_inputs(model_path: Path, batch: int):
    """`batch` catalogue pictures and texts, preprocessed once (the processor is not what is compared)."""
    from transformers import AutoProcessor

    from syncmask_hf.data import load_catalog
    from syncmask_hf.search import open_image
    from syncmask_hf.specs import load_pretrained

    processor = load_pretrained(AutoProcessor, model_path)
    rows = load_catalog(f"synthetic:{max(batch, 8)}").select(range(batch))
    pv = processor(images=[open_image(r["image"]) for r in rows], return_tensors="np")["pixel_values"]
    tx = processor(text=[r["text"] for r in rows], return_tensors="np", padding=True, truncation=True)
    return pv.astype(np.float32), tx["input_ids"].astype(np.int64), tx["attention_mask"].astype(np.int64)


def bench_model(name: str, model_path: Path | None, args, work: Path) -> dict:
    spec = get_spec(name)
    trained = model_path is not None
    if model_path is None:
        from syncmask_hf.training import save_random_model

        preset = spec.base_preset if args.size == "base" else spec.tiny_preset
        model_path = save_random_model(name, work / name / "model", preset=preset)
    onnx_dir = work / name / "onnx"
    t = time.perf_counter()
    manifest = export_onnx(model_path, onnx_dir)
    print(f"{name}: exported in {time.perf_counter() - t:.1f} s, parity {manifest['parity_min_cosine']}", flush=True)
    fns = runtimes(model_path, onnx_dir, args.threads)
    rows = {r: {} for r in fns}
    for batch in args.batches:
        pv, ids, mask = timing_inputs(model_path, batch)
        for kind in ("image", "text"):
            times = {r: [] for r in fns}
            for image_fn, text_fn in fns.values():  # warm-up
                image_fn(pv) if kind == "image" else text_fn(ids, mask)
            for _ in range(args.repeats):
                for r, (image_fn, text_fn) in fns.items():
                    t = time.perf_counter()
                    image_fn(pv) if kind == "image" else text_fn(ids, mask)
                    times[r].append(time.perf_counter() - t)
            for r in fns:
                rows[r][f"{kind}s/s b{batch}"] = batch / statistics.median(times[r])
    reference = rows["PyTorch fp32"]
    for r in fns:
        for batch in args.batches:
            for kind in ("image", "text"):
                key = f"{kind}s/s b{batch}"
                rows[r][f"{kind} x b{batch}"] = rows[r][key] / reference[key]
    if trained and not args.no_retrieval:
        from syncmask_hf.training import evaluate_retrieval

        dataset, collator = held_out(model_path, args)
        for r, (image_fn, text_fn) in fns.items():
            res = evaluate_retrieval(RuntimeModule(image_fn, text_fn), dataset, collator, "cpu", show_progress=False)
            rows[r]["i2t R@10"] = res["full"]["i2t_R@10"]
            rows[r]["t2i R@10"] = res["full"]["t2i_R@10"]
        for r in fns:
            rows[r]["R@10 diff"] = (
                rows[r]["i2t R@10"] + rows[r]["t2i R@10"] - reference["i2t R@10"] - reference["t2i R@10"]
            ) / 2
    return {f"{name}, {r}": row for r, row in rows.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="NAME (a random model at --size) or NAME=FOLDER (a trained folder: R@10 too); repeat. "
        "Default: the three models at --size",
    )
    p.add_argument("--size", choices=["tiny", "base"], default="tiny", help="preset of the random models")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--no_retrieval", action="store_true", help="speed only")
    p.add_argument("--dataset", nargs="+", default=["synthetic:2400"], help="as pretrain.py: the held-out split's")
    p.add_argument("--test_products", type=float, default=0.15)
    p.add_argument("--val_products", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output_dir", default=None, help="where exports go (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    models = []
    for entry in args.model or ["syncmask", "e2", "fashionfae"]:
        name, _, folder = entry.partition("=")
        get_spec(name)  # an unknown name fails here, naming the choices
        models.append((name, Path(folder) if folder else None))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        work = Path(args.output_dir or tmp)
        for name, folder in models:
            rows.update(bench_model(name, folder, args, work))
    print(
        f"\n{args.threads} threads, fp32 / int8 on CPU; encoder alone, preprocessed inputs; medians of "
        f"{args.repeats} interleaved repeats; 'x': throughput relative to PyTorch fp32 in the same run; R@10: "
        "full-gallery on held-out products; 'R@10 diff': mean of I2T and T2I, points against PyTorch fp32"
    )
    print(format_results_markdown(rows, digits=2))
    return rows


if __name__ == "__main__":
    main()
