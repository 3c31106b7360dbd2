"""A few training steps of each method on a tiny ImageFolder of real digits: the loss is
finite, and the checkpoint, the log and the captured augmentation parameters are written."""
import json
import math
import os

import pytest
import torch

from clever_kernels.train.checkpoint import load_checkpoint
from clever_kernels.train.cli import train_main
from train_helpers import TINY_RUN, run_cli


@pytest.mark.parametrize("method", ["dino", "clever"])
def test_few_steps(method, digits_folder, tmp_path):
    out = tmp_path / method
    code = train_main(TINY_RUN + ["--method", method, "--data", digits_folder, "--epochs", "2", "--max-steps", "3",
                                  "--save-params", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2]
    parts = ("total", "DIR", "DVR", "reg") if method == "clever" else ("total", "DIR")
    for r in steps:
        assert all(math.isfinite(r[p]) for p in parts)
        assert 0 <= r["aug_share"] <= 1 and r["img_per_s"] > 0 and r["lr"] >= 0
    assert ("DVR" in steps[0]) == (method == "clever")

    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 3 and state["epoch"] == 0 and state["iteration"] == 3
    assert set(state) >= {"student", "teacher", "optimizer", "loss", "scaler", "rng", "args"}
    assert ("center2" in state["loss"]) == (method == "clever")
    assert state["args"]["method"] == method

    files = sorted(os.listdir(out / "params"))
    assert files == ["step00000000.pt", "step00000001.pt", "step00000002.pt"]
    record = torch.load(out / "params" / files[1])
    assert record["step"] == 1 and record["ids"].shape == (8,)
    assert len(record["views"]) == 4 and record["sizes"] == [32, 32, 16, 16]
    angle = record["columns"].index("angle")
    assert record["views"][0].shape == (8, len(record["columns"]))
    # CAug rotates every view by an angle in (-90, 90)
    angles = torch.cat([v[:, angle] for v in record["views"]])
    assert angles.abs().max() <= 90 and angles.abs().min() > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision(precision, digits_folder, tmp_path):
    assert train_main(TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", "1", "--max-steps", "2",
                                  "--precision", precision, "--num-workers", "1", "--out", str(tmp_path)]) == 0
    steps = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"type": "step"' in line]
    assert len(steps) == 2 and all(math.isfinite(r["total"]) for r in steps)
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert all(t.dtype == torch.float32 for t in state["student"].values() if t.is_floating_point())
    assert bool(state["scaler"]) == (precision == "fp16")


def test_module_entry_point(digits_folder, tmp_path):
    done = run_cli("clever_kernels.train", TINY_RUN + ["--method", "clever", "--data", digits_folder, "--epochs", "1",
                                                       "--max-steps", "1", "--out", str(tmp_path / "cli")])
    assert done.returncode == 0, done.stderr
    assert os.path.exists(tmp_path / "cli" / "checkpoint.pt")
    assert "--method" in run_cli("clever_kernels.train", ["--help"]).stdout
    # the evaluation and the plot have module forms too, for where console scripts are not on PATH
    assert "--which" in run_cli("clever_kernels.train.evaluate", ["--help"]).stdout
    assert "runs" in run_cli("clever_kernels.train.plot", ["--help"]).stdout


def test_saved_params_read_back_with_elastic(digits_folder, tmp_path):
    # CAug+ draws elastic samples, whose 32-bit seeds a float32 table would round
    from clever_kernels.augment import AugParams
    out = tmp_path / "caugplus"
    assert train_main(TINY_RUN + ["--method", "clever", "--aug", "caug+", "--data", digits_folder, "--epochs", "1",
                                  "--max-steps", "1", "--save-params", "--out", str(out)]) == 0
    record = torch.load(out / "params" / "step00000000.pt")
    elastic = record["columns"].index("elastic")
    assert any(bool((v[:, elastic] != 0).any()) for v in record["views"]), "no elastic sample in 32 draws"
    for v, table in enumerate(record["views"]):
        assert table.dtype == torch.float64
        params = AugParams.from_tensor(table, record["sizes"][v], v, record["elastic_alpha"][v],
                                       record["elastic_sigma"][v])
        assert torch.equal(params.to_tensor(torch.float64), table), f"view {v} does not read back"
        assert params.elastic_alpha > 0 and params.elastic_sigma > 0
