#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a CUDA machine whose python already has torch,
# triton, nvcc, ninja, pytest, pytest-xdist, pillow and scikit-learn (no registry needed):
#   1. builds the extension against that torch, CUDA sources required (for the local GPU's
#      architecture), and stops if that fails;
#   2. checks that the CUDA and Triton backends are on, and stops if not;
#   3. runs the GPU tests (python_tests/test_gpu.py, the CUDA sampler test), Triton compiled;
#   4. runs both benchmarks on the GPU (bench/results/*-<gpu>.{md,json});
#   5. runs a small render of every CUDA augmentation path under compute-sanitizer's memcheck
#      and racecheck (tools/sanitize_render.py), where the machine has it (the CPU emulation
#      already catches divergent barriers and reads of unwritten scratch);
#   6. only when STEPS names it ("suite"): the whole suite as CI runs it (CPU only, Triton
#      interpreted) against this machine's packages. Not by default: CI already runs it against
#      the same torch 2.11 and triton 3.6 with the CUDA sources built (tools/check_gpu_torch.sh),
#      and beside this machine's numpy (>= 2.4) triton 3.6's interpreter is off, so its Triton
#      tests would skip.
# Each step has its own time limit, a ceiling, and the whole command a deadline (DEADLINE, 560 s
# by default, so one call fits a 10-minute allowance with the machine's start-up): a step runs
# for at most the smaller of its ceiling and the time left, and is skipped (and counted as
# failed) when under 20 s remain. The steps run in order of what only a GPU can show, so a
# command that runs out loses the last ones (the sanitizer first); each appends to one log,
# and each benchmark's result files are copied out as soon as it ends (the benchmarks rewrite
# them after every timed variant), so a step that fails or runs out of time still leaves the
# others' results. Output: $OUT (default gpu-checks/): gpu_checks.log and the benchmark result
# files, ready to commit. Exit status: 0 only if every step passed.
#
#   bash tools/gpu_checks.sh                                   # everything, within DEADLINE
#   STEPS="sanitize" bash tools/gpu_checks.sh                  # one part (builds first if needed)
# Before the steps it logs the toolchain (nvcc, CUDA_HOME, the Python packages the steps use),
# with CUDA_HOME taken from nvcc itself where unset (tools/cuda_home.sh).
#
# Where the tree has no .git, set CLEVER_KERNELS_COMMIT=<hash> so the result files name the commit.
# Kornia (the augmentation benchmark's GPU baseline) is used when it imports; where the machine
# has no registry, `make gpu-wheels` (on a machine with one) puts its wheels in .whl/, and
# WHEELS=.whl bash tools/gpu_checks.sh installs them into a scratch folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
log="$out/gpu_checks.log"
py=${PYTHON:-python3}
steps=${STEPS:-build backends tests bench sanitize}
deadline=$(( $(date +%s) + ${DEADLINE:-560} ))
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset TRITON_INTERPRET
failed=0

step() {  # step NAME CEILING_SECONDS COMMAND...; returns the command's status
  local name=$1 limit=$2 start rc left
  shift 2
  start=$(date +%s)
  left=$(( deadline - start ))
  if [ "$left" -lt 20 ]; then
    echo "gpu_checks: $name SKIPPED: ${left} s left before the deadline" | tee -a "$log"
    failed=1
    return 124
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name (limit $limit s): $*" >>"$log"
  # BENCH_DEADLINE: when the step's time runs out, so a benchmark can fit its optional parts in it
  BENCH_DEADLINE=$(( start + limit )) timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "gpu_checks: $name rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}

wants() { [[ " $steps " == *" $1 "* ]]; }

finish() {
  echo "gpu_checks: test summary"
  grep -E "[0-9]+ (passed|failed)|^(FAILED|ERROR)" "$log" | tail -n 20
  exit "$failed"
}

: >"$log"
if [ -n "${WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_checks_site "$WHEELS"/*.whl >>"$log" 2>&1
  export PYTHONPATH=/tmp/gpu_checks_site${PYTHONPATH:+:$PYTHONPATH}
fi
# the checkout itself, for the scripts run by path (tools/sanitize_render.py) where the build step
# is skipped and nothing installed the package
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
source tools/cuda_home.sh
{
  echo "=== toolchain"
  echo "nvcc: $(command -v nvcc || echo none) $(nvcc --version 2>/dev/null | tail -n 1)"
  echo "CUDA_HOME: ${CUDA_HOME:-unset}"
  echo "ninja: $(ninja --version 2>/dev/null || echo none)"
} >>"$log" 2>&1
# The digits and photos the GPU tests and the augmentation benchmark use come through scikit-learn
# and pillow: without them the tests skip and the benchmark fails, so say it here, loudly.
"$py" -c "
import importlib
missing = []
for name in ('torch', 'triton', 'numpy', 'sklearn', 'PIL', 'pytest', 'xdist', 'pytest_timeout', 'kornia'):
    try:
        print(name, getattr(importlib.import_module(name), '__version__', '?'))
    except Exception as exc:
        print(name, 'MISSING', type(exc).__name__)
        missing.append(name)
raise SystemExit(1 if {'sklearn', 'PIL'} & set(missing) else 0)" >>"$log" 2>&1 || {
  echo "gpu_checks: scikit-learn or pillow does not import: the augmentation tests will skip" | tee -a "$log"
  failed=1
}
arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>>"$log") || {
  echo "gpu_checks: $py sees no CUDA device (details in $log)"
  exit 1
}
if wants build || ! "$py" -c "import clever_kernels._C" >/dev/null 2>&1; then
  step build 150 env TORCH_CUDA_ARCH_LIST="$arch" CLEVER_KERNELS_CUDA=1 \
    "$py" -m pip install --no-index --no-deps --no-build-isolation -e . || finish
fi
if wants backends; then
  step backends 20 "$py" -c "
import clever_kernels
status = clever_kernels.backends()
for name, backend in status.items():
    print(f'{name:20s} {backend}')
missing = [name for name in ('cpu-ext', 'cuda', 'triton') if not status[name].available]
raise SystemExit(f'backends off: {missing}' if missing else 0)" || finish
fi
workers=()
"$py" -c "import xdist" 2>/dev/null && workers=(-n 4)
timeouts=()
"$py" -c "import pytest_timeout" 2>/dev/null && timeouts=(--timeout=180)
if wants tests; then
  step tests 240 "$py" -m pytest python_tests/test_gpu.py python_tests/test_augment_sampler.py -q -rs \
    -p no:cacheprovider "${workers[@]}" "${timeouts[@]}"
fi
if wants bench; then
  tag=$("$py" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower())")
  for name in loss augment; do
    limit=90
    [ "$name" = augment ] && limit=150
    rm -f bench/results/"$name-$tag".*  # a file from an earlier run is not this run's result
    step "bench-$name" "$limit" "$py" -m bench "$name" --device cuda
    cp bench/results/"$name-$tag".{md,json} "$out"/ >>"$log" 2>&1 ||
      { echo "gpu_checks: no bench/results/$name-$tag.* to copy" | tee -a "$log"; failed=1; }
  done
fi
if wants sanitize; then
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  if [ -x "$sanitizer" ]; then
    # only our kernels instrumented (kns: kernel name substring): torch's own are not under test
    # and would multiply racecheck's time
    for tool in memcheck racecheck; do
      # errors of CUDA API calls (torch probes some at start-up) are not our kernels' memory
      # errors, and the renderer already turns a failed launch into an exception
      step "sanitize-$tool" 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" \
        --kernel-name kns=render_pass --report-api-errors no --error-exitcode 3 "$py" tools/sanitize_render.py
    done
  else
    echo "gpu_checks: sanitize FAILED: no compute-sanitizer on the PATH or in \$CUDA_HOME/bin" | tee -a "$log"
    failed=1
  fi
fi
if wants suite; then
  # CPU only, as CI: with a GPU visible the trainer tests would train on it (and rank 1 of the
  # two-rank test would ask for a second GPU). One process: some tests start processes of their own.
  step suite 80 env CUDA_VISIBLE_DEVICES= TRITON_INTERPRET=1 "$py" -m pytest python_tests -q \
    -p no:cacheprovider --ignore=python_tests/test_gpu.py "${timeouts[@]}"
fi
finish
