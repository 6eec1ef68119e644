"""Publishing trained models (and the demo) to the Hugging Face Hub.

A trained folder, as `examples/pretrain.py` writes it, holds safetensors weights, a `config.json` whose `auto_map`
names the model code, those code files (copied flat by `save_pretrained`), and the processor / tokenizer files.
`check_model_folder` verifies that before anything is uploaded (a folder that fails here would push fine and then fail
for every user at `AutoModel.from_pretrained(..., trust_remote_code=True)`), `write_model_card` writes README.md with
Hub metadata through `huggingface_hub.ModelCard`, and `push_model_folder` / `push_demo_space` upload with `HfApi`.

Only json, huggingface_hub and the standard library are imported here (no torch / transformers), and no modeling file
imports this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard

__all__ = [
    "HubFolderError",
    "check_model_folder",
    "write_model_card",
    "usage_snippet",
    "push_model_folder",
    "push_demo_space",
    "check_demo_dir",
    "publish",
    "DEFAULT_IGNORE_PATTERNS",
]

# Training by-products that must not end up in a model repo (optimizer state, Accelerate checkpoints, TensorBoard).
DEFAULT_IGNORE_PATTERNS = [
    "__pycache__/*",
    "**/__pycache__/*",
    "*.pyc",
    "checkpoint-*/*",
    "checkpoints/*",
    "runs/*",
    "logs/*",
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "scheduler.bin",
    "rng_state*.pth",
    "random_states_*.pkl",
    "training_args.bin",
    ".ipynb_checkpoints/*",
]

_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", re.MULTILINE)
_RELATIVE_MODULE_IMPORT = re.compile(r"^\s*from\s+\.\s+import\s+([\w\s,]+)", re.MULTILINE)
_PACKAGE_IMPORT = re.compile(r"^\s*(?:from|import)\s+syncmask_hf\b", re.MULTILINE)


class HubFolderError(ValueError):
    """A model folder is not ready to publish; the message lists every problem and how to fix it."""


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise HubFolderError(
            f"{path} is not valid JSON ({error}); re-save the folder with save_pretrained()."
        ) from error


def _auto_map_modules(auto_map: Mapping[str, Any]) -> set[str]:
    """Module names (file stems) named by an `auto_map`; `other/repo--module.Class` references are remote, skipped."""
    modules = set()
    for value in auto_map.values():
        for reference in value if isinstance(value, list | tuple) else [value]:
            if not reference or "--" in reference:
                continue
            modules.add(reference.rsplit(".", 1)[0])
    return modules


def check_model_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Verify that `folder` loads from the Hub with `trust_remote_code=True`; raise `HubFolderError` listing problems.

    Checks: `config.json` with an `auto_map`; every code file an `auto_map` (in config.json, tokenizer_config.json,
    processor_config.json, preprocessor_config.json) names, and every sibling those files import with `from .x`; no
    code file importing `syncmask_hf` (Hub copies are flat, the package is not installed there); safetensors weights
    (single file or a complete sharded index); tokenizer vocabulary files when a tokenizer config is present.
    Returns a summary: `config`, `code_files`, `weights`, `processor_files`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f"{folder} is not a folder; pass the output folder written by model.save_pretrained().")
    problems: list[str] = []
    config_path = folder / "config.json"
    config: dict = {}
    if not config_path.is_file():
        problems.append(
            f"no config.json in {folder}: save the model with model.save_pretrained({str(folder)!r}) "
            "(and the processor with processor.save_pretrained) into this folder."
        )
    else:
        config = _read_json(config_path)
        if not config.get("auto_map"):
            problems.append(
                "config.json has no `auto_map`, so AutoModel.from_pretrained(repo, trust_remote_code=True) cannot find "
                "the model code: call `ConfigClass.register_for_auto_class()` and "
                "`ModelClass.register_for_auto_class('AutoModel')` before save_pretrained (importing syncmask_hf does "
                "this for its models)."
            )

    modules: set[str] = set()
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            auto_map = (config if name == "config.json" else _read_json(path)).get("auto_map") or {}
            modules |= _auto_map_modules(auto_map)

    code_files: list[str] = []
    pending = sorted(modules)
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module.replace('.', '/')}.py"
        if not path.is_file():
            problems.append(
                f"{path.name} is named by an auto_map (or imported by a code file) but missing: save_pretrained copies "
                "the code of classes registered with register_for_auto_class; re-save, or copy the file in."
            )
            continue
        code_files.append(path.name)
        source = path.read_text(encoding="utf-8")
        if _PACKAGE_IMPORT.search(source):
            problems.append(
                f"{path.name} imports `syncmask_hf`, which is not installed where the Hub copy runs: use single-dot "
                "relative imports of sibling files only."
            )
        siblings = _RELATIVE_IMPORT.findall(source)
        for names in _RELATIVE_MODULE_IMPORT.findall(source):
            siblings += [n.strip() for n in names.split(",") if n.strip()]
        pending += [s for s in siblings if s not in seen]

    weights: list[str] = []
    if (folder / "model.safetensors").is_file():
        weights = ["model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        shards = sorted(set(_read_json(folder / "model.safetensors.index.json").get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing or not shards:
            problems.append(f"model.safetensors.index.json names missing shards {missing}: re-save the model.")
        weights = ["model.safetensors.index.json", *shards]
    else:
        legacy = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" (found {legacy}: safetensors only, re-save with model.save_pretrained)" if legacy else ""
        problems.append(f"no safetensors weights (model.safetensors) in {folder}{hint}.")

    processor_files = sorted(
        p.name
        for p in folder.iterdir()
        if p.name
        in {"processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"}
        or p.name in _TOKENIZER_VOCAB_FILES
    )
    if (folder / "tokenizer_config.json").is_file() and not any(
        (folder / f).is_file() for f in _TOKENIZER_VOCAB_FILES
    ):
        problems.append(
            "tokenizer_config.json is present but no vocabulary (tokenizer.json / vocab.txt / ...): save the tokenizer "
            "with tokenizer.save_pretrained (or processor.save_pretrained) into the folder."
        )
    if problems:
        raise HubFolderError(f"{folder} is not ready to publish:\n- " + "\n- ".join(problems))
    return {"config": config, "code_files": sorted(code_files), "weights": weights, "processor_files": processor_files}


def usage_snippet(folder: str | os.PathLike, repo_id: str) -> str:
    """Python usage for the model card, derived from the folder's config (`auto_map`) and processor files."""
    folder = Path(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    auto_map = config.get("auto_map") or {}
    model_class = (
        "AutoModel" if "AutoModel" in auto_map or not auto_map else sorted(auto_map.keys() - {"AutoConfig"})[0]
    )
    has_processor = (folder / "processor_config.json").is_file()
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    has_image_processor = (folder / "preprocessor_config.json").is_file()
    loaders, imports = [], [model_class]
    if has_processor or not (has_tokenizer or has_image_processor):
        imports.append("AutoProcessor")
        loaders.append(f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)')
        text_call = 'processor(text=texts, return_tensors="pt", padding=True)'
        image_call = 'processor(images=images, return_tensors="pt")'
    else:
        text_call = image_call = None
        if has_tokenizer:
            imports.append("AutoTokenizer")
            loaders.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)')
            text_call = 'tokenizer(texts, return_tensors="pt", padding=True)'
        if has_image_processor:
            imports.append("AutoImageProcessor")
            loaders.append(
                f'image_processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)'
            )
            image_call = 'image_processor(images=images, return_tensors="pt")'
    lines = [
        "import torch",
        "from PIL import Image",
        f"from transformers import {', '.join(imports)}",
        "",
        f'model = {model_class}.from_pretrained("{repo_id}", trust_remote_code=True).eval()',
        *loaders,
        "",
        'images = [Image.open("product.jpg").convert("RGB")]',
        'texts = ["a red floral midi dress", "black leather ankle boots"]',
        "with torch.no_grad():",
    ]
    if image_call:
        lines += [
            f"    image_inputs = {image_call}",
            "    # CLIP's (transformers 5) contract: `pooler_output` is the joint-space embedding, not normalised",
            '    image_embeds = model.get_image_features(pixel_values=image_inputs["pixel_values"]).pooler_output',
        ]
    if text_call:
        lines += [
            f"    text_inputs = {text_call}",
            "    text_embeds = model.get_text_features(",
            '        input_ids=text_inputs["input_ids"], attention_mask=text_inputs["attention_mask"]',
            "    ).pooler_output",
        ]
    if image_call and text_call:
        lines += [
            "image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)",
            "text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)",
            "scores = image_embeds @ text_embeds.T  # (images, texts) cosine similarities",
            "print(scores)",
        ]
    return "\n".join(lines)


def _flatten_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Split a results dict into {protocol: {metric: number}} and non-numeric details (shown as text, not dropped).

    Top-level numbers form the protocol "all"; nested dicts are protocols (e.g. "full", "sample100")."""
    tables: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}

    def is_number(value):
        return isinstance(value, int | float) and not isinstance(value, bool)

    def walk(protocol: str, prefix: str, values: Mapping[str, Any]) -> None:
        for metric, value in values.items():
            name = f"{prefix}{metric}"
            if isinstance(value, Mapping):  # deeper nesting, e.g. {"i2t": {"r1": ...}} -> metric "i2t.r1"
                walk(protocol, f"{name}.", value)
            elif is_number(value):
                tables.setdefault(protocol, {})[name] = float(value)
            else:
                details[f"{protocol}.{name}"] = value

    for key, value in metrics.items():
        if isinstance(value, Mapping):
            walk(str(key), "", value)
        elif is_number(value):
            tables.setdefault("all", {})[str(key)] = float(value)
        else:
            details[str(key)] = value
    return tables, details


PROTOCOLS = {
    "full": "full gallery: every held-out image against every held-out text",
    "sample100": "sample-100: the positive among 99 negatives of the query's sub-category (mean of 5 draws)",
    "full_itm": "full gallery, top 16 re-ranked by the ITM head",
    "sample100_itm": "sample-100, top 16 re-ranked by the ITM head",
}


#: The paper each model type implements, cited on its card.
CITATIONS = {
    "syncmask": """@inproceedings{song2024syncmask,
  title     = {SyncMask: Synchronized Attentional Masking for Fashion-centric Vision-Language Pretraining},
  author    = {Song, Chull Hwan and Hwang, Taebaek and Yoon, Jooyoung and Choi, Shunghyun and Gu, Yeong Hyeon},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024},
  note      = {arXiv:2404.01156}
}""",
    "e2": """@inproceedings{qi2024e2,
  title     = {Easy Regional Contrastive Learning of Expressive Fashion Representations},
  author    = {Qi, Daiqing and Zhao, Handong and Li, Sheng},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
    "fashionfae": """@article{huang2024fashionfae,
  title   = {FashionFAE: Fine-grained Attributes Enhanced Fashion Vision-Language Pre-training},
  author  = {Huang, Jiale and Gao, Dehong and Zhang, Jinxia and Zhan, Zechao and Hu, Yang and Wang, Xin},
  journal = {arXiv preprint arXiv:2412.19997},
  year    = {2024}
}""",
}


def card_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The compact metrics a card shows: for each retrieval protocol in `results` (a sub-dict with `sumR`), R@1/5/10
    both ways and SumR (`training.RECALL_COLUMNS`); counts, skipped queries and standard deviations stay in the
    JSON. Results with no retrieval protocol pass through unchanged."""
    from .training import RECALL_COLUMNS

    protocols = {
        name: {m: values[m] for m in RECALL_COLUMNS if m in values}
        for name, values in results.items()
        if isinstance(values, Mapping) and "sumR" in values
    }
    return protocols or dict(results)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], metric_format: bool = False) -> str:
    def cell(value):
        if metric_format and isinstance(value, float):  # recall in % -> 2 decimals; fractions keep 4
            text = f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
        else:
            text = str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_model_card(
    folder: str | os.PathLike,
    *,
    model_name: str,
    repo_id: str | None = None,
    base_model: str | Sequence[str] | None = None,
    datasets: str | Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    training_args: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    pipeline_tag: str | None = None,
    task_type: str = "image-text-retrieval",
    task_name: str = "Image-text retrieval",
    description: str | None = None,
    language: str | Sequence[str] | None = "en",
    usage: str | None = None,
) -> ModelCard:
    """Write `folder/README.md`: Hub metadata, description, metrics table, training data and arguments, usage.

    `metrics` is a results dict such as `{"full": {"i2t_r1": 41.2, ...}, "sample100": {...}}` (top-level numbers count
    as protocol "all"); each number becomes a model-index `EvalResult` (protocol as `dataset_config`) and a table cell.
    Retrieval results (`eval_results.json`) are reduced to R@1/5/10 both ways and SumR per protocol (`card_metrics`).
    `repo_id` is what the usage snippet loads (defaults to `model_name`). The pipeline tag defaults to
    `image-to-text` for captioning configs and `zero-shot-image-classification` (a dual encoder scoring an image
    against texts, what the Hub's widget runs) otherwise. `usage`
    replaces the generated dual-encoder snippet (`usage_snippet`), e.g. for a captioner.
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    model_type = config.get("model_type")
    repo_id = repo_id or model_name
    # pretrain.py's eval_results.json says what the model was trained on and for how long.
    training = (metrics or {}).get("training")
    training = training if isinstance(training, Mapping) else {}
    datasets = datasets or training.get("datasets")
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    base_models = [base_model] if isinstance(base_model, str) else list(base_model or [])
    if pipeline_tag is None:
        pipeline_tag = "image-to-text" if model_type and "caption" in model_type else "zero-shot-image-classification"
    all_tags = ["fashion", "vision-language", "image-text-retrieval", "syncmask_hf"]
    all_tags += [t for t in ([model_type] if model_type else []) + list(tags) if t not in all_tags]

    tables, details = _flatten_metrics(card_metrics(metrics or {}))
    eval_results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=datasets[0] if datasets else "custom",
            dataset_name=datasets[0] if datasets else "custom",
            dataset_config=protocol,
            metric_type=metric,
            metric_name=f"{metric} ({protocol})",
            metric_value=value,
        )
        for protocol, values in tables.items()
        for metric, value in values.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        language=language,
        tags=all_tags,
        datasets=datasets or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        eval_results=eval_results or None,
    )

    sections = [f"# {model_name}", ""]
    sections.append(
        description
        or (
            f"A fashion vision-language model (`model_type: {model_type}`) trained with "
            "the `syncmask_hf` package for product image-text retrieval. Its code ships in this repository, "
            "so it loads with `trust_remote_code=True` without installing the package."
        )
    )
    if tables:
        metric_names = list(dict.fromkeys(m for values in tables.values() for m in values))
        rows = [[protocol, *[values.get(m, "–") for m in metric_names]] for protocol, values in tables.items()]
        sections += ["", "## Evaluation", "", _markdown_table(["protocol", *metric_names], rows, metric_format=True)]
        legend = [f"- `{p}`: {PROTOCOLS[p]}" for p in tables if p in PROTOCOLS]
        if legend:
            sections += ["", "Recall in %, on held-out products; SumR is the sum of the six recalls.", *legend]
        if details:
            sections += ["", *[f"- `{k}`: {v}" for k, v in details.items()]]
    sections += ["", "## Training data", ""]
    if datasets:
        sections += [f"- `{d}`" for d in datasets]
    else:
        sections.append("Not recorded.")
    if training.get("steps"):
        seen = f", {training['samples_seen']:,} image-text pairs seen" if training.get("samples_seen") else ""
        sections += ["", f"Trained for {training['steps']:,} optimizer steps{seen}."]
    if base_models:
        sections += ["", "Initialised from: " + ", ".join(f"`{b}`" for b in base_models) + "."]
    # Unset arguments (None: the preset's or the script's default applied) would only be noise in the table.
    shown_args = [[k, v] for k, v in (training_args or {}).items() if v is not None]
    if shown_args:
        sections += ["", "## Training arguments", ""]
        sections.append(_markdown_table(["argument", "value"], shown_args))
    sections += ["", "## Usage", "", "```python", usage or usage_snippet(folder, repo_id), "```", ""]
    if model_type in CITATIONS:
        sections += ["## Citation", "", "```bibtex", CITATIONS[model_type], "```", ""]

    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(sections))
    card.save(folder / "README.md")
    return card


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload model with syncmask_hf",
    endpoint: str | None = None,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
) -> str:
    """Check `folder` (`check_model_folder`), create `repo_id` if needed and upload the folder; return the repo URL.

    Training by-products matching `ignore_patterns` (optimizer state, checkpoints, logs) are not uploaded."""
    summary = check_model_folder(folder)
    if "AutoModel" not in summary["config"]["auto_map"]:
        warnings.warn(
            f"config.json's auto_map has no AutoModel entry (only {sorted(summary['config']['auto_map'])}), so "
            "AutoModel.from_pretrained(repo, trust_remote_code=True) will fail; register the base model class with "
            "register_for_auto_class('AutoModel') or add the entry to config.auto_map before saving.",
            stacklevel=2,
        )
    if not summary["processor_files"]:
        warnings.warn(
            f"{folder} has no processor or tokenizer files; users will not be able to preprocess inputs from the repo "
            "alone (save the processor with processor.save_pretrained into the folder).",
            stacklevel=2,
        )
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder),
        repo_id=url.repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=list(ignore_patterns),
    )
    return str(url)


def check_demo_dir(demo_dir: str | os.PathLike) -> SpaceCard:
    """Verify a Space folder (app.py, requirements.txt, README.md with a Spaces `sdk:` header); return its card."""
    demo_dir = Path(demo_dir)
    missing = [name for name in ("app.py", "requirements.txt", "README.md") if not (demo_dir / name).is_file()]
    if missing:
        raise HubFolderError(
            f"{demo_dir} lacks {missing}: a Gradio Space needs app.py, requirements.txt and README.md."
        )
    card = SpaceCard.load(demo_dir / "README.md")
    if card.data.get("sdk") is None:
        raise HubFolderError(
            f"{demo_dir / 'README.md'} has no Spaces YAML header with `sdk:` (e.g. '---\\nsdk: gradio\\napp_file: "
            "app.py\\n---'); add one."
        )
    return card


def push_demo_space(
    demo_dir: str | os.PathLike,
    space_id: str,
    *,
    model_repo: str,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = False,
    commit_message: str = "Upload demo with syncmask_hf",
    bundle_package: bool = True,
) -> str:
    """Create a Gradio Space `space_id` and upload `demo_dir` (app.py, requirements.txt, README.md); return its URL.

    With `bundle_package` (default) the `syncmask_hf` source goes beside app.py as `syncmask_hf/`, so the app's
    imports resolve on the Space; `requirements.txt` lists only the package's dependencies.

    The Space is told which model to serve twice: the Space variable `MODEL_ID` (the app reads it from the
    environment) and `models: [model_repo]` in the README metadata (so the Hub links the Space and the model).
    """
    card = check_demo_dir(demo_dir)
    sdk = card.data.get("sdk")
    models = list(card.data.get("models") or [])
    if model_repo not in models:
        card.data.models = [*models, model_repo]
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(space_id, repo_type="space", space_sdk=sdk, private=private, exist_ok=True)
    api.add_space_variable(url.repo_id, "MODEL_ID", model_repo)
    with tempfile.TemporaryDirectory() as staging:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(demo_dir, staging, dirs_exist_ok=True, ignore=ignore)
        if bundle_package:
            # A Space runs `python app.py` with the app's folder first on sys.path: this package's source beside
            # app.py is what `from syncmask_hf.search import ...` finds there (it is not on PyPI).
            shutil.copytree(Path(__file__).resolve().parent, Path(staging) / "syncmask_hf", ignore=ignore)
        card.save(Path(staging) / "README.md")
        api.upload_folder(folder_path=staging, repo_id=url.repo_id, repo_type="space", commit_message=commit_message)
    return str(url)


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    training_args: Mapping[str, Any] | None = None,
    datasets: str | Sequence[str] | None = None,
    base_model: str | Sequence[str] | None = None,
    model_name: str | None = None,
    tags: Sequence[str] = (),
    license: str = "apache-2.0",
    space_id: str | None = None,
    demo_dir: str | os.PathLike | None = None,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    write_card: bool = True,
    commit_message: str = "Upload model with syncmask_hf",
) -> dict[str, str]:
    """Check the folder, write its model card, push it, and optionally the demo Space; return {"model", "space"} URLs.

    The one call behind `examples/push_to_hub.py` and a training script's `--push_to_hub`. The folder is checked
    before the card is written, so a folder that cannot be published is left untouched."""
    check_model_folder(folder)
    if space_id is not None:
        if demo_dir is None:
            raise ValueError(
                "space_id is set but demo_dir is not: pass the demo folder (app.py, requirements.txt, ...)."
            )
        check_demo_dir(demo_dir)  # before anything is written or uploaded
    if write_card:
        write_model_card(
            folder,
            model_name=model_name or repo_id.split("/")[-1],
            repo_id=repo_id,
            base_model=base_model,
            datasets=datasets,
            metrics=metrics,
            training_args=training_args,
            license=license,
            tags=tags,
        )
    urls = {
        "model": push_model_folder(
            folder, repo_id, token=token, private=private, commit_message=commit_message, endpoint=endpoint
        )
    }
    if space_id is not None:
        urls["space"] = push_demo_space(
            demo_dir, space_id, model_repo=repo_id, token=token, endpoint=endpoint, private=private
        )
    return urls
