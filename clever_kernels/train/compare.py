"""DINO vs CLeVER, end to end, in one command:

    python -m clever_kernels.train.compare                 # one seed, about 10 minutes on 2 CPU cores
    python -m clever_kernels.train.compare --seeds 0 1 2   # mean +- std over seeds

Trains DINO and CLeVER with the same short recipe on the embedded digits (CAug: the views are
rotated, as in the paper's headline runs), evaluates both teachers with clever-eval's probes,
and the same backbone untrained as a reference, and prints one table. Any clever-train option
not listed in --help is passed to both trainings and overrides the recipe (e.g. --epochs 20
--data fashion-mnist). Results go to RESULTS/compare_<data>_<arch>_seeds<...>.json / .md / .png
with the exact command and a description of the machine.
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
from .evaluate import SLICES, evaluate, evaluate_network
from .trainer import build_network, resolve_sizes, train

METHODS = ("dino", "clever")
LABELS = {"dino": "DINO", "clever": "CLeVER", "untrained": "untrained"}
# A recipe that finishes in about five minutes per method on two CPU cores and does not
# collapse on the digits. Each choice and why:
# - ResNet-18 at quarter width with the small stem, BatchNorm in the heads (DINO's ResNet
#   setting: pooled ReLU features share one direction, and without it every image starts on the
#   same head output);
# - 16x16 global and 8x8 local crops: the digits are 8x8 scans, so 16 pixels lose nothing, and
#   the blur shrinks with the crop (see resolve_sizes);
# - milder crops than ImageNet's (0.7-1 and 0.3-0.6 of the area) and no horizontal flip (a
#   mirrored digit is another symbol): two ImageNet-strength views of an 8x8 digit, rotated by
#   independent angles in (-90, 90), share almost no pixels, and DINO then settles in the
#   uniform collapse (loss = ln K) before learning anything;
# - a sharper teacher (0.01) and a higher lr (0.008 * 64 / 256) than DINO's ImageNet values,
#   which is what lets the run leave the uniform start within a few hundred steps; the teacher
#   momentum stays DINO's 0.996;
# - 80 epochs (1,760 steps): at 40, CLeVER left the uniform start on one seed of three only
#   (final DIR 3.9, 6.3 and 5.9 against ln 1024 = 6.9; DINO 3.4, 4.7, 3.9), so the table
#   compared a trained DINO with an untrained CLeVER; at 80 the worst of those seeds reaches 2.2.
# CAug (rotation of every view) for both methods, as in the paper's headline runs.
QUICK_RECIPE = ["--arch", "resnet18", "--width", "16", "--head-bn", "--aug", "caug", "--aug-set", "flip_p=0",
                "--epochs", "80", "--batch-size", "64", "--n-local", "2", "--global-size", "16", "--local-size", "8",
                "--global-scale", "0.7,1", "--local-scale", "0.3,0.6", "--out-dim", "1024", "--dvr-out-dim", "1024",
                "--head-hidden", "512", "--head-bottleneck", "128", "--lr", "0.008", "--warmup-epochs", "1",
                "--teacher-temp", "0.01", "--warmup-teacher-temp", "0.01", "--momentum-teacher", "0.996",
                "--num-workers", "0"]
ROWS = [("top1_ori", "full", "Top1-Ori (%), full feature"),
        ("top1_ori_cj_r", "full", "Top1-Ori+CJ+R (%), full feature"),
        ("top1_ori", "ir", "Top1-Ori (%), IR"),
        ("top1_ori_cj_r", "ir", "Top1-Ori+CJ+R (%), IR"),
        ("top1_ori", "ef", "Top1-Ori (%), EF"),
        ("rotation_r2", "full", "rotation R^2, full feature"),
        ("rotation_r2", "ir", "rotation R^2, IR"),
        ("rotation_r2", "ir_at_ef_width", "rotation R^2, IR at EF's width"),
        ("rotation_r2", "ef", "rotation R^2, EF")]
# the parts of each metric in a summary: the slices, and for R^2 IR scored at EF's width
_PARTS = {"top1_ori": SLICES, "top1_ori_cj_r": SLICES, "rotation_r2": SLICES + ("ir_at_ef_width",)}


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
    lines = ["| metric | untrained | DINO | CLeVER | CLeVER − DINO |", "|---|---:|---:|---:|---:|"]
    for key, part, title in ROWS:
        base, dino, clever = (summary[label][key][part] for label in ("untrained", "DINO", "CLeVER"))
        digits = 3 if key == "rotation_r2" else 1
        lines.append(f"| {title} | {_fmt(base, key, n_seeds)} | {_fmt(dino, key, n_seeds)} | "
                     f"{_fmt(clever, key, n_seeds)} | {clever['mean'] - dino['mean']:+.{digits}f} |")
    d, c = summary["DINO"]["train_seconds"], summary["CLeVER"]["train_seconds"]
    lines.append(f"| training time (s) | | {d['mean']:.0f} | {c['mean']:.0f} | |")
    return "\n".join(lines)


def commit() -> str:
    """The checked-out commit, read from .git without running git; "unknown" outside a checkout."""
    git = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head
        ref_path = os.path.join(git, head[5:])
        if os.path.exists(ref_path):
            with open(ref_path) as f:
                return f.read().strip()
        with open(os.path.join(git, "packed-refs")) as f:
            for line in f:
                if line.strip().endswith(" " + head[5:]):
                    return line.split()[0]
    except OSError:
        pass
    return "unknown"


def write_report(report: Dict, stem: str) -> str:
    """Writes stem.json, stem.md and stem.png from a comparison report; returns the table."""
    text = table(report["summary"], len(report["seeds"]))
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    m = report["machine"]
    seeds = report["seeds"]
    devices = sorted({r["device"] for r in report["runs"] if "device" in r})
    with open(stem + ".md", "w") as f:
        f.write(f"# DINO vs CLeVER on {report['data']} ({report['arch']}, {report['aug']}, "
                f"{len(seeds)} seed(s): {', '.join(map(str, seeds))})\n\n")
        f.write(f"Command: `{report['command']}`\n\n")
        f.write(f"Training arguments (both methods): `{' '.join(report['train_args'])}`\n\n")
        f.write(f"Machine: {m.get('cpu', m['processor'])}, {m['cpu_count']} CPU(s), torch {m['torch']} "
                f"({m['torch_threads']} threads), {m['platform']}"
                + (f", GPU {m['cuda']}" if m["cuda"] else "")
                + (f"; trained and evaluated on {', '.join(devices)}" if devices else "")
                + f". Checked-out commit: {report.get('commit', 'unknown')} (the working tree may hold "
                f"changes not yet committed). Date: {report['date']}.\n\n")
        f.write(f"Total wall time (untrained reference, training and evaluation of both methods, all seeds): "
                f"{report['total_seconds']:.0f} s.\n\n")
        f.write(f"Linear probes on the frozen {report['which']}'s backbone feature; mean ± std over seeds. "
                "'untrained' is the same backbone at initialisation. For DINO, IR and EF are the same slices "
                "of an unsplit feature (a baseline).\n\n")
        f.write(text + "\n")
    from .plot import plot_results

    plot_results(report["summary"], stem + ".png")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args, passthrough = p.parse_known_args(argv)
    # each method and seed trains in a folder of its own under --out, with the seed of --seeds
    for option in ("--seed", "--method", "--out", "--overwrite"):
        if any(a == option or a.startswith(option + "=") for a in passthrough):
            p.error(f"{option} is set by the comparison itself" + (": use --seeds" if option == "--seed" else ""))
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {args.seeds}")
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        # The same backbone at initialisation: what the probes read from features nobody trained.
        init_args = resolve_sizes(train_parser().parse_args(QUICK_RECIPE + passthrough + ["--seed", str(seed)]))
        torch.manual_seed(seed)
        print(f"compare: evaluating the untrained network, seed {seed}", file=sys.stderr)
        runs.append({"method": "untrained", "seed": seed, "train_seconds": 0.0,
                     "eval": evaluate_network(build_network(init_args), init_args, device=init_args.device)})
        for method in METHODS:
            out = os.path.join(args.out, f"{method}_seed{seed}")
            train_argv = QUICK_RECIPE + passthrough + ["--method", method, "--seed", str(seed), "--out", out]
            train_args = train_parser().parse_args(train_argv)
            # each comparison trains afresh in its own folder, unless asked to resume
            train_args.overwrite = not train_args.resume
            print(f"compare: training {LABELS[method]}, seed {seed} -> {out}", file=sys.stderr)
            t0 = time.perf_counter()
            result = train(train_args)
            seconds = time.perf_counter() - t0
            print(f"compare: evaluating {LABELS[method]}, seed {seed}", file=sys.stderr)
            # on the training's device: a --device cpu comparison stays off a GPU the machine has
            evaluation = evaluate(result["checkpoint"], which=args.which, device=train_args.device, plot=False)
            runs.append({"method": method, "seed": seed, "device": result["device"], "train_seconds": seconds,
                         "eval": evaluation})

    summary = {}
    for method in ("untrained",) + METHODS:
        mine = [r for r in runs if r["method"] == method]
        entry = {key: {part: _stats([r["eval"][key][part] for r in mine]) for part in parts}
                 for key, parts in _PARTS.items()}
        entry["train_seconds"] = _stats([r["train_seconds"] for r in mine])
        summary[LABELS[method]] = entry
    total = time.perf_counter() - start
    sample_args = train_parser().parse_args(QUICK_RECIPE + passthrough)
    command = "python -m clever_kernels.train.compare " + " ".join(shlex.quote(a) for a in argv)
    data_name = os.path.basename(os.path.normpath(sample_args.data))
    report = {"command": command.strip(), "train_args": QUICK_RECIPE + passthrough, "seeds": args.seeds,
              "data": data_name, "arch": sample_args.arch, "aug": sample_args.aug, "which": args.which,
              "machine": machine(), "commit": commit(), "total_seconds": total,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "summary": summary, "runs": runs}
    stem = os.path.join(args.results, f"compare_{data_name}_{sample_args.arch}_seeds"
                        + "-".join(str(s) for s in args.seeds))
    text = write_report(report, stem)
    print(text)
    print(f"\ncompare: {total:.0f} s in all; results in {stem}.json / .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
