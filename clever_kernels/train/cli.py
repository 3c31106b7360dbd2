"""Command lines: clever-train, clever-eval, clever-plot.

    clever-train --method clever --arch vit_tiny --aug caug --epochs 100 --out runs/clever
    torchrun --nproc_per_node 4 $(which clever-train) --method dino ...
    clever-eval runs/clever/checkpoint.pt
    clever-plot runs/dino runs/clever --out curves.png
    clever-train --compare --seeds 0 1 2        (same as python -m clever_kernels.train.compare)
"""
import argparse
import sys
from typing import List, Optional

from .models import ARCHS
from .runlog import EVALUATED

EXIT_NON_FINITE = 3
EXIT_USAGE = 2  # argparse's


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _pair(text: str):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'min,max', got {text!r}") from None
    return lo, hi


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of options that take a value and have one. A flag's default is its
    absence, and argparse's own text for it misleads: a store_false flag such as
    --imagenet-stem would read '(default: True)' though it is off unless given; a None default
    means the help text says what is derived instead."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clever-train", description="DINO / CLeVER self-supervised training with on-device multi-crop.",
        formatter_class=_DefaultsFormatter)
    g = p.add_argument_group("method and model")
    g.add_argument("--method", choices=("dino", "clever"), default="clever")
    g.add_argument("--arch", choices=ARCHS, default="vit_tiny")
    g.add_argument("--patch-size", type=_positive_int, default=None,
                   help="ViT patch side (default 16, or 4 when the global crop is under 128 pixels)")
    g.add_argument("--small-stem", dest="small_stem", action="store_true", default=None,
                   help="ResNet-18: 3x3 stride-1 stem without max-pool (default when the global crop is under 128)")
    g.add_argument("--imagenet-stem", dest="small_stem", action="store_false",
                   help="ResNet-18: the 7x7 stride-2 stem with max-pool")
    g.add_argument("--width", type=_positive_int, default=None,
                   help="ViT embedding width (heads of 64) or ResNet first-stage channels; default the arch's")
    g.add_argument("--depth", type=_positive_int, default=None, help="ViT block count (default 12)")
    g.add_argument("--out-dim", type=_positive_int, default=65536, help="head 1 (IR / DINO) prototypes K1")
    g.add_argument("--dvr-out-dim", type=_positive_int, default=16384, help="head 2 (EF) prototypes K2")
    g.add_argument("--head-hidden", type=_positive_int, default=2048)
    g.add_argument("--head-bottleneck", type=_positive_int, default=256)
    g.add_argument("--head-bn", action="store_true",
                   help="BatchNorm in the heads' hidden layers (DINO's use_bn_in_head; needed with ResNets)")
    g.add_argument("--no-norm-last-layer", dest="norm_last_layer", action="store_false",
                   help="learn the norm of the prototypes (DINO's norm_last_layer=False)")
    g.add_argument("--hp1", type=float, default=0.8, help="share of the backbone feature that is IR")
    g.add_argument("--sep-lambd", type=float, default=1.0, help="weight of the DVR (orthogonality) term")
    g.add_argument("--reg-lambd", type=float, default=0.001, help="weight of the head-norm gap regulariser")

    g = p.add_argument_group("data and augmentation")
    g.add_argument("--data", default="digits",
                   help="'digits' (embedded), 'fashion-mnist', or an ImageFolder directory")
    g.add_argument("--aug", choices=("baug", "caug", "caug+"), default="caug")
    g.add_argument("--global-size", type=_positive_int, default=None,
                   help="global crop side (default 32 for digits, 28 for fashion-mnist, else 224)")
    g.add_argument("--local-size", type=_positive_int, default=None,
                   help="local crop side (default 96 at 224, else half the global side)")
    g.add_argument("--n-local", type=int, default=8, help="local crops per image")
    g.add_argument("--global-scale", type=_pair, default=(0.4, 1.0), help="global crop area range 'min,max'")
    g.add_argument("--local-scale", type=_pair, default=(0.05, 0.4), help="local crop area range 'min,max'")
    g.add_argument("--aug-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one augmentation setting (repeatable), as clever_kernels.augment.config "
                        "names them: flip_p=0, degrees=(-45,45), local_scale=(0.2,0.5), global2_solarize_p=0.1")
    g.add_argument("--blur-sigma", type=_pair, default=None,
                   help="Gaussian blur sigma range 'min,max' in output pixels (default (0.1, 2.0) at 224, "
                        "scaled with the global crop below)")
    g.add_argument("--num-workers", type=int, default=2, help="data-loader processes (decode only)")

    g = p.add_argument_group("optimisation (DINO's recipe)")
    g.add_argument("--epochs", type=_positive_int, default=100)
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per process")
    g.add_argument("--lr", type=float, default=0.0005, help="peak lr for a total batch of 256 (scaled linearly)")
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--warmup-epochs", type=float, default=10)
    g.add_argument("--weight-decay", type=float, default=0.04)
    g.add_argument("--weight-decay-end", type=float, default=0.4)
    g.add_argument("--momentum-teacher", type=float, default=0.996)
    g.add_argument("--clip-grad", type=float, default=3.0, help="per-parameter gradient norm cap; 0 disables")
    g.add_argument("--freeze-last-layer", type=int, default=1, help="epochs with the prototypes frozen")
    g.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    g.add_argument("--teacher-temp", type=float, default=0.04)
    g.add_argument("--warmup-teacher-temp-epochs", type=int, default=0)
    g.add_argument("--student-temp", type=float, default=0.1)
    g.add_argument("--center-momentum", type=float, default=0.9)
    g.add_argument("--loss-backend", default="auto", choices=("auto", "cpp", "triton", "reference"))

    g = p.add_argument_group("run")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default cuda when available)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")
    g.add_argument("--out", default="runs/train", help="output directory")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from OUT/checkpoint.pt (or the given checkpoint)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a run, replacing its checkpoint and log")
    g.add_argument("--save-params", action="store_true",
                   help="write every step's augmentation parameters to OUT/params/step<N>.pt (float64 "
                        "tables and each view's elastic constants: AugParams.from_tensor reads them back)")
    g.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch only)")
    g.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many steps (smoke tests)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--dist-timeout", type=float, default=1800.0,
                   help="seconds a rank waits for the others in a collective before giving up")
    g.add_argument("--compare", action="store_true",
                   help="run the DINO vs CLeVER comparison instead (python -m clever_kernels.train.compare --help)")
    # A fault injector for the robustness tests: STEP[:PART] makes that loss part NaN at STEP.
    g.add_argument("--inject-nan", default=None, help=argparse.SUPPRESS)
    return p


def train_main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--compare" in argv:
        from .compare import main as compare_main

        return compare_main([a for a in argv if a != "--compare"])
    args = train_parser().parse_args(argv)
    from .trainer import ConfigError, NonFiniteLoss, train

    try:
        result = train(args)
    except NonFiniteLoss as exc:
        print(f"clever-train: {exc}", file=sys.stderr)
        return EXIT_NON_FINITE
    except ConfigError as exc:
        print(f"clever-train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.no_progress and result["rank"] == 0:
        print(f"clever-train: {result['step']} steps done, checkpoint {result['checkpoint']}", file=sys.stderr)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clever-eval", formatter_class=_DefaultsFormatter,
        description="Linear probes (Top1-Ori, Top1-Ori+CJ+R) on frozen backbone features, full / IR / EF, "
                    "and the rotation sensitivity (R^2 of a linear regression of the angle) of IR and EF.")
    p.add_argument("checkpoint", help="a checkpoint written by clever-train")
    p.add_argument("--which", choices=EVALUATED, default="teacher")
    p.add_argument("--data", default=None, help="evaluate on other data than the training data")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the test-time perturbations")
    p.add_argument("--max-train", type=_positive_int, default=None, help="subsample the probe's training split")
    p.add_argument("--out", default=None, help="directory for eval_<which>.{json,md,png} (default: the checkpoint's)")
    p.add_argument("--no-plot", action="store_true")
    return p


def eval_main(argv: Optional[List[str]] = None) -> int:
    args = eval_parser().parse_args(argv)
    from .evaluate import evaluate, markdown_table

    result = evaluate(args.checkpoint, which=args.which, data=args.data, device=args.device,
                      batch_size=args.batch_size, num_workers=args.num_workers, seed=args.seed,
                      max_train=args.max_train, out=args.out, plot=not args.no_plot)
    print(markdown_table(result))
    return 0


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clever-plot", description="Loss curves of training runs and their evaluation results, to PNG.")
    p.add_argument("runs", nargs="+",
                   help="run directories (holding log.jsonl and eval_*.json) or comparison JSON files")
    p.add_argument("--out", default="curves.png")
    return p


def plot_main(argv: Optional[List[str]] = None) -> int:
    args = plot_parser().parse_args(argv)
    from .plot import plot_runs

    path = plot_runs(args.runs, args.out)
    print(path)
    return 0
