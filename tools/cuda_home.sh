# Sourced by the scripts that build the CUDA sources: where CUDA_HOME is unset and nvcc is on the
# PATH, exports CUDA_HOME as the toolkit root nvcc itself reports (its TOP), so the build finds
# the toolkit's headers and libcudart. torch's own guess, two folders above the nvcc on the PATH,
# is wrong where that nvcc is a wrapper script outside the toolkit.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  cuda_top=$(nvcc -dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
  if [ -n "$cuda_top" ] && [ -d "$cuda_top" ]; then
    CUDA_HOME=$(cd "$cuda_top" && pwd)
    export CUDA_HOME
  fi
  unset cuda_top
fi
