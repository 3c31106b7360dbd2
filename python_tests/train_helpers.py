"""Shared pieces of the trainer tests: a tiny on-disk ImageFolder cut from the digits, the
argument list of a seconds-long training run, and a two-rank launcher."""
import os
import socket
import subprocess
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A network small enough that a step takes milliseconds on a CPU; every code path (two heads,
# multi-crop at two resolutions, position-embedding interpolation) is still exercised.
_TINY_HEADS = ["--out-dim", "48", "--dvr-out-dim", "40", "--head-hidden", "32", "--head-bottleneck", "16"]
_TINY_STEPS = ["--aug", "caug", "--global-size", "32", "--local-size", "16", "--n-local", "2", "--batch-size", "8",
               "--lr", "0.001", "--warmup-epochs", "1", "--num-workers", "0", "--no-progress", "--deterministic"]
TINY_RUN = ["--arch", "vit_tiny", "--width", "32", "--depth", "1", "--patch-size", "8"] + _TINY_HEADS + _TINY_STEPS
# The same with a ResNet-18 of 4 channels in its first stage, for the BatchNorm paths.
TINY_RESNET_RUN = ["--arch", "resnet18", "--width", "4"] + _TINY_HEADS + _TINY_STEPS
# The comparison (clever_kernels.train.compare) at toy size: its options over its own recipe.
TINY_COMPARISON = (["--epochs", "1", "--batch-size", "8", "--arch", "vit_tiny", "--width", "32", "--depth", "1",
                    "--patch-size", "8"] + _TINY_HEADS + ["--n-local", "2", "--no-progress"])


def make_image_folder(root, per_class=6, classes=4, ragged=True):
    """root/<class>/<i>.png from the digits (a single tree, split 80/20 by the loader).
    With ragged, every third image is padded to a non-square size so batches mix sizes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for cls in range(classes):
        folder = os.path.join(root, f"class{cls}")
        os.makedirs(folder, exist_ok=True)
        members = np.flatnonzero(bunch.target == cls)[:per_class]
        for i, index in enumerate(members):
            image = Image.fromarray((bunch.images[index] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BICUBIC)
            if ragged and i % 3 == 2:
                canvas = Image.new("L", (36, 40))
                canvas.paste(image, (2, 4))
                image = canvas
            image.convert("RGB").save(os.path.join(folder, f"{i}.png"))
    return str(root)


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(module, argv, timeout=300, **kwargs):
    """Runs `python -m module argv` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_worker(rank, world, port, argv, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from clever_kernels.train.cli import train_parser
    from clever_kernels.train.trainer import train

    result = train(train_parser().parse_args(argv))
    torch.save({"teacher": result["teacher"].state_dict(), "student": result["student"].state_dict(),
                "step": result["step"]}, os.path.join(result_dir, f"rank{rank}.pt"))


def run_two_ranks(argv, result_dir, timeout=300):
    """Trains with `argv` on two gloo ranks (spawned processes, as torchrun would start them);
    returns each rank's final {"teacher", "student", "step"}. A rank that hangs fails the test
    after `timeout` seconds instead of blocking the suite."""
    import time

    import torch.multiprocessing as mp

    argv = list(argv) + ["--dist-timeout", str(timeout)]
    context = mp.start_processes(_rank_worker, args=(2, free_port(), argv, str(result_dir)), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"two-rank training did not finish in {timeout} s")
    return [torch.load(os.path.join(result_dir, f"rank{r}.pt")) for r in range(2)]


def assert_state_equal(a, b, what=""):
    """Bit-for-bit equality of two (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, what
        assert torch.equal(a, b), f"{what} differs (max abs diff {(a.double() - b.double()).abs().max():.3e})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{what}: keys {sorted(set(a) ^ set(b))} differ"
        for key in a:
            assert_state_equal(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"
