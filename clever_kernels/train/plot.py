"""PNG charts of training logs and evaluation results (matplotlib, Agg backend)."""
import json
import os
from typing import Dict, List, Sequence

from .runlog import EVALUATED, eval_stem, log_records

METRICS = (("top1_ori", "Top1-Ori (%)"), ("top1_ori_cj_r", "Top1-Ori+CJ+R (%)"), ("rotation_r2", "rotation R^2"))
SLICES = ("full", "ir", "ef")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(path: str) -> Dict[str, List[Dict]]:
    """log.jsonl -> {"step": [...], "epoch": [...]} records (a torn last line is skipped)."""
    records = {"step": [], "epoch": []}
    for _, record in log_records(path):
        records.setdefault(record.get("type", "step"), []).append(record)
    return records


def run_labels(sources: Sequence[str]) -> List[str]:
    """A label per run directory: its name, or where two share a name (runs/seed0/dino and
    runs/seed1/dino), each one's path below their common parent."""
    names = [os.path.basename(os.path.normpath(s)) or s for s in sources]
    if len(set(names)) == len(names):
        return names
    paths = [os.path.abspath(s) for s in sources]
    common = os.path.commonpath(paths)
    return [os.path.relpath(p, common) if p != common else n for p, n in zip(paths, names)]


def _smooth(values: Sequence[float], window: int) -> List[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _eval_bars(ax, results: Dict[str, Dict], key: str, title: str) -> None:
    """Grouped bars: one group per feature slice, one bar per labelled result. A value may be
    a number or a (mean, std) pair."""
    labels = list(results)
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        values, errors = [], []
        for s in SLICES:
            v = results[label][key][s]
            mean, std = (v["mean"], v["std"]) if isinstance(v, dict) else (v, 0.0)
            values.append(mean)
            errors.append(std)
        ax.bar([j + i * width for j in range(len(SLICES))], values, width, label=label,
               yerr=errors if any(errors) else None, capsize=3)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(SLICES))])
    ax.set_xticklabels([s.upper() if s != "full" else "full" for s in SLICES])
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def plot_eval(result: Dict, path: str) -> str:
    """Bar charts of one evaluation (eval_<which>.json's dict)."""
    return plot_results({f"{result['method']} ({result['which']})": result}, path)


def plot_results(results: Dict[str, Dict], path: str) -> str:
    """Bar charts of several evaluations, {label: result}, side by side per metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, (key, title) in zip(axes, METRICS):
        _eval_bars(ax, results, key, title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(sources: Sequence[str], path: str) -> str:
    """Loss curves (total, DIR, DVR) and lr of run directories, plus their evaluation results
    when eval_teacher.json is present. A comparison JSON (from compare) draws its table."""
    plt = _pyplot()
    runs, evals = [], {}
    labels = dict(zip(sources, run_labels(sources)))
    for source in sources:
        if os.path.isfile(source) and source.endswith(".json"):
            with open(source) as f:
                summary = json.load(f)
            evals.update({label: r for label, r in summary.get("summary", {}).items()})
            continue
        log = os.path.join(source, "log.jsonl")
        if not os.path.exists(log):
            raise FileNotFoundError(f"{source}: no log.jsonl (and not a comparison .json)")
        runs.append((labels[source], read_log(log)))
        for which in EVALUATED:
            eval_path = eval_stem(source, which) + ".json"
            if os.path.exists(eval_path):
                with open(eval_path) as f:
                    result = json.load(f)
                evals[f"{runs[-1][0]} ({which})"] = result
    rows = (1 if runs else 0) + (1 if evals else 0)
    if not rows:
        raise ValueError("nothing to plot")
    fig = plt.figure(figsize=(13, 3.8 * rows))
    # 12 columns: four loss panels of 3 and three evaluation panels of 4 share one grid.
    grid = fig.add_gridspec(rows, 12)
    if runs:
        panels = [("total", "loss"), ("DIR", "DIR"), ("DVR", "DVR"), ("lr", "lr")]
        for k, (key, title) in enumerate(panels):
            ax = fig.add_subplot(grid[0, 3 * k:3 * k + 3])
            for name, log in runs:
                steps = [r["step"] for r in log["step"] if key in r]
                values = [r[key] for r in log["step"] if key in r]
                if values:
                    window = max(1, len(values) // 50)
                    ax.plot(steps, values if key == "lr" else _smooth(values, window), label=name)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if k == 0:
                ax.legend(fontsize=8)
    if evals:
        for k, (key, title) in enumerate(METRICS):
            ax = fig.add_subplot(grid[rows - 1, 4 * k:4 * k + 4])
            _eval_bars(ax, evals, key, title)
            if k == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # python -m clever_kernels.train.plot is clever-plot
    import sys

    from .cli import plot_main

    sys.exit(plot_main())
