"""Builds clever_kernels._C: the C++ CPU kernels always, the CUDA kernels when torch has CUDA and
nvcc is present (or CLEVER_KERNELS_CUDA=1 forces them, CLEVER_KERNELS_CUDA=0 skips them).

torch must already be installed: build with `pip install --no-build-isolation -e .` so pip does
not fetch a second torch into an isolated build environment.
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - only hit by a misconfigured build
    raise SystemExit(
        "clever_kernels builds against the torch already installed: install torch first, then "
        "`pip install --no-build-isolation -e .` (build isolation would hide or re-download torch)"
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    forced = os.environ.get("CLEVER_KERNELS_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions():
    if os.environ.get("CLEVER_KERNELS_NO_EXT") == "1":
        return []
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # the C++ standard is left to torch, which picks the one its headers need. No FMA contraction:
    # the augmentation maths repeats PyTorch's float operations one by one where a rounding
    # decides a nearest-neighbour pick (csrc/include/clever_kernels/augment_pixel.h). No trapping
    # maths: nothing reads floating-point exception flags, and without the flag GCC keeps the
    # selects of the per-pixel colour maths as branches, which stops those loops vectorising.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    if _want_cuda():
        return [
            CUDAExtension(
                "clever_kernels._C",
                sources + rel("csrc/cuda/*.cu"),
                include_dirs=include_dirs,
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "clever_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="clever_kernels",
    version="0.1.0",
    description="Fused GPU/CPU kernels for equivariant contrastive learning (CLeVER, DINO)",
    packages=find_packages(include=["clever_kernels", "clever_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "scikit-learn", "pillow"],
        "train": ["scikit-learn", "tqdm", "matplotlib", "pillow"],
    },
    entry_points={
        "console_scripts": [
            "clever-train = clever_kernels.train.cli:train_main",
            "clever-eval = clever_kernels.train.cli:eval_main",
            "clever-plot = clever_kernels.train.cli:plot_main",
        ]
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
