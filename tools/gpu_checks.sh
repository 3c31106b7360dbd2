#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a CUDA machine whose python already has torch,
# triton, nvcc, ninja, pytest, pytest-xdist, pillow and scikit-learn (no registry needed):
#   1. builds the extension against that torch (CUDA sources for the local GPU's architecture);
#   2. prints which backends are on;
#   3. runs the GPU tests (python_tests/test_gpu.py, the CUDA sampler test), Triton compiled;
#   4. runs the whole CPU suite as CI does (Triton interpreted), against this machine's torch and
#      triton versions;
#   5. runs both benchmarks on the GPU (bench/results/*-<gpu>.{md,json}).
# Each step has its own time limit and appends to one log, so a step that fails or runs out of
# time still leaves the others' results. Output: $OUT (default gpu-checks/): gpu_checks.log and
# the benchmark result files, ready to commit.
#
#   bash tools/gpu_checks.sh                  # everything (about 6-8 minutes on an H200)
#   STEPS="build tests" bash tools/gpu_checks.sh
# Where one command may run 10 minutes at most, run it in two: STEPS="build backends tests suite",
# then STEPS="bench" on the same machine (the build stays in the tree and in the installed package).
#
# Kornia (the augmentation benchmark's GPU baseline) is used when it imports; where the machine
# has no registry, `make gpu-wheels` (on a machine with one) puts its wheels in .whl/, and
# WHEELS=.whl bash tools/gpu_checks.sh installs them into a scratch folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
log="$out/gpu_checks.log"
py=${PYTHON:-python3}
steps=${STEPS:-build backends tests suite bench}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name: $*" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "gpu_checks: $name rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$log"
}

wants() { [[ " $steps " == *" $1 "* ]]; }

: >"$log"
if [ -n "${WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_checks_site "$WHEELS"/*.whl >>"$log" 2>&1
  export PYTHONPATH=/tmp/gpu_checks_site${PYTHONPATH:+:$PYTHONPATH}
fi
arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>>"$log") || {
  echo "gpu_checks: $py sees no CUDA device (details in $log)"
  exit 1
}
wants build && step build 400 env TORCH_CUDA_ARCH_LIST="$arch" "$py" -m pip install --no-deps --no-build-isolation -e .
wants backends && step backends 60 "$py" -m clever_kernels
workers=()
"$py" -c "import xdist" 2>/dev/null && workers=(-n 4)
if wants tests; then
  step tests 400 "$py" -m pytest python_tests/test_gpu.py python_tests/test_augment_sampler.py -q -rs \
    -p no:cacheprovider "${workers[@]}"
fi
if wants suite; then
  # one process: the two-rank and kill/resume tests start processes of their own
  step suite 400 env TRITON_INTERPRET=1 "$py" -m pytest python_tests -q -p no:cacheprovider \
    --ignore=python_tests/test_gpu.py
fi
if wants bench; then
  step bench-loss 300 "$py" -m bench loss --device cuda
  step bench-augment 300 "$py" -m bench augment --device cuda
  tag=$("$py" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower())")
  cp bench/results/*-"$tag".* "$out"/ 2>/dev/null
fi
echo "gpu_checks: test summary"
grep -E "[0-9]+ (passed|failed)|^(FAILED|ERROR)" "$log" | tail -n 20
