#!/usr/bin/env python
"""Run the papers' ablations on the real catalogues, several seeds per arm, at equal budgets in optimizer steps.

    python examples/ablations/run.py                                   # the whole study, resumable
    python examples/ablations/run.py --ablation e2_components --seeds 0 1 2 --max_minutes 55   # one chunk
    python examples/ablations/run.py --report                          # RESULTS.md and the plots from results.json

Every run is one `examples/pretrain.py` command (H&M + Myntra from `--data`, pretrain.py's product-disjoint split,
`--seed` the run's seed) with a periodic validation every `steps / 5` steps; its held-out test results become one
record of `results.json` (`ablation`, `start`, `arm`, `seed`, `steps`, `command`, `metrics`, `curve`). A run whose
record exists is skipped, and a killed run resumes from its last checkpoint, so the study goes on in chunks:
`--max_minutes` stops starting new runs after that much wall time. Runs go `--jobs` at a time (default 2, one
thread each), seeds outermost, so a chunk leaves every arm with the same seeds. After every record, RESULTS.md and
one PNG per ablation are rewritten (`report.py`). The ablations, their arms and budgets: `study.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from report import load_records, write_report  # noqa: E402
from study import ABLATIONS, Ablation, Arm, Start, get_ablation  # noqa: E402

RESULTS = HERE / "results.json"
METRICS = ("full_sumr", "sample100_sumr", "t2i_r10", "i2t_r10", "t2i_r1", "i2t_r1", "chance_r10")


def with_output(cmd: list[str], output_dir) -> list[str]:
    """`cmd` with an output folder named by the command, so that one command is one training, however many arms
    share it; a killed run resumes there."""
    key = hashlib.sha1(shlex.join(cmd).encode()).hexdigest()[:10]
    model = cmd[cmd.index("--model") + 1]
    out = Path(output_dir, f"{model}-{key}")
    return [*cmd, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]


def datasets_of(start: Start, args) -> list[str]:
    if args.dataset:  # a smoke run's stand-in for every catalogue
        return list(args.dataset)
    return [d.replace("{data}", args.data) for d in start.datasets]


def prepare_command(start: Start, args) -> list[str] | None:
    """The pretrain.py run a start builds on (e.g. the CLIP it adapts), or None."""
    if not start.prepare:
        return None
    prep = [a.replace("{data}", args.data) for a in start.prepare]
    if args.dataset:  # smoke runs: the stand-in data, a short budget
        i = prep.index("--dataset")
        prep[i + 1] = args.dataset[0]
    if args.steps:
        prep[prep.index("--max_steps") + 1] = str(args.steps)
    cmd = ["python", "examples/pretrain.py", *prep, "--report_to", "none", "--num_workers", "0"]
    cmd += ["--checkpoint_every", "250", "--keep_checkpoints", "1"]
    return with_output(cmd, args.output_dir)


def steps_of(ab: Ablation, start: Start, args) -> int:
    return args.steps or start.steps or ab.steps


def pretrain_command(ab: Ablation, start: Start, arm: Arm, seed: int, args) -> list[str]:
    steps = steps_of(ab, start, args)
    eval_every = args.eval_every or ab.eval_every or max(1, steps // 5)
    cmd = ["python", "examples/pretrain.py", "--model", ab.model, "--config", ab.config]
    for d in datasets_of(start, args):
        cmd += ["--dataset", d]
    prep = prepare_command(start, args)
    prepared = prep[prep.index("--output_dir") + 1] if prep else ""
    cmd += [a.replace("{prepared}", prepared) for a in start.args]
    cmd += ["--seed", str(seed), "--batch_size", str(ab.batch_size), "--max_steps", str(steps)]
    cmd += ["--eval_every", str(eval_every), "--report_to", "none", "--num_workers", "0"]
    cmd += ["--checkpoint_every", str(max(50, steps // 4)), "--keep_checkpoints", "1"]
    cmd += [*ab.common, *arm.args]
    return with_output(cmd, args.output_dir)


def data_name(datasets) -> str:
    return "+".join(d.split(":")[0] for d in datasets)


def over_final_model(pretrain: list[str], script: str, extra: list[str], folder: str, *head: str) -> list[str]:
    """`script` over the run's final model with the run's datasets and seed (so its held-out split), writing to
    `<run>/<folder>-<hash of extra>`."""
    out = Path(pretrain[pretrain.index("--output_dir") + 1])
    cmd = ["python", script, "--model_path", str(out / "final"), *head]
    for i, a in enumerate(pretrain):
        if a in ("--dataset", "--seed"):
            cmd += [a, pretrain[i + 1]]
    suffix = hashlib.sha1(shlex.join(extra).encode()).hexdigest()[:8]
    return [*cmd, *extra, "--output_dir", str(out / f"{folder}-{suffix}")]


def evaluate_command(pretrain: list[str], arm: Arm) -> list[str]:
    """examples/evaluate.py over the run's final model, on the same held-out products."""
    return over_final_model(pretrain, "examples/evaluate.py", list(arm.evaluate_args), "evaluate", "--no_progress")


def caption_command(pretrain: list[str], arm: Arm, caption_steps: int = 0) -> list[str]:
    """examples/train_captioner.py over the run's final encoder (its split: the run's datasets and seed)."""
    extra = list(arm.caption_args)
    if caption_steps:  # a smoke run's override of the captioner's step budget
        extra[extra.index("--max_steps") + 1] = str(caption_steps)
    return over_final_model(pretrain, "examples/train_captioner.py", extra, "captioner")


CAPTION_METRICS = {"BLEU-4": "bleu4", "CIDEr-D": "cider_d", "ROUGE-L": "rouge_l"}


def metrics_of(results: dict, table: str) -> dict:
    """The record's metrics from a results JSON (pretrain.py's or evaluate.py's), from `table` ("full", "full_itm")
    and its sample-100 twin."""
    full, s100 = results[table], results[table.replace("full", "sample100", 1)]
    chance = results.get("chance", {})
    m = {
        "full_sumr": full["sumR"],
        "sample100_sumr": s100["sumR"],
        "t2i_r10": full["t2i_R@10"],
        "i2t_r10": full["i2t_R@10"],
        "t2i_r1": full["t2i_R@1"],
        "i2t_r1": full["i2t_R@1"],
        "chance_r10": chance.get("full_R@10", round(min(100.0, 10 * chance.get("full_R@1", 0.0)), 2)),
    }
    for k in ("image_mean_cosine", "text_mean_cosine"):
        if results.get("spread", {}).get(k) is not None:
            m[k] = results["spread"][k]
    return m


def read_curve(output_dir: Path) -> list[dict]:
    """Validation recall against step, from pretrain.py's eval_history.jsonl (the last row of each step)."""
    rows = {}
    path = output_dir / "eval_history.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[int(row["step"])] = {
                    "step": int(row["step"]),
                    "full_sumr": round(row["full"]["sumR"], 4),
                    "t2i_r10": round(row["full"]["t2i_R@10"], 4),
                }
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                continue
    return [rows[s] for s in sorted(rows)]


class Study:
    def __init__(self, args):
        self.args = args
        self.results_path = Path(args.results)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def key(self, record: dict) -> tuple:
        return (record["ablation"], record["start"], record["arm"], record["seed"], record["steps"], record["data"])

    def done(self) -> set:
        return {self.key(r) for r in load_records(self.results_path)}

    def add(self, record: dict) -> None:
        with self.lock:
            records = [r for r in load_records(self.results_path) if self.key(r) != self.key(record)]
            records.append(record)
            records.sort(key=lambda r: (r["ablation"], r["start"], r["arm"], r["seed"], r["steps"]))
            tmp = self.results_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(records, indent=1) + "\n")
            os.replace(tmp, self.results_path)  # atomic: a kill never leaves half a file
            write_report(records, self.args.report_dir or self.results_path.parent)

    def run(self, ab: Ablation, start: Start, arm: Arm, seed: int) -> dict | None:
        args = self.args
        cmd = pretrain_command(ab, start, arm, seed, args)
        out = Path(cmd[cmd.index("--output_dir") + 1])
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("HF_HUB_OFFLINE", "1")
        label = f"{ab.name}/{start.name}/{arm.name}/seed{seed}"
        prep = prepare_command(start, args)
        if prep is not None and not self.train(prep, f"{label} (prepare)", env):
            return None
        # One lock per output folder: two arms sharing a command wait for one training instead of racing.
        if not self.train(cmd, label, env):
            return None
        with self.folder_lock(out):
            results_file, caption_file = out / "final" / "eval_results.json", None
            commands = [c for c in (prep, cmd) if c is not None]
            # Evaluation-only and captioning arms: one more command over the trained model, run once per folder.
            for extra, name, made in (
                (arm.evaluate_args, "evaluate", evaluate_command),
                (arm.caption_args, "captioner", caption_command),
            ):
                if extra is None:
                    continue
                step = made(cmd, arm, args.caption_steps) if name == "captioner" else made(cmd, arm)
                commands.append(step)
                step_out = Path(step[step.index("--output_dir") + 1])
                if name == "evaluate":
                    results_file = target = step_out / "eval_results.json"
                else:
                    caption_file = target = step_out / "caption_results.json"
                if not target.is_file():
                    self.log(f"{label}: {shlex.join(step)}")
                    with open(out / f"{name}.log", "a") as log:
                        rc = subprocess.run(step, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                    if rc != 0:
                        self.log(f"{label}: {step[1]} failed (exit {rc}); see {out / f'{name}.log'}")
                        return None
        trained = json.loads((out / "final" / "eval_results.json").read_text())
        results = json.loads(results_file.read_text())
        metrics = metrics_of(results, arm.table)
        if caption_file is not None:
            captions = json.loads(caption_file.read_text())
            metrics.update({key: captions["metrics"][name] for name, key in CAPTION_METRICS.items()})
            if "METEOR" in captions["metrics"]:  # the COCO toolkit's Java METEOR, where java is installed
                metrics["meteor"] = captions["metrics"]["METEOR"]
            metrics["caption_images"] = captions["metrics"]["num_images"]
        record = {
            "ablation": ab.name,
            "paper": ab.paper,
            "start": start.name,
            "arm": arm.name,
            "seed": seed,
            "steps": trained["training"]["steps"],
            "data": data_name(datasets_of(start, args)),
            "command": " && ".join(shlex.join(c) for c in commands),
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
            "curve": read_curve(out),
            "train_minutes": trained["training"].get("train_minutes"),
        }
        self.add(record)
        m = record["metrics"]
        self.log(f"{label}: full SumR {m['full_sumr']:.2f}, T2I R@10 {m['t2i_r10']:.2f} (chance {m['chance_r10']})")
        return record

    def train(self, cmd: list[str], label: str, env: dict) -> bool:
        """Run one pretrain.py command unless its folder has its final results; one at a time per folder."""
        out = Path(cmd[cmd.index("--output_dir") + 1])
        with self.folder_lock(out):
            if (out / "final" / "eval_results.json").is_file():
                return True
            self.log(f"{label}: {shlex.join(cmd)}")
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "pretrain.log", "a") as log:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                self.log(f"{label}: pretrain.py failed (exit {rc}); see {out / 'pretrain.log'}")
            return rc == 0

    _folder_locks: dict = {}

    def folder_lock(self, path: Path) -> threading.Lock:
        with self.lock:
            return self._folder_locks.setdefault(str(path), threading.Lock())

    def log(self, msg: str) -> None:
        print(f"[{(time.monotonic() - self.t0) / 60:6.1f} min] {msg}", flush=True)


def plan(args) -> list[tuple[Ablation, Start, Arm, int]]:
    ablations = [get_ablation(n) for n in args.ablation] if args.ablation else list(ABLATIONS)
    todo = []
    for seed in args.seeds:  # seeds outermost: a chunk cut short leaves every arm with the same seeds
        for ab in ablations:
            for start in ab.starts:
                if args.start and start.name not in args.start:
                    continue
                for arm in ab.arms:
                    if start.arms and arm.name not in start.arms:
                        continue
                    if not args.arm or arm.name in args.arm:
                        todo.append((ab, start, arm, seed))
    return todo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablation", action="append", help=f"one of {[a.name for a in ABLATIONS]} (repeat; default all)")
    p.add_argument("--start", action="append", help="only these starting points (scratch, minilm_text, ...)")
    p.add_argument("--arm", action="append", help="only these arms (repeat; default all of each ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=os.environ.get("SYNCMASK_SHARED_DATA", "../shared/data"))
    p.add_argument(
        "--dataset", action="append", help="replace the real catalogues (e.g. synthetic:400 for a smoke run)"
    )
    p.add_argument("--steps", type=int, default=0, help="override every ablation's step budget (smoke runs)")
    p.add_argument("--eval_every", type=int, default=0, help="validation every N steps (default steps / 5)")
    p.add_argument("--caption_steps", type=int, default=0, help="override the captioners' step budget (smoke runs)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, the cores shared equally")
    p.add_argument("--max_minutes", type=float, default=0, help="start no new run after this much wall time")
    p.add_argument("--output_dir", default="outputs/ablations", help="the runs' folders (checkpoints, models)")
    p.add_argument("--results", default=str(RESULTS), help="the records (JSON list)")
    p.add_argument("--report_dir", default=None, help="where RESULTS.md and the plots go (default: beside results)")
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md and the plots from the records")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the runs still to do")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    study = Study(args)
    if args.report:
        write_report(load_records(study.results_path), args.report_dir or study.results_path.parent)
        return 0
    done = study.done()
    todo = []
    for ab, start, arm, seed in plan(args):
        steps = steps_of(ab, start, args)
        if (ab.name, start.name, arm.name, seed, steps, data_name(datasets_of(start, args))) in done:
            continue
        todo.append((ab, start, arm, seed))
    # Within a seed, runs shared by two arms go after every first occurrence, so that no worker waits on another's
    # training while there is other work.
    seen, order = set(), []
    for item in todo:
        cmd = shlex.join(pretrain_command(item[0], item[1], item[2], item[3], args))
        order.append((item[3], cmd in seen))
        seen.add(cmd)
    todo = [item for _, item in sorted(zip(order, todo), key=lambda pair: pair[0])]
    study.log(f"{len(todo)} runs to do ({len(plan(args)) - len(todo)} recorded already)")
    if args.dry_run:
        for ab, start, arm, seed in todo:
            print(
                f"{ab.name}/{start.name}/{arm.name}/seed{seed}: {shlex.join(pretrain_command(ab, start, arm, seed, args))}"
            )
        return 0

    failed = []

    def job(item):
        if args.max_minutes and time.monotonic() - study.t0 > 60 * args.max_minutes:
            return "skipped"
        try:
            return study.run(*item) or failed.append(item)
        except Exception as e:  # one broken run must not lose the others' records
            study.log(f"{item[0].name}/{item[1].name}/{item[2].name}/seed{item[3]}: {type(e).__name__}: {e}")
            failed.append(item)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(job, todo))
    skipped = outcomes.count("skipped")
    study.log(
        f"done: {len(todo) - skipped - len(failed)} runs recorded, {len(failed)} failed, {skipped} left for later"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
