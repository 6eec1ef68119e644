"""RESULTS.md and one learning-curve plot per ablation, from the records of `results.json`.

    python examples/ablations/report.py [results.json] [out_dir]

Per ablation and starting point: mean ± sd per arm over its seeds; per comparison the paired difference (method
minus baseline over the seeds both arms have) with a percentile-bootstrap 95% interval of its mean, and a verdict:
the paper's direction holds (interval above zero), does not hold (below zero), or is within noise (spans zero).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from study import ABLATIONS, get_ablation  # noqa: E402

BOOTSTRAP_SAMPLES = 10_000
CAPTION_COLUMNS = {"bleu4": "BLEU-4", "cider_d": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR"}
METRIC_NAMES = {"full_sumr": "full SumR", "cider_d": "CIDEr-D"}  # the verdict's metric: `Ablation.metric`


def load_records(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of run records, got {type(records).__name__}")
    return records


def bootstrap_ci(diffs, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean of paired differences (seeded: the report is reproducible)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def verdict(diffs, ci) -> str:
    n = len(diffs)
    if n < 2:
        return "too few paired seeds (need 2)"
    ahead = sum(d > 0 for d in diffs)
    if n < 3:  # two pairs: the bootstrap interval is just their range, too little to call a direction
        return f"preliminary: {n} seeds, the method ahead on {ahead}"
    if ci[0] > 0:
        return f"holds: the method is ahead on {ahead} of {n} seeds and the interval is above zero"
    if ci[1] < 0:
        return f"does not hold: the baseline is ahead on {n - ahead} of {n} seeds and the interval is below zero"
    return f"within noise: the method is ahead on {ahead} of {n} seeds and the interval spans zero"


def mean_sd(values) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return "-"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def group(records):
    """{(ablation, start, steps, data): {arm: {seed: record}}}; a later record of the same run replaces an earlier."""
    out = defaultdict(lambda: defaultdict(dict))
    for r in records:
        out[(r["ablation"], r["start"], r["steps"], r["data"])][r["arm"]][r["seed"]] = r
    return out


def comparisons(records):
    """One row per (ablation, start, method, baseline): the paired differences of the ablation's metric and their
    interval."""
    rows = []
    for (name, start, steps, data), arms in sorted(group(records).items()):
        ab = get_ablation(name)
        st = next((x for x in ab.starts if x.name == start), None)
        for names in ab.comparisons:
            if st is not None and st.arms and not set(names) <= set(st.arms):
                continue  # a comparison this start does not run (e.g. the proxies run the method and its baseline)
            seeds = sorted(set.intersection(*(set(arms.get(n, {})) for n in names)))
            values = [[arms[n][s]["metrics"][ab.metric] for s in seeds] for n in names]
            if len(names) == 2:
                method, baseline = names
                m, b = values
            else:  # the gain of the first pair over the gain of the second, per seed
                method, baseline = f"({names[0]} − {names[1]})", f"({names[2]} − {names[3]})"
                m = [x - y for x, y in zip(values[0], values[1])]
                b = [x - y for x, y in zip(values[2], values[3])]
            diffs = [x - y for x, y in zip(m, b)]
            ci = bootstrap_ci(diffs)
            rows.append(
                {
                    "ablation": name,
                    "paper": ab.paper,
                    "start": start,
                    "steps": steps,
                    "data": data,
                    "metric": ab.metric,
                    "method": method,
                    "baseline": baseline,
                    "seeds": seeds,
                    "method_values": m,
                    "baseline_values": b,
                    "diffs": diffs,
                    "ci": ci,
                    "verdict": verdict(diffs, ci),
                }
            )
    return rows


def _col(runs, key) -> str:
    return mean_sd([r["metrics"][key] for r in runs])


def _fmt_ci(ci) -> str:
    return "-" if np.isnan(ci[0]) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def render(records) -> str:
    rows = comparisons(records)
    lines = [
        "# Ablations: each paper's claim, measured",
        "",
        "Generated by `python examples/ablations/run.py` (or `--report`) from `results.json`; do not edit by hand.",
        f"{len(records)} runs. Metric: full-gallery SumR on the held-out test products of `pretrain.py`'s "
        "product-disjoint split (I2T + T2I R@1/5/10; chance about 1.5 on H&M + Myntra), or the CIDEr-D of captions of those products for captioning. Each record's `command` reproduces it.",
        "Differences are paired by seed (same split, data order and initialisation seed); the interval is a "
        f"percentile bootstrap of their mean ({BOOTSTRAP_SAMPLES:,} resamples). With 3 seeds such an interval is "
        "narrow (it cannot reach past the extreme pairs), so read it with the count of seeds on which the method is ahead.",
        "",
        "## Main table",
        "",
        "| paper | ablation | start | steps | metric | method | baseline | seeds | method | baseline | difference | 95% CI | verdict |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        diff = f"{np.mean(r['diffs']):+.2f}" if r["diffs"] else "-"
        lines.append(
            f"| {r['paper']} | {r['ablation']} | {r['start']} | {r['steps']} | {METRIC_NAMES.get(r['metric'], r['metric'])} "
            f"| {r['method']} | {r['baseline']} | "
            f"{len(r['seeds'])} | {mean_sd(r['method_values'])} | {mean_sd(r['baseline_values'])} | {diff} | "
            f"{_fmt_ci(r['ci'])} | {r['verdict'].split(':')[0]} |"
        )
    for (name, start, steps, data), arms in sorted(group(records).items()):
        ab = get_ablation(name)
        st = next((s for s in ab.starts if s.name == start), None)
        lines += [
            "",
            f"## {ab.paper}: {name} ({start}, {ab.config}, {steps} steps, data {data})",
            "",
            f"The paper's claim: {ab.claim}.",
        ]
        if st is not None and st.differs:
            lines.append(f"Start: {st.differs}.")
        present = {k for runs in arms.values() for r in runs.values() for k in r["metrics"]}
        captions = [(k, n) for k, n in CAPTION_COLUMNS.items() if k in present]
        lines += [
            "",
            "| arm | seeds | full SumR | sample-100 SumR | T2I R@10 | I2T R@10 | chance R@10 |"
            + "".join(f" {n} |" for _, n in captions),
            "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(captions),
        ]
        for arm in [a.name for a in ab.arms if a.name in arms]:
            runs = [arms[arm][s] for s in sorted(arms[arm])]
            lines.append(
                f"| {arm} | {', '.join(str(r['seed']) for r in runs)} | {_col(runs, 'full_sumr')} | {_col(runs, 'sample100_sumr')} | "
                f"{_col(runs, 't2i_r10')} | {_col(runs, 'i2t_r10')} | {runs[0]['metrics']['chance_r10']} |"
                + "".join(f" {_col(runs, k)} |" for k, _ in captions)
            )
        lines.append("")
        for r in (c for c in rows if (c["ablation"], c["start"], c["steps"], c["data"]) == (name, start, steps, data)):
            pairs = ", ".join(f"{d:+.2f}" for d in r["diffs"]) or "none yet"
            lines.append(
                f"- **{r['method']} − {r['baseline']}**, {METRIC_NAMES.get(r['metric'], r['metric'])}: {pairs} "
                f"(seeds {r['seeds']}); mean "
                f"{np.mean(r['diffs']) if r['diffs'] else float('nan'):+.2f}, 95% CI {_fmt_ci(r['ci'])}. "
                + (
                    f"The paper's direction {r['verdict']}."
                    if r["verdict"][0] in "hdwp"
                    else f"{r['verdict'].capitalize()}."
                )
                if r["diffs"]
                else f"- **{r['method']} − {r['baseline']}**: no paired seeds yet."
            )
        lines += ["", f"![validation full SumR against step]({plot_name(name, start, steps, data)})"]
    missing = [a.name for a in ABLATIONS if a.name not in {k[0] for k in group(records)}]
    if missing:
        lines += ["", f"Not yet run: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def plot_name(name, start, steps, data) -> str:
    suffix = "" if (start, data) == ("scratch", "hm+myntra") else f"-{start}-{data}-{steps}"
    return f"{name}{suffix}.png"


def plot(records, out_dir: Path) -> list[Path]:
    """One PNG per ablation and start: validation full SumR against step, one line per arm and seed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    for (name, start, steps, data), arms in sorted(group(records).items()):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, arm in enumerate(a.name for a in get_ablation(name).arms if a.name in arms):
            for j, (_seed, r) in enumerate(sorted(arms[arm].items())):
                curve = r.get("curve") or []
                if not curve:
                    continue
                ax.plot(
                    [c["step"] for c in curve],
                    [c["full_sumr"] for c in curve],
                    color=colours[i % len(colours)],
                    alpha=0.8,
                    marker="o",
                    markersize=3,
                    label=arm if j == 0 else None,
                )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation full SumR")
        ax.set_title(f"{name} ({start}), one line per seed", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        path = out_dir / plot_name(name, start, steps, data)
        fig.tight_layout()
        fig.savefig(path, dpi=80, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def write_report(records, out_dir) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "RESULTS.md"
    path.write_text(render(records))
    plot(records, out_dir)
    return path


if __name__ == "__main__":
    results = sys.argv[1] if len(sys.argv) > 1 else HERE / "results.json"
    out = sys.argv[2] if len(sys.argv) > 2 else Path(results).parent
    print(write_report(load_records(results), out))
