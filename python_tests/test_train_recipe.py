"""The training step against DINO's / CLeVER's recipe (SPEC.md): one call of the trainer's step
at chosen (epoch, step) checked against values computed here from the recipe, not read back
from the trainer: linearly scaled lr with warm-up then cosine, cosine weight decay on weights
only, per-parameter gradient clipping, prototypes frozen in the first epoch, the teacher fed the
two global views and following the student by EMA with the cosine momentum schedule, and the
loss parts L_DIR, L_DVR, | ||theta_1||^2 - ||theta_2||^2 |. Also: a resume restores the grad
scaler and the RNG, checkpoints are written atomically, a non-finite part is named."""
import copy
import json
import math
import random
import time

import numpy as np
import pytest
import torch

from clever_kernels.reference import loss as ref
from clever_kernels.train import checkpoint as ckpt_io
from clever_kernels.train.checkpoint import load_checkpoint
from clever_kernels.train.cli import train_main, train_parser
from clever_kernels.train.trainer import NonFiniteLoss, Trainer, _to_device
from train_helpers import TINY_RUN, assert_state_equal

EPOCHS, NITER = 3, 4  # 32 training images in batches of 8
LR, MIN_LR, MOMENTUM, WD, WD_END, CLIP, REG = 0.002, 1e-5, 0.99, 0.04, 0.4, 1e-6, 0.5


def _trainer(digits_folder, out, *extra):
    argv = TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", str(EPOCHS), "--out", str(out),
                       "--lr", str(LR), "--min-lr", str(MIN_LR), "--warmup-epochs", "1",
                       "--momentum-teacher", str(MOMENTUM), "--weight-decay", str(WD), "--weight-decay-end",
                       str(WD_END), "--clip-grad", str(CLIP), "--freeze-last-layer", "1", "--reg-lambd", str(REG),
                       *extra]
    return Trainer(train_parser().parse_args(argv))


def _cosine(base, final, k, n):
    """DINO's half cosine from base (k = 0) towards final over n iterations."""
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * k / n))


def _expected_lr(step):
    peak = LR * 8 / 256  # linear scaling: --lr is for a total batch of 256, one rank of 8 here
    warmup = NITER  # one warm-up epoch, DINO's linear ramp from 0 whose last value is the peak
    if step < warmup:
        return peak * step / (warmup - 1)
    return _cosine(peak, MIN_LR, step - warmup, EPOCHS * NITER - warmup)


def _expected_parts(trainer, batch, ids, step, epoch):
    """L_DIR, L_DVR (the authors' reference loss on the teacher's two global views) and the
    head-norm gap over every head parameter, from the networks as they are before the step."""
    views, _ = trainer.multicrop(batch, step=step, ids=ids)
    args = trainer.args
    with torch.no_grad():
        t_ir, t_ef = trainer.teacher(views[:2])
        s_ir, s_ef = trainer.student_module(views)
        _, l_dir, l_dvr, _, _ = ref.clever_loss(s_ir.double(), s_ef.double(), t_ir.double(), t_ef.double(),
                                                trainer.loss_fn.center.double(), trainer.loss_fn.center2.double(),
                                                2 + args.n_local, args.student_temp, args.teacher_temp,
                                                args.sep_lambd)
        squares = [sum(float(p.double().pow(2).sum()) for _, p in head.named_parameters())
                   for head in trainer.student_module.heads]
    reg = abs(squares[0] - squares[1])
    return {"DIR": float(l_dir), "DVR": float(l_dvr), "reg": reg,
            "total": float(l_dir) + args.sep_lambd * float(l_dvr) + REG * reg}


def _run_step(trainer, epoch, iteration):
    step = epoch * NITER + iteration
    with torch.no_grad():  # a teacher that has drifted from the student, as it does over training
        for p in trainer.teacher.heads[1].parameters():
            p.mul_(1.5)
    images, _, ids = next(iter(trainer.loader))
    # the batch as the step itself builds it (stacked where every image has one size)
    expected = _expected_parts(trainer, _to_device(images, trainer.device), ids, step, epoch)
    student0 = copy.deepcopy(trainer.student_module.state_dict())
    teacher0 = copy.deepcopy(trainer.teacher.state_dict())
    record = trainer._step(images, ids, epoch, iteration, step, time.perf_counter())
    return step, record, expected, student0, teacher0


def _check_step(trainer, epoch, iteration):
    step, record, expected, student0, teacher0 = _run_step(trainer, epoch, iteration)
    for name, value in expected.items():
        assert record[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
            f"step {step}: {name} = {record[name]}, the recipe gives {value}")

    decay, no_decay = trainer.optimizer.param_groups
    total = EPOCHS * NITER
    for group in (decay, no_decay):
        assert group["lr"] == pytest.approx(_expected_lr(step), rel=1e-9), f"step {step}: lr"
    assert decay["weight_decay"] == pytest.approx(_cosine(WD, WD_END, step, total), rel=1e-9), \
        f"step {step}: weight decay of the weights"
    assert no_decay["weight_decay"] == 0.0, "biases and norm parameters must not be decayed"

    # per-parameter clipping: AdamW's first moment after one step is (1 - beta1) * the clipped gradient
    beta1 = decay["betas"][0]
    for name, p in trainer.student_module.named_parameters():
        state = trainer.optimizer.state.get(p)
        if state and "exp_avg" in state and int(state["step"]) == 1:
            norm = float(state["exp_avg"].norm()) / (1 - beta1)
            assert norm <= CLIP * (1 + 1e-3), f"{name}: gradient norm {norm:.3e} above --clip-grad {CLIP}"

    # prototypes frozen in the first epoch (--freeze-last-layer 1), learnt afterwards
    student = trainer.student_module.state_dict()
    for key in ("heads.0.last_layer.weight_v", "heads.1.last_layer.weight_v"):
        moved = not torch.equal(student[key], student0[key])
        assert moved == (epoch >= 1), f"epoch {epoch}: {key} {'moved' if moved else 'stayed'}"
    assert not torch.equal(student["backbone.patch_embed.weight"], student0["backbone.patch_embed.weight"])

    # teacher <- m * teacher + (1 - m) * student, m on the cosine from --momentum-teacher to 1
    m = _cosine(MOMENTUM, 1.0, step, total)
    assert record["momentum"] == pytest.approx(m, rel=1e-12)
    teacher = trainer.teacher.state_dict()
    for key, before in teacher0.items():
        want = m * before.double() + (1 - m) * student[key].double()
        torch.testing.assert_close(teacher[key].double(), want, rtol=1e-5, atol=1e-7,
                                   msg=lambda text: f"step {step}, teacher {key}: {text}")


def test_teacher_starts_as_the_student(digits_folder, tmp_path):
    trainer = _trainer(digits_folder, tmp_path)
    assert_state_equal(trainer.student_module.state_dict(), trainer.teacher.state_dict(), "teacher at init")
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


def test_step_in_warmup_epoch_follows_the_recipe(digits_folder, tmp_path):
    # epoch 0, last iteration: lr still on the ramp, prototypes frozen
    _check_step(_trainer(digits_folder, tmp_path), epoch=0, iteration=3)


def test_step_after_warmup_follows_the_recipe(digits_folder, tmp_path):
    # epoch 1: lr on the cosine, prototypes learnt; the schedules are indexed by the global step
    _check_step(_trainer(digits_folder, tmp_path), epoch=1, iteration=1)


def test_resume_restores_grad_scaler_and_rng(digits_folder, tmp_path):
    argv = TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", "2", "--precision", "fp16",
                       "--out", str(tmp_path)]
    assert train_main(argv + ["--max-steps", "2"]) == 0
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["scaler"], "fp16 runs checkpoint their grad scaler"
    # this tiny run draws nothing from the global torch RNG after seeding; a checkpoint taken
    # after something did (dropout, drop-path) holds an advanced state, which is what we restore
    state["rng"]["torch"] = torch.Generator().manual_seed(777).get_state()
    ckpt_io.atomic_save(state, str(tmp_path / "checkpoint.pt"))
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)
    trainer = Trainer(train_parser().parse_args(argv + ["--resume"]))
    assert (trainer.start_epoch, trainer.start_iter) == (0, 2)
    assert_state_equal(state["scaler"], trainer.scaler.state_dict(), "grad scaler after resume")
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"]), "torch RNG not restored"
    saved_np, now_np = state["rng"]["numpy"], np.random.get_state()
    assert saved_np[0] == now_np[0] and np.array_equal(saved_np[1], now_np[1]) and saved_np[2:] == now_np[2:], \
        "numpy RNG not restored"
    assert random.getstate() == state["rng"]["python"], "python RNG not restored"


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt_io.atomic_save({"step": 1, "w": torch.arange(4.0)}, str(path))
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):  # a crash (disk full, kill) halfway through the write
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a checkpoint")
        else:
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space"):
        ckpt_io.atomic_save({"step": 2, "w": torch.zeros(4)}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    kept = load_checkpoint(str(path))
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(4.0)), "the old checkpoint was torn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"], "a temporary file was left behind"


@pytest.mark.parametrize("part", ["DIR", "DVR", "reg"])
def test_non_finite_part_is_named(digits_folder, tmp_path, part):
    trainer = _trainer(digits_folder, tmp_path)
    parts = {"total": torch.tensor(float("nan")), "DIR": torch.tensor(1.5), "DVR": torch.tensor(0.25),
             "reg": torch.tensor(3.0)}
    parts[part] = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteLoss, match=f"step 9 .*{part} = inf"):
        trainer._check_finite(parts, 9, 2, 1)


def test_checkpoint_refuses_non_finite_weights(digits_folder, tmp_path):
    trainer = _trainer(digits_folder, tmp_path)
    trainer.save(0, 1)
    good = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    with torch.no_grad():
        trainer.student_module.heads[0].mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite student weights"):
        trainer.save(0, 2)
    kept = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert kept["step"] == good["step"] == 1, "the last good checkpoint was overwritten"
    assert_state_equal(good["student"], kept["student"], "student")


def test_resume_from_an_epoch_boundary(digits_folder, tmp_path):
    """A run stopped after a whole epoch checkpoints the start of the next one (epoch + 1,
    iteration 0); resuming from it runs the remaining epochs' steps, each once."""
    argv = TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", "2", "--out", str(tmp_path)]
    assert train_main(argv + ["--max-steps", str(NITER)]) == 0
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert (state["epoch"], state["iteration"], state["step"]) == (1, 0, NITER)
    assert train_main(argv + ["--resume"]) == 0
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert (state["epoch"], state["iteration"], state["step"]) == (2, 0, 2 * NITER)
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(2 * NITER))
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]


@pytest.mark.parametrize("field, value, match", [("warmup_epochs", EPOCHS + 1, "--warmup-epochs must be in"),
                                                 ("warmup_epochs", -1.0, "--warmup-epochs must be in"),
                                                 ("method", "byol", "--method must be"),
                                                 ("lr", -1e-3, r"--lr must be >= 0.0, got -0.001"),
                                                 ("min_lr", float("nan"), "--min-lr must be"),
                                                 ("momentum_teacher", 1.5, r"--momentum-teacher must be in \[0.0, 1.0\]"),
                                                 ("n_local", -1, "--n-local must be >= 0"),
                                                 ("clip_grad", -1.0, "--clip-grad must be >= 0.0"),
                                                 ("weight_decay_end", -0.1, "--weight-decay-end must be"),
                                                 ("freeze_last_layer", -1, "--freeze-last-layer must be"),
                                                 ("num_workers", -2, "--num-workers must be"),
                                                 ("ckpt_every", -5, "--ckpt-every must be"),
                                                 ("reg_lambd", float("inf"), "--reg-lambd must be"),
                                                 ("sep_lambd", float("nan"), "--sep-lambd must be finite"),
                                                 ("warmup_teacher_temp_epochs", -1,
                                                  "--warmup-teacher-temp-epochs must be >= 0"),
                                                 ("batch_size", 10**6, "do not fill one batch.*lower --batch-size")])
def test_out_of_range_config_is_refused(digits_folder, tmp_path, field, value, match):
    """What the command line's own checks cannot catch, for a namespace built in code."""
    args = train_parser().parse_args(TINY_RUN + ["--data", digits_folder, "--epochs", str(EPOCHS), "--out", str(tmp_path)])
    setattr(args, field, value)
    with pytest.raises(ValueError, match=match):
        Trainer(args)
