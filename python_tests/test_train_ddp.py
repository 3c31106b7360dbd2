"""Two gloo ranks on the CPU, started as torchrun would start them: after a few steps both
ranks hold the same teacher (the EMA of a student kept identical by DDP, BatchNorm statistics
taken from rank 0) and only rank 0 writes the checkpoint."""
import os

import pytest
import torch

from clever_kernels.train.checkpoint import load_checkpoint
from train_helpers import TINY_RESNET_RUN, TINY_RUN, assert_state_equal, run_two_ranks


@pytest.mark.parametrize("model", [TINY_RUN, TINY_RESNET_RUN], ids=["vit", "resnet-bn"])
def test_two_ranks_hold_identical_teachers(model, digits_folder, tmp_path):
    out = tmp_path / "run"
    argv = model + ["--method", "clever", "--data", digits_folder, "--epochs", "2", "--out", str(out)]
    ranks = run_two_ranks(argv, tmp_path)
    # 32 images over 2 ranks in batches of 8: 2 steps per epoch
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert_state_equal(ranks[0]["teacher"], ranks[1]["teacher"], "teacher")
    # DDP syncs the student's BatchNorm statistics from rank 0 at the start of each forward, so
    # after the last step they still hold each rank's own batch; the weights must agree.
    weights = [{k: v for k, v in r["student"].items() if "running_" not in k and "num_batches" not in k}
               for r in ranks]
    assert_state_equal(weights[0], weights[1], "student")
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["world_size"] == 2 and state["step"] == 4
    assert_state_equal(state["teacher"], ranks[0]["teacher"], "checkpointed teacher")
    # the centres were updated from both ranks' teacher rows
    assert float(state["loss"]["center"].abs().sum()) > 0
    assert not any(torch.equal(state["teacher"][k], state["student"][k]) for k in state["teacher"]
                   if k.endswith("weight_v"))
    assert [name for name in os.listdir(out) if name.startswith("checkpoint")] == ["checkpoint.pt"]
