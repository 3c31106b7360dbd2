"""clever_kernels imports and reports its backends with and without the compiled extension."""
import subprocess
import sys
import textwrap

import clever_kernels


def _report(prelude=""):
    code = textwrap.dedent(f"""
        import sys
        {prelude}
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
