"""Evaluation of a checkpoint: linear probes under test-time perturbation, and how well IR and
EF encode the rotation a view received.

Features are the frozen backbone's (the ViT's CLS token, the ResNet's pooled feature), taken
whole ("full"), as the IR slice (the first int(D * hp1) dimensions) and as the EF slice (the
rest). For a DINO checkpoint the slices are nominal: DINO trains no split, so they are a
baseline for what an arbitrary part of an unsplit feature carries.

- Top1-Ori: a logistic-regression probe on standardised features of the clean train split,
  tested on the clean test split. Clean means the whole image resized to the global crop size
  (the centre square for non-square images), no other op.
- Top1-Ori+CJ+R: the same probe tested on perturbed test images: colour jitter (brightness 0.4,
  contrast 0.4, saturation 0.4, hue 0.1) always and rotation by an angle uniform in (-90, 90),
  rendered in the library's order (geometry, then colour), so the rotation's zero fill is
  jittered too; torchvision's order in SPEC.md jitters first.
- Rotation R^2: ridge regression from the features of rotated train images to (cos, sin) of
  their angle (read from the captured augmentation parameters), scored by R^2 on rotated test
  images. Near 1: the angle can be read off linearly; near 0 or below: it cannot. R^2 grows
  with the number of regressors, so IR (the wider slice) is also scored at EF's width
  ("ir_at_ef_width": the mean over WIDTH_MATCHED_SUBSETS random subsets of IR's dimensions),
  the figure to set against EF's.

Views are drawn and rendered with the library's augmentation (sample_view with a
crop-free ViewConfig, then render).
"""
import json
import os
import time
from argparse import Namespace
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..augment import ViewConfig, image_sizes, render, sample_view
from .checkpoint import load_checkpoint
from .data import load_split, make_loader
from .models import feature_split
from .runlog import EVALUATED, eval_stem
from .trainer import CHECKPOINT_NAME, build_network

PERTURBATIONS = ("clean", "cj_r", "rot")
SLICES = ("full", "ir", "ef")
WIDTH_MATCHED_SUBSETS = 10
# Distinct draw keys per perturbation, so the clean and perturbed sets never share a draw.
_STEP_OF = {"clean": 0, "cj_r": 1, "rot": 2}


def perturbation_config(kind: str, size: int) -> ViewConfig:
    """The single-view augmentation of a test-time perturbation: no crop (scale and ratio 1),
    no flip, no grayscale, blur or solarize; colour jitter and rotation as `kind` says."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"kind must be one of {PERTURBATIONS}, got {kind!r}")
    return ViewConfig(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, grayscale_p=0.0, blur_p=0.0,
                      solarize_p=0.0, jitter_p=1.0 if kind == "cj_r" else 0.0, brightness=0.4, contrast=0.4,
                      saturation=0.4, hue=0.1, rotation_p=0.0 if kind == "clean" else 1.0, degrees=(-90.0, 90.0))


@torch.no_grad()
def extract(model, dataset, kind: str, size: int, device: torch.device, seed: int = 0, batch_size: int = 256,
            num_workers: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D) float32, labels (N,), angles (N,) degrees) of `dataset` under the
    perturbation `kind`, in dataset order."""
    config = perturbation_config(kind, size)
    feats, labels, angles = [], [], []
    for images, y, ids in make_loader(dataset, None, batch_size, num_workers):
        images = [im.to(device) for im in images]
        if all(im.shape == images[0].shape for im in images):
            images = torch.stack(images)
        params = sample_view(image_sizes(images), config, view=0, seed=seed, step=_STEP_OF[kind],
                             ids=ids.to(device))
        views = render(images, params)
        feats.append(model.features([views]).float().cpu())
        labels.append(y)
        angles.append(params.angle.cpu())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy(), torch.cat(angles).numpy()


def _slices(dim: int, args: Namespace) -> Dict[str, slice]:
    d_ir, _ = feature_split(dim, args.hp1)
    return {"full": slice(0, dim), "ir": slice(0, d_ir), "ef": slice(d_ir, dim)}


def linear_probe(train_x, train_y, test_sets, max_iter: int = 2000) -> Dict[str, float]:
    """Top-1 (percent) of a logistic regression on standardised features, fit on (train_x,
    train_y), for each named (x, y) in test_sets."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train_x, train_y)
    return {name: 100.0 * float((probe.predict(x) == y).mean()) for name, (x, y) in test_sets.items()}


def angle_r2(train_x, train_angles, test_x, test_angles) -> float:
    """R^2 on the test set of a ridge regression (alpha by cross-validation on the train set)
    from standardised features to (cos, sin) of the angle. In (-inf, 1]."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def target(deg):
        rad = np.deg2rad(deg)
        return np.stack([np.cos(rad), np.sin(rad)], axis=1)

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    model.fit(train_x, target(train_angles))
    return float(r2_score(target(test_angles), model.predict(test_x)))


def _r2_at_width(train_x, train_angles, test_x, test_angles, width: int, seed: int) -> float:
    """Mean angle_r2 over WIDTH_MATCHED_SUBSETS random subsets of `width` of the columns (all of
    them when there are no more than `width`)."""
    if width >= train_x.shape[1] or width < 1:
        return angle_r2(train_x, train_angles, test_x, test_angles)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(WIDTH_MATCHED_SUBSETS):
        cols = np.sort(rng.choice(train_x.shape[1], size=width, replace=False))
        scores.append(angle_r2(train_x[:, cols], train_angles, test_x[:, cols], test_angles))
    return float(np.mean(scores))


def _subsample(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"max_train must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def evaluate_network(model: torch.nn.Module, args: Namespace, data: Optional[str] = None, device=None,
                     batch_size: int = 256, num_workers: int = 0, seed: int = 0,
                     max_train: Optional[int] = None) -> Dict:
    """The probes of `evaluate` on a network built by build_network(args) (trained or not).
    Returns the metric part of the result: feature_dims, n_train, n_test, top1_ori,
    top1_ori_cj_r, rotation_r2."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    data = data or args.data
    train_set, test_set = load_split(data, "train"), load_split(data, "test")
    keep = _subsample(len(train_set), max_train, seed)
    # checked before any feature is extracted, which is most of an evaluation's time
    n_classes = len(torch.unique(train_set.labels[torch.as_tensor(keep)]))
    if n_classes < 2:
        chosen = f" (max_train={max_train} of {len(train_set)})" if len(keep) < len(train_set) else ""
        raise ValueError(f"the probe's training images{chosen} hold {n_classes} class{'es' if n_classes != 1 else ''}: a linear probe needs "
                         f"at least 2 ({data})")
    train_set = torch.utils.data.Subset(train_set, keep.tolist()) if len(keep) < len(train_set) else train_set

    size = args.global_size
    run = lambda dataset, kind: extract(model, dataset, kind, size, device, seed, batch_size, num_workers)
    train_clean, train_y, _ = run(train_set, "clean")
    test_clean, test_y, _ = run(test_set, "clean")
    test_cjr, test_cjr_y, _ = run(test_set, "cj_r")
    train_rot, _, train_angle = run(train_set, "rot")
    test_rot, _, test_angle = run(test_set, "rot")

    dim = train_clean.shape[1]
    slices = _slices(dim, args)
    top1_ori, top1_cjr, r2 = {}, {}, {}
    for name, sl in slices.items():
        acc = linear_probe(train_clean[:, sl], train_y,
                           {"ori": (test_clean[:, sl], test_y), "cj_r": (test_cjr[:, sl], test_cjr_y)})
        top1_ori[name], top1_cjr[name] = acc["ori"], acc["cj_r"]
        r2[name] = angle_r2(train_rot[:, sl], train_angle, test_rot[:, sl], test_angle)
    r2["ir_at_ef_width"] = _r2_at_width(train_rot[:, slices["ir"]], train_angle, test_rot[:, slices["ir"]],
                                        test_angle, slices["ef"].stop - slices["ef"].start, seed)
    return {"data": data, "feature_dims": {name: sl.stop - sl.start for name, sl in slices.items()},
            "n_train": int(len(train_y)), "n_test": int(len(test_y)),
            "top1_ori": top1_ori, "top1_ori_cj_r": top1_cjr, "rotation_r2": r2}


def evaluate(checkpoint: str, which: str = "teacher", data: Optional[str] = None, device: Optional[str] = None,
             batch_size: int = 256, num_workers: int = 0, seed: int = 0, max_train: Optional[int] = None,
             out: Optional[str] = None, plot: bool = True) -> Dict:
    """Evaluates the `which` ("teacher" or "student") network of a clever-train checkpoint and
    writes eval_<which>.json, .md (and .png with plot) next to it or in `out`. Returns the
    result dict (see markdown_table for the keys)."""
    if which not in EVALUATED:
        raise ValueError(f"which must be one of {EVALUATED}, got {which!r}")
    start = time.perf_counter()
    if os.path.isdir(checkpoint):  # a run's directory
        checkpoint = os.path.join(checkpoint, CHECKPOINT_NAME)
    out = out or os.path.dirname(os.path.abspath(checkpoint))
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"out {out!r} is a file; the results need a directory")
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or "args" not in state or which not in state:
        raise ValueError(f"{checkpoint} is not a checkpoint written by clever-train (no training arguments "
                         f"or no {which} network in it)")
    args = Namespace(**state["args"])
    model = build_network(args)
    model.load_state_dict(state[which])
    metrics = evaluate_network(model, args, data=data, device=device, batch_size=batch_size,
                               num_workers=num_workers, seed=seed, max_train=max_train)
    result = {"checkpoint": os.path.abspath(checkpoint), "which": which, "method": args.method, "arch": args.arch,
              "aug": args.aug, "epoch": state["epoch"], "step": state["step"],
              "split_nominal": args.method != "clever", **metrics, "seconds": time.perf_counter() - start}
    os.makedirs(out, exist_ok=True)
    stem = eval_stem(out, which)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(result) + "\n")
    if plot:
        from .plot import plot_eval

        plot_eval(result, stem + ".png")
    return result


def markdown_table(result: Dict) -> str:
    """One evaluation as a markdown table: rows full / IR / EF, columns Top1-Ori,
    Top1-Ori+CJ+R and the rotation R^2."""
    nominal = " (nominal split: DINO trains none)" if result.get("split_nominal") else ""
    lines = [f"{result['method']} {result['arch']} ({result['which']}, {result['data']}, "
             f"step {result['step']}){nominal}",
             "",
             "| feature | dims | Top1-Ori (%) | Top1-Ori+CJ+R (%) | rotation R^2 |",
             "|---|---:|---:|---:|---:|"]
    for name in SLICES:
        lines.append(f"| {name.upper() if name != 'full' else 'full'} | {result['feature_dims'][name]} | "
                     f"{result['top1_ori'][name]:.1f} | {result['top1_ori_cj_r'][name]:.1f} | "
                     f"{result['rotation_r2'][name]:.3f} |")
    if "ir_at_ef_width" in result["rotation_r2"]:
        lines += ["", f"rotation R^2 of IR at EF's width ({result['feature_dims']['ef']} of its "
                      f"{result['feature_dims']['ir']} dims, mean of {WIDTH_MATCHED_SUBSETS} random subsets): "
                      f"{result['rotation_r2']['ir_at_ef_width']:.3f}"]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m clever_kernels.train.evaluate is clever-eval
    import sys

    from .cli import eval_main

    sys.exit(eval_main())
