"""The DINO / CLeVER training loop (DINO's recipe, CLeVER's split feature and second head).

One step: the loader hands over B uint8 images (decoded, not augmented); MultiCrop renders the
2 global and n_local local views on the training device, keyed by (seed, step, dataset index);
the teacher sees the globals, the student every view; the loss module returns the loss parts;
AdamW steps with DINO's per-parameter clipping and first-epoch freeze of the prototypes; the
teacher follows the student by EMA. Everything a step depends on is a function of (seed, step),
so a run resumed from a mid-epoch checkpoint replays the remaining batches exactly.
"""
import ast
import contextlib
import datetime
import json
import math
import os
import re
import sys
import time
from argparse import Namespace
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..augment import MultiCrop
from ..loss import CLeVERLoss, DINOLoss
from . import checkpoint as ckpt_io
from .data import EpochSampler, load_split, make_loader
from .models import build_backbone, build_model, has_batchnorm
from .runlog import EVAL_EXTENSIONS, EVAL_FILES, EVALUATED, eval_stem, log_records
from .schedules import (cancel_last_layer_gradients, clip_gradients, cosine_schedule, ema_update, head_norm_gap,
                        param_groups, scaled_lr)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_PARTS = ("total", "DIR", "DVR", "reg")
_DATA_SIZES = {"digits": 32, "fashion-mnist": 28}
# what a run writes in --out, and what clever-eval writes there by default
_RUN_FILES = (CHECKPOINT_NAME, LOG_NAME, "args.json")
PARAMS_DIR = "params"  # --save-params: step<step>[_rank<r>].pt


class ConfigError(ValueError):
    """An option out of range or at odds with the output directory or the checkpoint: the
    command line reports it as a usage error, without a traceback."""


class NonFiniteLoss(RuntimeError):
    """A loss part (or, after an update, a weight) stopped being finite; the run stops before
    anything non-finite reaches a checkpoint."""


def resolve_sizes(args: Namespace) -> Namespace:
    """Fills the size-dependent defaults left as None: the global crop follows the data (32 for
    the digits, 28 for Fashion-MNIST, 224 otherwise), the local crop is 96 at 224 and half the
    global crop below, the ViT patch is 16 for large crops and 4 for small ones, and ResNet-18
    gets the small stem below 128 pixels. The Gaussian blur's sigma range, (0.1, 2.0) pixels at
    DINO's 224, shrinks with the global crop so that it blurs the same share of the image (at 16
    pixels an unscaled sigma of 2 leaves a blob)."""
    args = Namespace(**vars(args))
    if args.global_size is None:
        args.global_size = _DATA_SIZES.get(args.data, 224)
    if args.local_size is None:
        args.local_size = 96 if args.global_size >= 224 else max(args.global_size // 2, 1)
    small = args.global_size < 128
    if args.patch_size is None:
        args.patch_size = 4 if small else 16
    if args.small_stem is None:
        args.small_stem = small
    if args.blur_sigma is None:
        scale = min(1.0, args.global_size / 224)
        args.blur_sigma = (0.1 * scale, 2.0 * scale)
    return args


def build_network(args: Namespace) -> nn.Module:
    """The student (or teacher) network described by the training arguments."""
    backbone = build_backbone(args.arch, args.global_size, patch_size=args.patch_size,
                              small_stem=args.small_stem, width=args.width, depth=args.depth)
    return build_model(args.method, backbone, args.out_dim, args.dvr_out_dim, args.hp1,
                       hidden_dim=args.head_hidden, bottleneck_dim=args.head_bottleneck,
                       norm_last_layer=args.norm_last_layer, head_bn=args.head_bn)


def aug_overrides(settings: List[str]) -> Dict:
    """["flip_p=0", "degrees=(-45,45)"] -> {"flip_p": 0, "degrees": (-45, 45)} (values are
    Python literals)."""
    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--aug-set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"--aug-set {item!r}: {value!r} is not a Python literal") from None
    return overrides


def build_multicrop(args: Namespace) -> MultiCrop:
    overrides = {"blur_sigma": tuple(args.blur_sigma), **aug_overrides(args.aug_set)}
    return MultiCrop(preset=args.aug, n_local=args.n_local, global_size=args.global_size,
                     local_size=args.local_size, global_scale=tuple(args.global_scale),
                     local_scale=tuple(args.local_scale), seed=args.seed, **overrides)


def build_loss(args: Namespace) -> nn.Module:
    common = dict(ncrops=2 + args.n_local, warmup_teacher_temp=args.warmup_teacher_temp,
                  teacher_temp=args.teacher_temp, warmup_teacher_temp_epochs=args.warmup_teacher_temp_epochs,
                  nepochs=args.epochs, student_temp=args.student_temp, center_momentum=args.center_momentum,
                  backend=args.loss_backend)
    if args.method == "clever":
        return CLeVERLoss(args.out_dim, dvr_out_dim=args.dvr_out_dim, sep_lambd=args.sep_lambd, **common)
    return DINOLoss(args.out_dim, **common)


class _Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or a single process."""

    def __init__(self, device: str, timeout_s: float = 1800.0):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if device == "cuda" and self.world_size > 1:
            device = f"cuda:{self.local_rank}"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))
            self.owns_group = True
        self.active = self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.active:
            dist.barrier()

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _to_device(images: List[torch.Tensor], device: torch.device):
    if all(im.shape == images[0].shape for im in images):
        return torch.stack(images).to(device, non_blocking=True)
    return [im.to(device, non_blocking=True) for im in images]


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _parse_injection(spec: Optional[str]) -> Optional[Tuple[int, str]]:
    if not spec:
        return None
    step, _, part = spec.partition(":")
    part = part or "total"
    names = {p.lower(): p for p in LOSS_PARTS}
    if part.lower() not in names or not step.strip().isdigit():
        raise ConfigError(f"--inject-nan takes STEP[:PART] with PART one of {LOSS_PARTS}, got {spec!r}")
    return int(step), names[part.lower()]


def _all_finite(module: nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _progress_text(record: Dict) -> str:
    dvr = f" DVR {record['DVR']:.4f}" if "DVR" in record else ""
    return (f"loss {record['total']:.4f} DIR {record['DIR']:.4f}{dvr} lr {record['lr']:.2e} "
            f"{record['img_per_s']:.0f} img/s aug {100 * record['aug_share']:.0f}%")


#: A parameter record's file name (_save_params): step<step>[_rank<r>].pt
_RECORD_NAME = re.compile(r"step\d+(_rank\d+)?\.pt")


def _rewrite_log(path: str, keep_before_step: int, keep_before_epoch: int) -> None:
    """On resume, drop the log records of the steps that will be replayed."""
    if not os.path.exists(path):
        return
    kept = []
    for line, record in log_records(path):
        if record.get("type") == "step" and record["step"] >= keep_before_step:
            continue
        if record.get("type") == "epoch" and record["epoch"] >= keep_before_epoch:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def _add_losses(sums: Dict[str, float], record: Dict) -> None:
    """Adds a step record's loss parts into the epoch's sums."""
    for key in ("total", "DIR", "DVR", "reg"):
        if key in record:
            sums[key] = sums.get(key, 0.0) + record[key]


def _logged_sums(path: str, first_step: int, end_step: int) -> Tuple[Dict[str, float], int]:
    """Sums of the loss parts over the logged step records in [first_step, end_step) and their
    count: on a resume mid-epoch, what the epoch record must also average over."""
    sums, count = {}, 0
    for _, record in log_records(path):
        if record.get("type") == "step" and first_step <= record["step"] < end_step:
            _add_losses(sums, record)
            count += 1
    return sums, count


# (option, lowest, highest): the numbers of the recipe that the trainer itself uses, checked
# before anything is built (the loss, the augmentation and the model check their own)
_OPTION_RANGES = (("lr", 0.0, None), ("min_lr", 0.0, None), ("weight_decay", 0.0, None),
                  ("weight_decay_end", 0.0, None), ("momentum_teacher", 0.0, 1.0), ("clip_grad", 0.0, None),
                  ("freeze_last_layer", 0, None), ("n_local", 0, None), ("num_workers", 0, None),
                  ("ckpt_every", 0, None), ("reg_lambd", 0.0, None), ("sep_lambd", None, None),
                  ("warmup_teacher_temp_epochs", 0, None))


# Options a resumed run may change: how it runs, not what it trains (precision and the loss
# backend change float rounding only; a run stopped by fp16 overflow may go on in bf16).
_RUN_ONLY_OPTIONS = frozenset({"num_workers", "loss_backend", "precision", "device", "deterministic", "out",
                               "resume", "overwrite", "save_params", "ckpt_every", "max_steps", "no_progress",
                               "dist_timeout", "inject_nan", "compare"})


def _same_option(key: str, saved, given) -> bool:
    """Whether a checkpoint's option and this run's mean the same."""
    if key == "aug_set":  # the settings, not their spelling or order
        return aug_overrides(saved) == aug_overrides(given)
    if key == "data" and saved not in _DATA_SIZES and given not in _DATA_SIZES:
        # this run's folder is absolute; a checkpoint from before holds it as typed, relative to
        # the directory the run was started in
        return os.path.abspath(saved) == given
    if isinstance(saved, (list, tuple)) and isinstance(given, (list, tuple)):
        # a checkpoint may hold a tuple the command line gives as a list, or the reverse
        return len(saved) == len(given) and all(_same_option(key, x, y) for x, y in zip(saved, given))
    return saved == given


def check_option_ranges(args: Namespace) -> None:
    """Raises naming the option (as the command line spells it) that is out of its range; also
    for an argument namespace built in code rather than by the parser."""
    for name, low, high in _OPTION_RANGES:
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            where = (f"in [{low}, {high}]" if high is not None else f">= {low}") if low is not None else "finite"
            raise ConfigError(f"{flag} must be {where}, got {value}")


class Trainer:
    """Builds everything from the argument namespace of `clever-train` and runs it (`run`)."""

    def __init__(self, args: Namespace):
        args = resolve_sizes(args)
        if args.data not in _DATA_SIZES and os.path.isdir(args.data):
            # as the checkpoint must name it for an evaluation or resume from another directory
            args.data = os.path.abspath(args.data)
        self.args = args
        if args.method not in ("dino", "clever"):
            raise ConfigError(f"--method must be dino or clever, got {args.method!r}")
        if not 0 <= args.warmup_epochs <= args.epochs:
            raise ConfigError(f"--warmup-epochs must be in [0, --epochs = {args.epochs}], got {args.warmup_epochs}"
                              + (" (lower --warmup-epochs with --epochs)" if args.warmup_epochs > args.epochs else ""))
        check_option_ranges(args)
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = _Distributed(device, args.dist_timeout)
        self.device = self.dist.device
        if args.precision == "fp16" and self.device.type == "cpu":
            print("clever-train: fp16 autocast on the CPU is usually slower than bf16, the CPU's half type",
                  file=sys.stderr)
        self.out = args.out
        self.ckpt_path = os.path.join(self.out, CHECKPOINT_NAME)
        self.log_path = os.path.join(self.out, LOG_NAME)
        fresh = self._claim_out_dir(args)
        self.inject = _parse_injection(getattr(args, "inject_nan", None))

        try:  # a missing --data
            self.dataset = load_split(args.data, "train")
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from exc
        try:  # too few images for one batch (the other arguments come from the process group)
            self.sampler = EpochSampler(len(self.dataset), args.batch_size, self.dist.world_size,
                                        self.dist.rank, seed=args.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.niter = self.sampler.batches_per_epoch
        self.loader = make_loader(self.dataset, self.sampler, args.batch_size, args.num_workers,
                                  pin_memory=self.device.type == "cuda", seed=args.seed)

        torch.manual_seed(args.seed)
        student = build_network(args)
        teacher = build_network(args)
        if self.dist.active and has_batchnorm(student) and self.device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        student.to(self.device)
        teacher.to(self.device)
        teacher.load_state_dict(student.state_dict())
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.student_module = student
        self.teacher = teacher
        self.student = (nn.parallel.DistributedDataParallel(
            student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.active else student)

        self.loss_fn = build_loss(args).to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, weight_decay=args.weight_decay)
        scaler_on = args.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=scaler_on)

        total_lr = scaled_lr(args.lr, args.batch_size, self.dist.world_size)
        self.lr_schedule = cosine_schedule(total_lr, args.min_lr, args.epochs, self.niter, args.warmup_epochs)
        self.wd_schedule = cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, self.niter)
        self.momentum_schedule = cosine_schedule(args.momentum_teacher, 1.0, args.epochs, self.niter)
        self.multicrop = build_multicrop(args)

        self.start_epoch, self.start_iter = 0, 0
        if args.resume:
            self._resume(self.ckpt_path if args.resume == "auto" else args.resume)
        self.last_saved_step = self.start_epoch * self.niter + self.start_iter
        if fresh:
            self._clear_out_dir()
            # no rank may write into --out (a parameter record) before rank 0 has cleared it
            self.dist.barrier()

    def _claim_out_dir(self, args: Namespace) -> bool:
        """Whether this run starts afresh in --out, whose earlier run's files must then go (by
        _clear_out_dir, once every option has been checked). A fresh run refuses an --out that
        holds a run (it would replace the checkpoint and append to the log) unless --overwrite
        says to replace it; so does a resume from another folder's checkpoint. A --resume that
        finds no checkpoint starts afresh."""
        overwrite = getattr(args, "overwrite", False)
        if overwrite and args.resume:
            raise ConfigError("--overwrite starts afresh and --resume continues: pass one of them")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out} is a file; a run needs a directory")
        held = [name for name in _RUN_FILES + EVAL_FILES if os.path.exists(os.path.join(self.out, name))]
        held += [PARAMS_DIR] if self._saved_params() else []
        if held and not overwrite:
            if not args.resume:
                raise ConfigError(f"--out {self.out} already holds a run ({', '.join(held)}): pass --resume to "
                                  "continue it, --overwrite to start afresh there, or another --out")
            own_folder = os.path.dirname(os.path.realpath(args.resume)) == os.path.realpath(self.out)
            if args.resume != "auto" and not own_folder:
                raise ConfigError(f"--out {self.out} holds another run ({', '.join(held)}) than --resume "
                                  f"{args.resume}: continue it in its own folder or in an empty --out")
        if self.dist.main:
            try:
                os.makedirs(self.out, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--out {self.out}: {exc}") from exc
        return overwrite or (args.resume == "auto" and not os.path.isfile(self.ckpt_path))

    def _saved_params(self) -> List[str]:
        """The parameter records a run with --save-params wrote in --out (nothing else there)."""
        directory = os.path.join(self.out, PARAMS_DIR)
        if not os.path.isdir(directory):
            return []
        return [os.path.join(directory, name) for name in sorted(os.listdir(directory))
                if _RECORD_NAME.fullmatch(name)]

    def _clear_out_dir(self) -> None:
        """Removes an earlier run's files (its checkpoint, log, arguments, recorded parameters
        and evaluations), so that nothing of it is read as this run's; only files of the names
        the trainer and clever-eval write, nothing else in --out or in its params folder."""
        if not self.dist.main:
            return
        for path in [os.path.join(self.out, name) for name in _RUN_FILES + EVAL_FILES] + self._saved_params():
            if os.path.isfile(path):
                os.remove(path)
        params = os.path.join(self.out, PARAMS_DIR)
        if os.path.isdir(params) and not os.path.islink(params) and not os.listdir(params):
            os.rmdir(params)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self, epoch: int, iteration: int) -> Dict:
        return {
            "format": 1,
            "student": self.student_module.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "step": epoch * self.niter + iteration,
            "niter_per_epoch": self.niter,
            "world_size": self.dist.world_size,
            "rng": ckpt_io.rng_state(),
            "args": vars(self.args),
        }

    def save(self, epoch: int, iteration: int) -> None:
        """Checkpoint the state after `iteration` batches of `epoch` (iteration == niter is
        written as the start of the next epoch). Refuses non-finite weights, so the file on disk
        is always the last good state."""
        if iteration == self.niter:
            epoch, iteration = epoch + 1, 0
        step = epoch * self.niter + iteration
        if not _all_finite(self.student_module):
            raise NonFiniteLoss(
                f"non-finite student weights after step {step - 1}; stopping, the last good checkpoint "
                f"{self.ckpt_path} (step {self.last_saved_step}) is left as it was")
        state = self._state(epoch, iteration)
        if self.dist.main:
            ckpt_io.atomic_save(state, self.ckpt_path)
            self._drop_evaluations(step)
        self.last_saved_step = step

    def _drop_evaluations(self, step: int) -> None:
        """clever-eval's results in --out that describe this run's checkpoint file at another step
        than the one just written describe weights that are gone: removed, so that no report
        shows them as this checkpoint's. Results of other checkpoints (a copy kept beside it)
        and files that are not such results stay."""
        checkpoint = os.path.realpath(self.ckpt_path)
        for which in EVALUATED:
            stem = eval_stem(self.out, which)
            try:
                with open(stem + ".json") as f:
                    result = json.load(f)
                stale = (os.path.realpath(result["checkpoint"]) == checkpoint and result["step"] != step)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if stale:
                removed = [stem + ext for ext in EVAL_EXTENSIONS if os.path.isfile(stem + ext)]
                for path in removed:
                    os.remove(path)
                print(f"clever-train: removed {', '.join(os.path.basename(p) for p in removed)}, the "
                      f"evaluation of {self.ckpt_path} at step {result['step']} (run clever-eval again)",
                      file=sys.stderr)

    def _resume(self, path: str) -> None:
        if not os.path.isfile(path):
            if self.args.resume == "auto":
                if self.dist.main:
                    print(f"clever-train: no checkpoint at {path}, starting from scratch", file=sys.stderr)
                return
            raise ConfigError(f"--resume {path}: no such checkpoint")
        state = ckpt_io.load_checkpoint(path, map_location=self.device)
        saved = state["args"]
        changed = [f"--{key.replace('_', '-')} {saved[key]!r} (this run: {getattr(self.args, key)!r})"
                   for key in sorted(saved) if key not in _RUN_ONLY_OPTIONS and hasattr(self.args, key)
                   and not _same_option(key, saved[key], getattr(self.args, key))]
        if changed:
            raise ConfigError(f"--resume: checkpoint {path} was trained with other options: "
                              f"{'; '.join(changed)}. A resumed run continues the checkpoint's recipe: "
                              "give its options, or start a new run in another --out")
        if state["niter_per_epoch"] != self.niter:
            raise ConfigError(f"--resume: checkpoint has {state['niter_per_epoch']} iterations per epoch, "
                             f"this run {self.niter} (different world size or dataset?)")
        self.student_module.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_fn.load_state_dict(state["loss"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt_io.set_rng_state(state["rng"])
        self.start_epoch, self.start_iter = state["epoch"], state["iteration"]
        if self.dist.main:
            # (the parameter records of the replayed steps stay: draws are keyed by seed, step and
            # sample, so the replay draws what they hold)
            _rewrite_log(self.log_path, state["step"], self.start_epoch)
            print(f"clever-train: resumed from {path} at epoch {self.start_epoch}, iteration "
                  f"{self.start_iter} (step {state['step']})", file=sys.stderr)

    # -- one step ------------------------------------------------------------------------------

    def _loss(self, views, epoch: int) -> Dict[str, torch.Tensor]:
        args = self.args
        with _autocast(self.device, args.precision):
            with torch.no_grad():
                teacher_out = self.teacher(views[:2])
            student_out = self.student(views)
        teacher_out = [t.float() for t in teacher_out]
        student_out = [s.float() for s in student_out]
        if args.method == "clever":
            total, loss_dir, loss_dvr = self.loss_fn(student_out[0], student_out[1], teacher_out[0],
                                                     teacher_out[1], epoch)
            reg = head_norm_gap(self.student_module.heads)
            return {"total": total + args.reg_lambd * reg, "DIR": loss_dir, "DVR": loss_dvr, "reg": reg}
        loss = self.loss_fn(student_out[0], teacher_out[0], epoch)
        return {"total": loss, "DIR": loss}

    def _check_finite(self, parts: Dict[str, torch.Tensor], step: int, epoch: int, iteration: int) -> Dict[str, float]:
        stacked = torch.stack([p.detach().float() for p in parts.values()])
        if self.dist.active:
            # Every rank must see the same verdict, or the healthy ones would hang in the next
            # collective; the mean over ranks is also the loss worth logging.
            dist.all_reduce(stacked)
            stacked /= self.dist.world_size
        values = dict(zip(parts, stacked.tolist()))
        bad = [name for name in LOSS_PARTS if name in values and not math.isfinite(values[name])]
        if bad:
            parts_text = ", ".join(f"{name} = {values[name]}" for name in bad if name != "total")
            culprit = parts_text or f"total = {values['total']}"
            kept = (f"the last good checkpoint {self.ckpt_path} (written after {self.last_saved_step} steps) is "
                    "left as it was" if os.path.isfile(self.ckpt_path) else "no checkpoint had been written yet")
            raise NonFiniteLoss(
                f"non-finite loss at step {step} (epoch {epoch}, iteration {iteration}): {culprit} "
                f"(total = {values['total']}); stopping, {kept}")
        return values

    def _save_params(self, step: int, epoch: int, ids: torch.Tensor, params) -> None:
        directory = os.path.join(self.out, PARAMS_DIR)
        os.makedirs(directory, exist_ok=True)
        suffix = f"_rank{self.dist.rank}" if self.dist.active else ""
        # float64: it holds the 32-bit elastic seeds exactly, so AugParams.from_tensor(views[v],
        # sizes[v], v, elastic_alpha[v], elastic_sigma[v]) gives back what was drawn
        record = {"step": step, "epoch": epoch, "ids": ids.cpu(), "columns": list(params[0].columns),
                  "views": [p.to_tensor(torch.float64).cpu() for p in params], "sizes": [p.size for p in params],
                  "elastic_alpha": [p.elastic_alpha for p in params],
                  "elastic_sigma": [p.elastic_sigma for p in params]}
        ckpt_io.atomic_save(record, os.path.join(directory, f"step{step:08d}{suffix}.pt"))

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self) -> Dict:
        args = self.args
        from tqdm import tqdm

        if self.dist.main:
            with open(os.path.join(self.out, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1, sort_keys=True, default=str)
        log = open(self.log_path, "a") if self.dist.main else None
        steps_done = self.start_epoch * self.niter + self.start_iter
        stopped_early = args.max_steps is not None and steps_done >= args.max_steps
        try:
            for epoch in range(self.start_epoch, args.epochs if not stopped_early else 0):
                skip = self.start_iter if epoch == self.start_epoch else 0
                self.sampler.set_epoch(epoch, skip)
                bar = tqdm(total=self.niter, initial=skip, desc=f"{args.method} {epoch + 1}/{args.epochs}",
                           disable=not self.dist.main or args.no_progress, dynamic_ncols=True, mininterval=0.5,
                           file=sys.stderr)
                sums, count, epoch_start = {}, 0, time.perf_counter()
                if skip and log is not None:  # the epoch's steps before the resume count too
                    sums, count = _logged_sums(self.log_path, epoch * self.niter, epoch * self.niter + skip)
                tick = time.perf_counter()
                for iteration, (images, _, ids) in enumerate(self.loader, start=skip):
                    step = epoch * self.niter + iteration
                    record = self._step(images, ids, epoch, iteration, step, tick)
                    steps_done = step + 1
                    _add_losses(sums, record)
                    count += 1
                    bar.set_postfix_str(_progress_text(record), refresh=False)
                    bar.update(1)
                    if log is not None:
                        log.write(json.dumps({"type": "step", **record}) + "\n")
                        log.flush()
                    tick = time.perf_counter()
                    done = iteration + 1
                    last = args.max_steps is not None and step + 1 >= args.max_steps
                    if done < self.niter and (last or (args.ckpt_every and (step + 1) % args.ckpt_every == 0)):
                        self.save(epoch, done)
                    if last:
                        stopped_early = done < self.niter or epoch + 1 < args.epochs
                        break
                bar.close()
                if count and log is not None:
                    summary = {k: v / count for k, v in sums.items()}
                    log.write(json.dumps({"type": "epoch", "epoch": epoch, "step": steps_done, **summary,
                                          "seconds": time.perf_counter() - epoch_start}) + "\n")
                    log.flush()
                if count and iteration + 1 == self.niter:
                    self.save(epoch, self.niter)
                if stopped_early:
                    break
        finally:
            if log is not None:
                log.close()
        self.dist.barrier()
        return {"out": self.out, "checkpoint": self.ckpt_path, "log": self.log_path, "step": steps_done,
                "rank": self.dist.rank, "device": str(self.device),
                "stopped_early": stopped_early, "student": self.student_module, "teacher": self.teacher}

    def _step(self, images, ids, epoch: int, iteration: int, step: int, tick: float) -> Dict:
        args = self.args
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[step])
            if i == 0:
                group["weight_decay"] = float(self.wd_schedule[step])

        aug_start = time.perf_counter()
        batch = _to_device(images, self.device)
        views, params = self.multicrop(batch, step=step, ids=ids.to(self.device))
        self._sync()
        aug_time = time.perf_counter() - aug_start
        if args.save_params:
            self._save_params(step, epoch, ids, params)

        parts = self._loss(views, epoch)
        if self.inject is not None and self.inject[0] == step:
            name = self.inject[1]
            nan = torch.tensor(float("nan"), device=self.device)
            parts[name] = parts.get(name, parts["total"]) + nan
            parts["total"] = parts["total"] + nan
        values = self._check_finite(parts, step, epoch, iteration)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["total"]).backward()
        if args.clip_grad:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.student_module, args.clip_grad)
        cancel_last_layer_gradients(self.student_module, epoch, args.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()

        ema_update(self.teacher, self.student_module, float(self.momentum_schedule[step]))
        if self.dist.active:
            # Teacher BatchNorm statistics come from each rank's own batches; rank 0's are kept
            # everywhere so the teachers stay identical.
            for buffer in self.teacher.buffers():
                dist.broadcast(buffer, 0)
        self._sync()
        elapsed = time.perf_counter() - tick
        return {"epoch": epoch, "iteration": iteration, "step": step, **values,
                "lr": float(self.lr_schedule[step]), "wd": float(self.wd_schedule[step]),
                "momentum": float(self.momentum_schedule[step]),
                "teacher_temp": self.loss_fn.teacher_temp(epoch),
                "img_per_s": len(images) * self.dist.world_size / max(elapsed, 1e-9),
                "aug_share": aug_time / max(elapsed, 1e-9), "step_time": elapsed}


def train(args: Namespace) -> Dict:
    """Runs `clever-train` with parsed arguments; returns paths and the trained modules.
    Raises NonFiniteLoss when a loss part goes non-finite."""
    trainer = Trainer(args)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
