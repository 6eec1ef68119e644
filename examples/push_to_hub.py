"""Publish a trained folder (as `examples/pretrain.py` writes it) to the Hugging Face Hub, optionally with the demo Space.

    python examples/push_to_hub.py outputs/syncmask-tiny --repo_id me/syncmask-tiny \
        --metrics outputs/syncmask-tiny/results.json --datasets fashiongen --space_id me/syncmask-demo

The folder is checked first (config with auto_map, the code files it names, safetensors weights, processor files);
a model card (README.md with Hub metadata, metrics table, training data, usage snippet) is written into it, then it is
uploaded. `--endpoint` points at another Hub deployment (the tests use a stand-in server on loopback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from syncmask_hf.hub import HubFolderError, check_model_folder, publish

DEFAULT_DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="trained model folder (weights, config with auto_map, code files, processor)")
    parser.add_argument("--repo_id", required=True, help="model repo to create / update, e.g. user/syncmask-base")
    parser.add_argument(
        "--metrics", help="results JSON (default: the folder's eval_results.json, as pretrain.py writes it)"
    )
    parser.add_argument("--training_args", help="JSON of training arguments (default: <folder>/training_args.json)")
    parser.add_argument("--model_name", help="title of the model card (default: the repo name)")
    parser.add_argument("--datasets", nargs="*", default=[], help="training datasets (Hub ids or names)")
    parser.add_argument("--base_model", nargs="*", default=[], help="checkpoints the model was initialised from")
    parser.add_argument("--tags", nargs="*", default=[], help="extra card tags")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--no_card", action="store_true", help="keep an existing README.md instead of writing one")
    parser.add_argument("--space_id", help="also publish the Gradio demo as this Space")
    parser.add_argument(
        "--demo_dir", default=str(DEFAULT_DEMO_DIR), help="demo folder (app.py, requirements.txt, ...)"
    )
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN / the saved login)")
    parser.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--commit_message", default="Upload model with syncmask_hf")
    return parser.parse_args(argv)


def _load_json(path: str | Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read {what} {path}: {error}") from error
    if not isinstance(data, dict):
        raise SystemExit(f"error: {what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def main(argv=None) -> dict[str, str]:
    args = parse_args(argv)
    folder = Path(args.folder)
    try:
        check_model_folder(folder)  # fail before writing anything into the folder
    except HubFolderError as error:
        raise SystemExit(f"error: {error}") from error
    # By default the folder's own eval_results.json (what pretrain.py writes): the same card as --push_to_hub.
    metrics_path = args.metrics or (folder / "eval_results.json" if (folder / "eval_results.json").is_file() else None)
    metrics = _load_json(metrics_path, "metrics file") if metrics_path else None
    training_args_path = args.training_args or (folder / "training_args.json")
    training_args = (
        _load_json(training_args_path, "training arguments") if Path(training_args_path).is_file() else None
    )
    if args.training_args and training_args is None:
        raise SystemExit(f"error: training arguments file {args.training_args} does not exist")

    try:
        urls = publish(
            folder,
            args.repo_id,
            metrics=metrics,
            training_args=training_args,
            datasets=args.datasets,
            base_model=args.base_model,
            model_name=args.model_name,
            tags=args.tags,
            license=args.license,
            space_id=args.space_id,
            demo_dir=args.demo_dir,
            token=args.token,
            private=args.private,
            endpoint=args.endpoint,
            write_card=not args.no_card,
            commit_message=args.commit_message,
        )
    except HubFolderError as error:
        raise SystemExit(f"error: {error}") from error
    for kind, url in urls.items():
        print(f"{kind}: {url}")
    return urls


if __name__ == "__main__":
    main(sys.argv[1:])
