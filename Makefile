# The two README commands: `make compare` (the main job: DINO vs CLeVER on the embedded digits)
# and `make test` (the test suite, as CI runs it). Both create .venv and install what they need;
# on CPU machines of this project torch is pinned to the CPU wheel (a bare `torch` pulls a
# multi-GB CUDA build).
PYTHON_BIN ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := numpy triton==3.9.0 ninja pybind11 pytest scikit-learn pillow tqdm matplotlib
# baselines the benchmarks compare against; not needed by the package or its tests
BENCH_DEPS := kornia==0.9.0 kornia_rs==0.2.0

.PHONY: setup build demo compare test test-fast cuda-check triton-check gpu-torch-check gpu-checks gpu-wheels bench clean

$(PY):
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC) $(DEPS)

setup: $(PY) build

# --no-build-isolation: build against the torch in the venv instead of fetching another one
build: $(PY)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

# the main job: short DINO and CLeVER trainings on the embedded digits (CAug), both evaluations,
# one table (about 10 minutes on two cores per seed; SEEDS="0 1 2" gives the committed results)
SEEDS ?= 0
compare: setup
	$(PY) -m clever_kernels.train.compare --seeds $(SEEDS)

# augments the embedded photos with CAug multi-crop, prints every drawn parameter and evaluates
# the CLeVER loss, forward and backward
demo: setup
	$(PY) -m clever_kernels.demo

cuda-check: $(PY)
	PYTHON=$(abspath $(PY)) bash tools/check_cuda_compile.sh

# Compiles the Triton kernels to sm_80 / sm_90 cubin with CI's triton, so code only the
# interpreter accepts fails here; gpu-torch-check does the same for sm_90 with the GPU machines'
# triton.
triton-check: build
	$(PY) tools/check_triton_compile.py

# The extension built with its CUDA sources against the GPU machines' torch (2.11 + CUDA 13.0,
# triton 3.6) in a venv of its own under build/gpu-torch/, loaded, its CUDA registrations and the
# Triton cubin compiles checked, and the whole suite run against it (5 to 15 minutes on two
# cores, the longer with a cold Triton cache; 5 GB).
gpu-torch-check:
	PYTHON_BIN=$(PYTHON_BIN) bash tools/check_gpu_torch.sh

# Triton kernels run on the CPU through the interpreter in the test suite.
test: setup cuda-check triton-check gpu-torch-check
	TRITON_INTERPRET=1 $(PY) -m pytest python_tests -q

test-fast: build
	TRITON_INTERPRET=1 $(PY) -m pytest python_tests -q -x

# on a CUDA machine with torch etc. preinstalled (no venv): build, GPU tests, GPU benchmarks
gpu-checks:
	bash tools/gpu_checks.sh

# the benchmark baselines a GPU machine without a registry lacks, as wheels for its Python (3.12)
# in .whl/ (not committed): carry the folder there and run WHEELS=.whl bash tools/gpu_checks.sh
GPU_PYTHON ?= 3.12
gpu-wheels:
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0

bench: setup
	$(PY) -m pip install --quiet $(BENCH_DEPS)
	$(PY) -m bench

clean:
	rm -rf build $(VENV) clever_kernels/_C*.so *.egg-info
