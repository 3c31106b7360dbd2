"""clever_kernels imports and reports its backends with and without the compiled extension."""
import subprocess
import sys
import textwrap

import clever_kernels


def _report(prelude=""):
    code = "import sys\n" + textwrap.dedent(prelude) + textwrap.dedent("""
        import clever_kernels
        for name, status in clever_kernels.backends().items():
            print(name, status.available, status.reason, sep="|")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {line.split("|")[0]: (line.split("|")[1] == "True", line.split("|")[2])
            for line in out.strip().splitlines()}


def test_backends_names_every_backend_with_a_reason():
    status = clever_kernels.backends()
    assert set(status) == {"cpu-ext", "cuda", "triton", "triton-interpreter"}
    for name, backend in status.items():
        assert isinstance(backend.available, bool) and backend.reason, name


def test_import_without_extension_says_why():
    # a None entry in sys.modules makes `import clever_kernels._C` fail as if it were not built
    report = _report("sys.modules['clever_kernels._C'] = None")
    assert report["cpu-ext"][0] is False
    assert "pip install --no-build-isolation" in report["cpu-ext"][1]
    assert report["triton"][0] is False


def test_without_gpu_cuda_and_triton_are_off_with_reasons():
    import torch
    if torch.cuda.is_available():
        return
    report = _report()
    assert report["cuda"] == (False, "torch was built without CUDA") or "no CUDA device" in report["cuda"][1]
    assert report["triton"][0] is False


def test_loss_falls_back_to_reference_with_a_warning_when_no_kernel():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules['clever_kernels._C'] = None
        import torch
        from clever_kernels.loss import dino_loss
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, _ = dino_loss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(1, 5), 2, 0.1, 0.04)
            dino_loss(torch.randn(4, 5), torch.randn(4, 5), torch.zeros(1, 5), 2, 0.1, 0.04)
        print(len(caught), caught[0].message)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, message = out.split(" ", 1)
    assert count == "1", "the fallback must warn once, not on every call"
    assert "reference" in message


def test_interpreter_that_cannot_run_a_loop_is_off_and_says_why():
    # triton 3.6's interpreter beside numpy >= 2.4 fails this way at every kernel's first launch
    report = _report("""
        import os, triton
        os.environ['TRITON_INTERPRET'] = '1'
        class Broken:
            def __init__(self, fn): pass
            def __getitem__(self, grid):
                def launch(*args):
                    raise TypeError('only 0-dimensional arrays can be converted to Python scalars')
                return launch
        triton.jit = Broken
    """)
    available, reason = report["triton-interpreter"]
    assert available is False
    assert "interpreter cannot run a loop" in reason and "0-dimensional arrays" in reason


def test_interpreter_of_the_pinned_triton_runs_the_kernels():
    # the suite's Triton tests skip where the interpreter is off: with the triton that CI pins
    # (Makefile) they must not
    import pytest
    triton = pytest.importorskip("triton")
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 9):
        pytest.skip(f"triton {triton.__version__} is not the version the suite pins")
    report = _report("import os; os.environ['TRITON_INTERPRET'] = '1'")
    assert report["triton-interpreter"] == (True, report["triton-interpreter"][1])
