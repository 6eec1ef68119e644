#!/usr/bin/env python
"""Export a model's image and text encoders to ONNX (fp32 and int8) for CPU serving with ONNX Runtime.

    python examples/export_onnx.py --model_path outputs/pretrain/final --output_dir outputs/pretrain/onnx
    python examples/index_catalog.py --model_path outputs/pretrain/final --onnx outputs/pretrain/onnx ...
    python demo/app.py --model outputs/pretrain/final --onnx outputs/pretrain/onnx

Writes `image_encoder.onnx`, `text_encoder.onnx` (each what `get_image_features` / `get_text_features` return, with
a dynamic batch and text length), their int8 versions (`*.int8.onnx`, ONNX Runtime's dynamic quantisation; leave
out with `--no_int8`), the processor and `onnx_export.json` (the source, the parity measured). The export fails
unless ONNX Runtime's features match PyTorch's (cosine >= 0.999) on inputs of another shape than the export's.
Speed and retrieval per runtime: examples/benchmarks/bench_serving.py.
"""

from __future__ import annotations

import argparse
import logging

import syncmask_hf  # noqa: F401  (registers the package's models with the Auto classes)
from syncmask_hf.serving import PARITY_MIN, export_onnx
from syncmask_hf.training import add_trust_remote_code_argument


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a model folder (save_pretrained) or Hub id")
    p.add_argument("--output_dir", required=True, help="where the ONNX files and the processor go")
    p.add_argument("--no_int8", action="store_true", help="leave out the int8 (dynamically quantised) versions")
    p.add_argument("--parity_min", type=float, default=PARITY_MIN, help="least cosine with PyTorch's features")
    add_trust_remote_code_argument(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = export_onnx(
        args.model_path,
        args.output_dir,
        quantize=not args.no_int8,
        trust_remote_code=args.trust_remote_code,
        parity_min=args.parity_min,
    )
    print(f"{manifest['model_type']} encoders exported to {args.output_dir}:")
    for kind in ("image", "text"):
        line = f"  {kind}: fp32 cosine with PyTorch >= {manifest['parity_min_cosine'][kind]:.6f}"
        if kind in manifest["int8_min_cosine"]:
            line += f", int8 >= {manifest['int8_min_cosine'][kind]:.6f}"
        print(line)
    return manifest


if __name__ == "__main__":
    main()
