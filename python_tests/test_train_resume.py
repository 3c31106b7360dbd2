"""Robustness: a run stopped mid-epoch (by --max-steps or by SIGKILL) and resumed reaches the
same weights, bit for bit, as an uninterrupted run; a non-finite loss stops the run naming the
step and the loss part and leaves the last good checkpoint intact."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from clever_kernels.train.checkpoint import load_checkpoint
from clever_kernels.train.cli import EXIT_NON_FINITE, train_main
from train_helpers import REPO, TINY_RUN, assert_state_equal, cli_env

STEPS_PER_EPOCH = 4  # 32 training images, batches of 8
EPOCHS = 3
COMPARED = ("student", "teacher", "optimizer", "loss", "scaler")


def _argv(digits_folder, out, *extra):
    return TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", str(EPOCHS), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train_main(_argv(digits_folder, out)) == 0
    return out


@pytest.fixture(scope="module")
def reference(uninterrupted):
    return load_checkpoint(str(uninterrupted / "checkpoint.pt"))


def _epoch_records(out):
    """The epoch records of a run's log without their wall-clock time."""
    records = [json.loads(line) for line in open(out / "log.jsonl") if '"type": "epoch"' in line]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _assert_same_as(reference, out, uninterrupted=None):
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == reference["step"] == EPOCHS * STEPS_PER_EPOCH
    for key in COMPARED:
        assert_state_equal(reference[key], state[key], key)
    steps = [json.loads(line)["step"] for line in open(out / "log.jsonl") if '"type": "step"' in line]
    assert steps == list(range(EPOCHS * STEPS_PER_EPOCH)), "replayed steps must replace their first records"
    if uninterrupted is not None:
        # the resumed epoch's record averages its steps from before the stop too
        assert _epoch_records(out) == _epoch_records(uninterrupted)


def test_stop_mid_epoch_then_resume(digits_folder, reference, uninterrupted, tmp_path):
    assert train_main(_argv(digits_folder, tmp_path, "--max-steps", "6", "--ckpt-every", "4")) == 0
    stopped = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert (stopped["epoch"], stopped["iteration"], stopped["step"]) == (1, 2, 6)
    assert train_main(_argv(digits_folder, tmp_path, "--resume")) == 0
    _assert_same_as(reference, tmp_path, uninterrupted)


def test_kill_then_resume(digits_folder, reference, tmp_path):
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "clever_kernels.train",
                             *_argv(digits_folder, tmp_path, "--ckpt-every", "3")],
                            cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300  # generous: a loaded machine runs the subprocess several times slower
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and sum(1 for line in open(log) if '"type": "step"' in line) >= 7:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before the kill: {proc.stderr.read()}"
    proc.stderr.close()
    killed = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert 6 <= killed["step"] < EPOCHS * STEPS_PER_EPOCH
    assert train_main(_argv(digits_folder, tmp_path, "--resume")) == 0
    _assert_same_as(reference, tmp_path)


def _finite(state):
    return all(torch.isfinite(t).all() for t in state["student"].values() if t.is_floating_point())


def test_nan_stops_and_keeps_last_good_checkpoint(digits_folder, reference, tmp_path, capsys):
    code = train_main(_argv(digits_folder, tmp_path, "--ckpt-every", "1", "--inject-nan", "5:DVR"))
    assert code == EXIT_NON_FINITE
    message = capsys.readouterr().err
    assert "step 5" in message and "DVR = nan" in message and "checkpoint" in message
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["step"] == 5 and _finite(state)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl") if '"type": "step"' in line]
    assert steps == [0, 1, 2, 3, 4]
    # the kept checkpoint is the true state after step 4: resuming from it finishes the run exactly
    assert train_main(_argv(digits_folder, tmp_path, "--resume")) == 0
    _assert_same_as(reference, tmp_path)


def test_nan_before_any_checkpoint_says_so(digits_folder, tmp_path, capsys):
    assert train_main(_argv(digits_folder, tmp_path, "--inject-nan", "1:DIR")) == EXIT_NON_FINITE
    message = capsys.readouterr().err
    assert "no checkpoint had been written yet" in message and not (tmp_path / "checkpoint.pt").exists()


def test_divergence_is_caught(digits_folder, tmp_path, capsys):
    code = train_main(_argv(digits_folder, tmp_path, "--ckpt-every", "1", "--lr", "1e37", "--warmup-epochs", "0"))
    assert code == EXIT_NON_FINITE
    message = capsys.readouterr().err
    assert "non-finite" in message and "step" in message
    assert any(part in message for part in ("total", "DIR", "DVR", "reg", "weights"))
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert _finite(state)


def test_out_holding_a_run(digits_folder, uninterrupted, tmp_path, capsys):
    """A fresh run in an --out that holds a run is refused (it would replace the checkpoint and
    append to the log); --overwrite starts afresh there; a --resume that finds no checkpoint
    starts afresh with a fresh log."""
    out = tmp_path / "held"
    out.mkdir()
    for name in ("checkpoint.pt", "log.jsonl"):
        (out / name).write_bytes((uninterrupted / name).read_bytes())
    assert train_main(_argv(digits_folder, out, "--max-steps", "2")) == 2
    assert "already holds a run (checkpoint.pt, log.jsonl)" in capsys.readouterr().err
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == EPOCHS * STEPS_PER_EPOCH, "left as it was"
    assert train_main(_argv(digits_folder, out, "--max-steps", "2", "--overwrite")) == 0
    steps = [json.loads(line)["step"] for line in open(out / "log.jsonl") if '"type": "step"' in line]
    assert steps == [0, 1] and load_checkpoint(str(out / "checkpoint.pt"))["step"] == 2
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "log.jsonl").write_bytes((uninterrupted / "log.jsonl").read_bytes())  # a run stopped before its first checkpoint
    assert train_main(_argv(digits_folder, stale, "--max-steps", "2", "--resume")) == 0
    steps = [json.loads(line)["step"] for line in open(stale / "log.jsonl") if '"type": "step"' in line]
    assert steps == [0, 1]


@pytest.mark.parametrize("extra, named", [(["--width", "16"], "--width"), (["--lr", "0.003"], "--lr"),
                                          (["--aug-set", "degrees=(0, 0)"], "--aug-set"),
                                          (["--global-size", "24"], "--global-size")])
def test_resume_refuses_another_recipe(digits_folder, tmp_path, capsys, extra, named):
    assert train_main(_argv(digits_folder, tmp_path, "--max-steps", "2")) == 0
    assert train_main(_argv(digits_folder, tmp_path, "--resume", *extra)) == 2
    message = capsys.readouterr().err
    assert "trained with other options: " in message and f"{named} " in message, message
    # how it runs may change: the precision (float rounding only), the workers, the step limit
    assert train_main(_argv(digits_folder, tmp_path, "--resume", "--precision", "bf16", "--num-workers", "0",
                            "--max-steps", "3")) == 0
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 3


def test_relative_data_path_is_recorded_absolute(digits_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(digits_folder))
    relative = os.path.basename(digits_folder)
    assert train_main(_argv(relative, tmp_path, "--max-steps", "1")) == 0
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["args"]["data"] == os.path.abspath(digits_folder)
    assert train_main(_argv(digits_folder + os.sep, tmp_path, "--max-steps", "2", "--resume")) == 0
    # a checkpoint written before, which recorded the folder as typed, resumes as typed
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    state["args"]["data"] = relative
    torch.save(state, tmp_path / "checkpoint.pt")
    assert train_main(_argv(relative, tmp_path, "--max-steps", "3", "--resume")) == 0


def test_resume_and_overwrite_never_mix_runs(digits_folder, tmp_path, capsys):
    """A resume from another folder's checkpoint refuses an --out that holds a run; --overwrite
    removes nothing until every option has been checked, then removes all of the earlier run
    (its evaluations and recorded parameters included); an --aug-set spelt otherwise is the
    same recipe."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(_argv(digits_folder, a, "--max-steps", "2", "--aug-set", "flip_p=0.5", "--aug-set", "degrees=(-9, 9)")) == 0
    assert train_main(_argv(digits_folder, b, "--max-steps", "2", "--save-params")) == 0
    assert train_main(_argv(digits_folder, b, "--max-steps", "3", "--resume", str(a / "checkpoint.pt"))) == 2
    assert "holds another run" in capsys.readouterr().err
    (b / "eval_teacher.json").write_text("{}")
    before = sorted(os.listdir(b))
    assert train_main(_argv(str(tmp_path / "nowhere"), b, "--overwrite")) == 2
    assert "nowhere" in capsys.readouterr().err and sorted(os.listdir(b)) == before
    assert train_main(_argv(digits_folder, b, "--max-steps", "1", "--overwrite")) == 0
    assert sorted(os.listdir(b)) == ["args.json", "checkpoint.pt", "log.jsonl"]
    # only what the trainer and clever-eval write is removed, never a user's file
    mine = tmp_path / "mine"
    (mine / "params").mkdir(parents=True)
    (mine / "params" / "notes.txt").write_text("keep")
    (mine / "model.pt").write_text("keep")
    assert train_main(_argv(digits_folder, mine, "--max-steps", "1", "--resume", "--save-params")) == 0
    assert (mine / "params" / "notes.txt").read_text() == "keep" and (mine / "model.pt").exists()
    assert train_main(_argv(digits_folder, mine, "--max-steps", "1", "--overwrite")) == 0
    assert sorted(os.listdir(mine / "params")) == ["notes.txt"]
    # rolling back to an older checkpoint of the same run, kept in its folder
    (b / "checkpoint.pt").rename(b / "step1.pt")
    assert train_main(_argv(digits_folder, b, "--max-steps", "2", "--resume", str(b / "step1.pt"))) == 0
    (tmp_path / "a_file").write_text("x")
    assert train_main(_argv(digits_folder, tmp_path / "a_file")) == 2
    assert "is a file" in capsys.readouterr().err
    evaluated = tmp_path / "evaluated"  # an evaluation's results alone are a run's too
    evaluated.mkdir()
    (evaluated / "eval_student.md").write_text("old")
    assert train_main(_argv(digits_folder, evaluated, "--max-steps", "1")) == 2
    assert "already holds a run (eval_student.md)" in capsys.readouterr().err
    assert train_main(_argv(digits_folder, a, "--max-steps", "3", "--resume", "--aug-set", "degrees=(-9,9)",
                            "--aug-set", "flip_p=0.5")) == 0


def test_new_checkpoint_drops_only_the_evaluations_it_replaces(digits_folder, tmp_path, capsys):
    """An evaluation of the run's checkpoint file at an earlier step describes weights that a new
    checkpoint replaced: it goes (json, md and png) once that checkpoint is written, not before (a
    resume with nothing left to train keeps it). An evaluation of another checkpoint kept beside
    it stays, and so do the parameter records of the replayed steps, whose draws the replay
    repeats."""
    import shutil

    out = tmp_path / "run"
    assert train_main(_argv(digits_folder, out, "--max-steps", "2", "--save-params")) == 0
    shutil.copy(out / "checkpoint.pt", out / "early.pt")
    for which, checkpoint in (("teacher", out / "checkpoint.pt"), ("student", out / "early.pt")):
        (out / f"eval_{which}.json").write_text(json.dumps({"checkpoint": str(checkpoint), "step": 2}))
        (out / f"eval_{which}.md").write_text("table")
    assert train_main(_argv(digits_folder, out, "--max-steps", "2", "--resume")) == 0  # nothing left to train
    assert (out / "eval_teacher.json").exists()
    capsys.readouterr()
    assert train_main(_argv(digits_folder, out, "--max-steps", "3", "--resume")) == 0
    assert sorted(p.name for p in out.glob("eval_*")) == ["eval_student.json", "eval_student.md"]
    assert f"removed eval_teacher.json, eval_teacher.md, the evaluation of {out / 'checkpoint.pt'} at step 2" \
        in capsys.readouterr().err
    assert sorted(os.listdir(out / "params")) == ["step00000000.pt", "step00000001.pt"]
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 3
