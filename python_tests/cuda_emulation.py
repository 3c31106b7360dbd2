"""Builds csrc/testing/*_emulated.cpp: the CUDA kernels of render_views and sample_views compiled
for the CPU and run one block at a time with a fiber per thread (csrc/testing/simt.h), so the
tests execute the GPU code where no GPU is present. About 10 s to compile on two cores, once per
process (torch's extension cache keeps the build between runs)."""
import os
from functools import lru_cache

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@lru_cache(maxsize=None)
def ops():
    """torch.ops.clever_kernels_testing, compiled on first use: render_views and sample_views (the
    arguments and results of the torch.ops.clever_kernels ops of those names, CPU tensors only)
    and simt.h's self-tests."""
    from torch.utils import cpp_extension
    cpp_extension.load(
        name="clever_kernels_cuda_emulation",
        sources=[os.path.join(ROOT, "csrc", "testing", name)
                 for name in ("render_views_emulated.cpp", "sample_views_emulated.cpp", "simt_selftest.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc", "include")],
        # the flags the CPU kernels build with (setup.py): the nearest rotation's tie-breaking
        # needs unfused multiply-adds
        extra_cflags=["-O2", "-ffp-contract=off", "-fno-trapping-math"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.clever_kernels_testing


def render_views_op():
    return ops().render_views
