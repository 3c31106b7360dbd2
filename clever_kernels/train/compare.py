"""DINO vs CLeVER, end to end, in one command:

    python -m clever_kernels.train.compare                 # one seed, a few minutes on 2 CPU cores
    python -m clever_kernels.train.compare --seeds 0 1 2   # mean +- std over seeds

Trains DINO and CLeVER with the same short recipe on the embedded digits (CAug: the views are
rotated, as in the paper's headline runs), evaluates both teachers with clever-eval's probes
and prints one table. Any clever-train option not listed in --help is passed to both trainings
(e.g. --epochs 20 --arch vit_tiny --depth 4). Results go to RESULTS/compare_<data>_<arch>_seeds<...>
.json / .md / .png with the exact command and a description of the machine.
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from .cli import train_parser
from .evaluate import SLICES, evaluate
from .trainer import train

METHODS = ("dino", "clever")
LABELS = {"dino": "DINO", "clever": "CLeVER"}
# A recipe that finishes in a few minutes per method on two CPU cores: a ResNet-18 at quarter
# width with the small stem, 16x16 global and 8x8 local crops (the digits are 8x8 scans, so 16
# pixels lose nothing), small heads. The lr is higher and the warm-up shorter than DINO's
# ImageNet values because the run is only a few hundred steps.
QUICK_RECIPE = ["--arch", "resnet18", "--width", "16", "--aug", "caug", "--epochs", "6", "--batch-size", "64",
                "--n-local", "4", "--global-size", "16", "--local-size", "8", "--out-dim", "1024",
                "--dvr-out-dim", "1024", "--head-hidden", "512", "--head-bottleneck", "128", "--lr", "0.002",
                "--warmup-epochs", "1", "--momentum-teacher", "0.99", "--num-workers", "0"]
ROWS = [("top1_ori", "full", "Top1-Ori (%), full feature"),
        ("top1_ori_cj_r", "full", "Top1-Ori+CJ+R (%), full feature"),
        ("top1_ori", "ir", "Top1-Ori (%), IR"),
        ("top1_ori_cj_r", "ir", "Top1-Ori+CJ+R (%), IR"),
        ("top1_ori", "ef", "Top1-Ori (%), EF"),
        ("rotation_r2", "full", "rotation R^2, full feature"),
        ("rotation_r2", "ir", "rotation R^2, IR"),
        ("rotation_r2", "ef", "rotation R^2, EF")]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clever_kernels.train.compare", description=__doc__,
                                allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/compare", help="directory of the training runs")
    p.add_argument("--results", default="results", help="directory of the summary files")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    return p


def _stats(values: List[float]) -> Dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def machine() -> Dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _fmt(stat: Dict, key: str, n: int) -> str:
    digits = 3 if key == "rotation_r2" else 1
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if n > 1 else "")


def table(summary: Dict, n_seeds: int) -> str:
    lines = ["| metric | DINO | CLeVER | CLeVER − DINO |", "|---|---:|---:|---:|"]
    for key, part, title in ROWS:
        dino, clever = summary["DINO"][key][part], summary["CLeVER"][key][part]
        digits = 3 if key == "rotation_r2" else 1
        lines.append(f"| {title} | {_fmt(dino, key, n_seeds)} | {_fmt(clever, key, n_seeds)} | "
                     f"{clever['mean'] - dino['mean']:+.{digits}f} |")
    d, c = summary["DINO"]["train_seconds"], summary["CLeVER"]["train_seconds"]
    lines.append(f"| training time (s) | {d['mean']:.0f} | {c['mean']:.0f} | |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, passthrough = parser().parse_known_args(argv)
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        for method in METHODS:
            out = os.path.join(args.out, f"{method}_seed{seed}")
            train_argv = QUICK_RECIPE + passthrough + ["--method", method, "--seed", str(seed), "--out", out]
            train_args = train_parser().parse_args(train_argv)
            if os.path.exists(os.path.join(out, "log.jsonl")) and not train_args.resume:
                os.remove(os.path.join(out, "log.jsonl"))
            print(f"compare: training {LABELS[method]}, seed {seed} -> {out}", file=sys.stderr)
            t0 = time.perf_counter()
            result = train(train_args)
            seconds = time.perf_counter() - t0
            print(f"compare: evaluating {LABELS[method]}, seed {seed}", file=sys.stderr)
            evaluation = evaluate(result["checkpoint"], which=args.which, plot=False)
            runs.append({"method": method, "seed": seed, "train_seconds": seconds, "eval": evaluation})

    summary = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        entry = {key: {part: _stats([r["eval"][key][part] for r in mine]) for part in SLICES}
                 for key in ("top1_ori", "top1_ori_cj_r", "rotation_r2")}
        entry["train_seconds"] = _stats([r["train_seconds"] for r in mine])
        summary[LABELS[method]] = entry
    total = time.perf_counter() - start
    sample_args = train_parser().parse_args(QUICK_RECIPE + passthrough)
    command = "python -m clever_kernels.train.compare " + " ".join(shlex.quote(a) for a in argv)
    report = {"command": command.strip(), "train_args": QUICK_RECIPE + passthrough, "seeds": args.seeds,
              "which": args.which, "machine": machine(), "total_seconds": total,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "summary": summary,
              "runs": runs}
    text = table(summary, len(args.seeds))
    os.makedirs(args.results, exist_ok=True)
    data_name = os.path.basename(os.path.normpath(sample_args.data))
    stem = os.path.join(args.results, f"compare_{data_name}_{sample_args.arch}_seeds"
                        + "-".join(str(s) for s in args.seeds))
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    m = report["machine"]
    with open(stem + ".md", "w") as f:
        f.write(f"# DINO vs CLeVER on {data_name} ({sample_args.arch}, {sample_args.aug}, "
                f"{len(args.seeds)} seed(s): {', '.join(map(str, args.seeds))})\n\n")
        f.write(f"Command: `{report['command']}`\n\n")
        f.write(f"Training arguments (both methods): `{' '.join(report['train_args'])}`\n\n")
        f.write(f"Machine: {m.get('cpu', m['processor'])}, {m['cpu_count']} CPU(s), torch {m['torch']} "
                f"({m['torch_threads']} threads), {m['platform']}"
                + (f", GPU {m['cuda']}" if m["cuda"] else "") + f". Date: {report['date']}.\n\n")
        f.write(f"Total wall time (training and evaluation of both methods, all seeds): {total:.0f} s.\n\n")
        f.write(f"Linear probes on the frozen {args.which}'s backbone feature; mean ± std over seeds. "
                "For DINO, IR and EF are the same slices of an unsplit feature (a baseline).\n\n")
        f.write(text + "\n")
    try:
        from .plot import plot_results

        plot_results({label: entry for label, entry in summary.items()}, stem + ".png")
    except ImportError:
        pass
    print(text)
    print(f"\ncompare: {total:.0f} s in all; results in {stem}.json / .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
