#!/usr/bin/env bash
# Builds the extension with its CUDA sources against the torch the GPU machines run (2.11, CUDA
# 13.0, with triton 3.6), in a venv of its own, on a machine with nvcc and no GPU; loads it;
# checks that every op has its CUDA kernel (the CUDA C++ renderer, the Triton loss launchers);
# compiles the Triton kernels to sm_90 cubin (the GPU machines' H100 / H200) with that triton
# (tools/check_triton_compile.py; `make triton-check` covers sm_80 too, with CI's triton); then
# runs the whole suite against that build, Triton interpreted. Without nvcc the extension is built for the CPU alone and the rest still runs.
#
# check_cuda_compile.sh compiles the .cu files, against the CPU wheel's headers. What it cannot
# see, and this does, before a GPU machine's time goes on it: setup.py's CUDA branch, a link or
# load failure (an undefined symbol in the CUDA objects), a missing CUDA registration, and any
# torch or triton API the GPU machines' older versions lack.
#
# numpy < 2.4 in that venv: triton 3.6's interpreter fails on every loop beside a newer numpy
# (clever_kernels/_backend.py), and the suite would skip its Triton tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON_BIN:-python3}
spec=${GPU_TORCH_SPEC:-torch==2.11.0}
venv=${GPU_TORCH_VENV:-build/gpu-torch/venv}
tree=build/gpu-torch/tree
start=$(date +%s)
packages=("$spec" "numpy<2.4" ninja pybind11 pytest scikit-learn pillow tqdm matplotlib setuptools wheel)
# a venv is reused only if an install of these very packages finished in it
stamp="$venv/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  rm -rf "$venv"
  "$PYTHON_BIN" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "${packages[@]}"
  echo "${packages[*]}" >"$stamp"
fi
py=$(cd "$venv/bin" && pwd)/python
"$py" -c "import torch, triton; print('check_gpu_torch: torch', torch.__version__, 'triton', triton.__version__)"

# The build writes clever_kernels/_C*.so in place: it gets a copy of the tree (tracked and
# untracked files, not ignored ones), so the main venv's build stays as it is.
rm -rf "$tree"
mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C "$tree"

with_cuda=0
if command -v nvcc >/dev/null; then
  with_cuda=1
  source tools/cuda_home.sh
else
  echo "check_gpu_torch: nvcc not found; building the CPU kernels alone (CI machines have it)"
fi
(cd "$tree" && TORCH_CUDA_ARCH_LIST=9.0 CLEVER_KERNELS_CUDA=$with_cuda MAX_JOBS=2 \
  "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .)
echo "check_gpu_torch: built (CUDA sources: $with_cuda) in $(( $(date +%s) - start )) s"

(cd "$tree" && WITH_CUDA=$with_cuda TRITON_INTERPRET=1 "$py" - <<'EOF'
import os

import torch
import clever_kernels
from clever_kernels import _backend
from clever_kernels.loss import _triton

ext = _backend.extension()
assert ext is not None, _backend.backends()["cpu-ext"].reason
with_cuda = os.environ["WITH_CUDA"] == "1"
assert ext.cuda_built() == with_cuda, f"clever_kernels._C: cuda_built() is {ext.cuda_built()}"
_triton.register_cuda_impls()  # what importing the loss does where a GPU is visible
for op in ("render_views", "sample_views", "dir_loss_fwd", "dir_loss_bwd", "dvr_loss_fwd", "dvr_loss_bwd"):
    for key in ("CPU", "CUDA"):
        if key == "CUDA" and op in ("render_views", "sample_views") and not with_cuda:
            continue
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"clever_kernels::{op}", key), (op, key)
print("check_gpu_torch: _C loads; its kernels and the Triton launchers are registered for every op")
# the suite skips its Triton tests where the interpreter is off: here they must run
status = _backend.backends()["triton-interpreter"]
assert status.available, f"the Triton interpreter is off: {status.reason}"
EOF
)
# sm_90 alone: about 4 minutes on CI's two cores for each architecture
(cd "$tree" && "$py" tools/check_triton_compile.py --arch 90)
# triton 3.6's interpreter warns at every loop bound it converts; the rest of its warnings stay
(cd "$tree" && TRITON_INTERPRET=1 "$py" -m pytest python_tests -q -p no:cacheprovider \
  -W "ignore:Conversion of an array with ndim > 0:DeprecationWarning")
echo "check_gpu_torch: done in $(( $(date +%s) - start )) s"
