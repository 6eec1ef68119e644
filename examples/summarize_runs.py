"""Tables of a folder of runs written by examples/real_runs.sh (or any pretrain.py / train_captioner.py outputs).

    python examples/summarize_runs.py outputs/real_runs

Prints, as Markdown: held-out retrieval recall per run (full gallery and sample-100), training throughput
(steps, image-text pairs per second), and captioning metrics with a few example captions per captioner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from syncmask_hf.evaluation import format_results_markdown


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--examples", type=int, default=3, help="example captions shown per captioner")
    args = p.parse_args(argv)
    root = Path(args.folder)

    retrieval, speed, captions, examples = {}, {}, {}, {}
    for path in sorted(root.glob("*/final/eval_results.json")):
        name, results = path.parent.parent.name, json.loads(path.read_text())
        train = results.get("training", {})
        row = {}
        for protocol in ("full", "sample100"):
            for key in ("i2t_R@1", "i2t_R@10", "t2i_R@1", "t2i_R@10", "sumR"):
                if key in results.get(protocol, {}):
                    row[f"{protocol} {key}"] = results[protocol][key]
        row["chance R@1"] = results.get("chance", {}).get("full_R@1", "")
        retrieval[name] = row
        seconds = 60 * float(train.get("train_minutes") or 0)
        speed[name] = {
            "model": train.get("model", ""),
            "steps": train.get("steps", ""),
            "train minutes": train.get("train_minutes", ""),
            "pairs / s": round(train.get("samples_seen", 0) / seconds, 1) if seconds else "",
        }
    for path in sorted(root.glob("*/caption_results.json")):
        name, results = path.parent.name, json.loads(path.read_text())
        metrics = results["metrics"]
        captions[name] = {k: metrics[k] for k in ("BLEU-4", "CIDEr-D", "ROUGE-L", "num_images")}
        captions[name]["train steps"] = results.get("train_steps", "")
        examples[name] = results.get("examples", [])[: args.examples]

    if not (retrieval or captions):
        raise SystemExit(f"no eval_results.json / caption_results.json under {root}")
    if retrieval:
        print(format_results_markdown(retrieval, title="held-out retrieval (recall %)"))
        print()
        print(format_results_markdown(speed, title="training throughput on this machine"))
        print()
    if captions:
        print(format_results_markdown(captions, title="captions of held-out products"))
        for name, rows in examples.items():
            print(f"\n{name}:")
            for ex in rows:
                print(f"- {ex['caption']!r} (reference: {ex['reference'][:90]!r})")


if __name__ == "__main__":
    main()
