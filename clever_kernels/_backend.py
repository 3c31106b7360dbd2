"""Loading the compiled extension and deciding which kernel backends can run here.

Nothing in this module may fail at import: a machine without a GPU, without Triton or without
the built extension still imports clever_kernels and is told what is missing by `backends()`.
"""
import functools
import importlib
import os
import warnings
from typing import Dict, NamedTuple, Optional

import torch


class Backend(NamedTuple):
    available: bool
    reason: str

    def __str__(self):
        return ("on: " if self.available else "off: ") + self.reason


@functools.lru_cache(maxsize=None)
def _load_extension():
    """Returns (module or None, reason). Importing _C registers the ops with the dispatcher."""
    try:
        module = importlib.import_module("clever_kernels._C")
    except ImportError as exc:
        return None, (
            f"clever_kernels._C not importable ({exc}); build it with "
            "`pip install --no-build-isolation -e .`"
        )
    return module, "built, C++ kernels registered for CPU"


def extension():
    """The loaded extension module, or None."""
    return _load_extension()[0]


def has_extension() -> bool:
    return extension() is not None


@functools.lru_cache(maxsize=None)
def _triton_import() -> Optional[str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # triton raises more than ImportError on broken installs
        return f"triton not importable ({type(exc).__name__}: {exc})"
    return None


def triton_interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cuda_status() -> Backend:
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
        return Backend(False, why)
    ext = extension()
    if ext is None:
        return Backend(False, "CUDA device present but clever_kernels._C is not built")
    if not ext.cuda_built():
        return Backend(False, "clever_kernels._C was built without CUDA sources (no nvcc at build time)")
    return Backend(True, f"CUDA kernels built, device {torch.cuda.get_device_name()}")


def _triton_status() -> Backend:
    missing = _triton_import()
    if missing:
        return Backend(False, missing)
    if not torch.cuda.is_available():
        return Backend(False, "triton imports but there is no CUDA device")
    if triton_interpreting():
        return Backend(False, "TRITON_INTERPRET=1 is set, kernels run in the interpreter instead")
    if extension() is None:
        return Backend(False, "triton kernels register onto ops defined by clever_kernels._C, which is not built")
    return Backend(True, "triton kernels registered for CUDA tensors")


@functools.lru_cache(maxsize=None)
def _interpreter_loop_problem() -> Optional[str]:
    """Why the interpreter cannot run a loop with a runtime trip count, or None if it can.

    Every kernel here loops over K with runtime bounds. Triton 3.6's interpreter turns such bounds
    into Python ints with int() on one-element arrays, which numpy >= 2.4 refuses, so each kernel
    would fail at its first launch with an InterpreterError naming neither package; one launch of
    a one-loop kernel tells beforehand."""
    import numpy
    import triton
    import triton.language as tl

    @triton.jit
    def count_to(out_ptr, n):
        total = 0
        for _ in range(0, n):
            total += 1
        tl.store(out_ptr, total)

    # the first call may come inside a torch.func transform, which would wrap this tensor into
    # one the interpreter cannot read, and the answer is kept for the process
    with torch._C._DisableFuncTorch():
        out = torch.zeros(1, dtype=torch.int32)
    try:
        with warnings.catch_warnings(), torch._C._DisableFuncTorch():
            warnings.simplefilter("ignore")  # numpy < 2.4 only warns, and that is triton's to say
            count_to[(1,)](out, 3)
    except Exception as exc:
        return (f"triton {triton.__version__}'s interpreter cannot run a loop with a runtime trip count "
                f"beside numpy {numpy.__version__} ({type(exc).__name__}: {exc}); with numpy < 2.4, "
                "or with triton 3.9, it can")
    if out.item() != 3:
        return f"triton {triton.__version__}'s interpreter counted a 3-step loop as {out.item()}"
    return None


def _interpreter_status() -> Backend:
    missing = _triton_import()
    if missing:
        return Backend(False, missing)
    if not triton_interpreting():
        return Backend(False, "set TRITON_INTERPRET=1 before importing clever_kernels to run Triton kernels on the CPU")
    problem = _interpreter_loop_problem()
    if problem:
        return Backend(False, problem)
    return Backend(True, "Triton kernels run on CPU tensors through the interpreter (slow; for tests)")


def backends() -> Dict[str, Backend]:
    """Which kernel backends are usable here, and why not where they are off.

    Keys: "cpu-ext" (C++ CPU kernels), "cuda" (CUDA C++ kernels), "triton" (Triton on a GPU),
    "triton-interpreter" (Triton kernels on the CPU, TRITON_INTERPRET=1).
    """
    ext, why = _load_extension()
    return {
        "cpu-ext": Backend(ext is not None, why),
        "cuda": _cuda_status(),
        "triton": _triton_status(),
        "triton-interpreter": _interpreter_status(),
    }


def kernel_available(op: str, device: torch.device) -> bool:
    """Whether torch.ops.clever_kernels.<op> has a kernel for tensors on `device` here."""
    ext = extension()
    if ext is None or not hasattr(torch.ops.clever_kernels, op):
        return False
    return device.type == "cpu" or (device.type == "cuda" and ext.cuda_built())


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without the host waiting for the device: to a GPU through
    pinned memory (a non_blocking copy from pageable memory can still block inside the driver)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
