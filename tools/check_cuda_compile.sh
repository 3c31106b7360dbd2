#!/usr/bin/env bash
# Compiles every csrc/**/*.cu with nvcc (-c, sm_80 and sm_90) against the installed torch's
# headers, so CUDA sources cannot rot on machines where nothing built from them can run.
# The CPU wheel of torch lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h, which
# only defines C10_CUDA_BUILD_SHARED_LIBS; it is supplied from a temporary directory.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "check_cuda_compile: nvcc not found; skipping (CI machines have it)"
  exit 0
fi
mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [ ${#sources[@]} -eq 0 ]; then
  echo "check_cuda_compile: no .cu sources"
  exit 0
fi
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
mkdir -p "$gen/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$gen/c10/cuda/impl/cuda_cmake_macros.h"
mapfile -t torch_inc < <("$PYTHON" -c "
from torch.utils.cpp_extension import include_paths
print('\n'.join(include_paths()))")
pyinc=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
# the C++ standard torch builds its own extensions with (c++20 from torch 2.10 on)
std=$("$PYTHON" -c "
import inspect, torch.utils.cpp_extension as ext
print('c++20' if '-std=c++20' in inspect.getsource(ext) else 'c++17')")
# the flags torch adds to every extension's nvcc line (no implicit half conversions, relaxed constexpr)
mapfile -t torch_nvcc < <("$PYTHON" -c "
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
print('\n'.join(COMMON_NVCC_FLAGS))")
flags=(-c -std=$std -O3 --resource-usage "${torch_nvcc[@]}" -DWITH_CUDA -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -I csrc/include -I "$gen" -I "$pyinc")
for inc in "${torch_inc[@]}"; do flags+=(-I "$inc"); done
status=0
for src in "${sources[@]}"; do
  start=$(date +%s)
  if nvcc "${flags[@]}" "$src" -o "$gen/$(basename "$src").o"; then
    echo "check_cuda_compile: ok   $src ($(( $(date +%s) - start )) s)"
  else
    echo "check_cuda_compile: FAIL $src"
    status=1
  fi
done
exit $status
