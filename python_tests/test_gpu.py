"""The kernels on a GPU: the Triton loss and the CUDA renderer against the float64 / plain-PyTorch
references, the paper's loss shape, the split-K forward, NaN and extreme logits, torch.compile and
autocast on CUDA, the renderer's launch count, layouts, dtypes and determinism.

Skipped without a CUDA device. Run it without TRITON_INTERPRET (the Triton kernels must compile
for the GPU): `python -m pytest python_tests/test_gpu.py`. CLEVER_GPU_TEST_DEVICE=cpu with
TRITON_INTERPRET=1 runs the same checks on CPU tensors (interpreter and C++ kernels) at the small
shapes only, to try the tests themselves where no GPU is present.

Tolerances: the loss as in conftest.TOLERANCES; rendered float32 pixels within 1e-4 of the
reference in [0, 1] space (as test_augment_fused.py) and within 5e-5 of the C++ kernel (same
per-pixel maths; the CUDA kernels sum the separable resize as an outer product and nvcc fuses
multiply-adds, so the last bits differ), float16 / bfloat16 outputs the float32 result rounded.
"""
import functools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from clever_kernels import _backend
from clever_kernels.augment import AugParams, MultiCrop, render, sample_params
from clever_kernels.loss import CLeVERLoss, clever_loss
from clever_kernels.loss import _triton as kt
from clever_kernels.reference import augment as ref_augment

from conftest import assert_inf_exactly_at, minus_inf_against_positive_teacher
from test_loss_fused import (TS, _assert_close, _check_against_reference, _inputs, _reference, _run,
                             check_compiled_matches_eager, check_forward_mode_matches_reference,
                             check_torch_func_matches_reference,
                             reference_centred_in_float32)

# Before cuBLAS starts in this process: the trainer's --deterministic asks for it too, but by the
# time a trainer test runs another test has started cuBLAS, which reads it only then.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
DEVICE = torch.device(os.environ.get("CLEVER_GPU_TEST_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
if ON_GPU and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if ON_GPU and _backend.triton_interpreting():
    pytest.skip("TRITON_INTERPRET=1 is set: run this file on its own without it", allow_module_level=True)
if not ON_GPU and not _backend.triton_interpreting():
    pytest.skip("CLEVER_GPU_TEST_DEVICE=cpu needs TRITON_INTERPRET=1", allow_module_level=True)
if _backend.extension() is None:
    pytest.skip("clever_kernels._C is not built", allow_module_level=True)

gpu_only = pytest.mark.skipif(not ON_GPU, reason="large shapes or GPU-only behaviour")
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


# ============================================================================= loss
SHAPES = [(1, 2, 1000, 4097), (3, 4, 4097, 1000), (8, 10, 1000, 333), (3, 10, 7, 1)]
GPU_SHAPES = [(32, 10, 65536, 256), (128, 2, 3, 8193)]


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("batch,ncrops,k1,k2", SHAPES + [pytest.param(*s, marks=gpu_only) for s in GPU_SHAPES])
def test_triton_loss_matches_reference(rng, batch, ncrops, k1, k2, dtype):
    _check_against_reference("triton", batch, ncrops, k1, k2, dtype, rng, device=DEVICE)


@gpu_only
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_triton_loss_paper_shape(rng, dtype):
    """B = 128 per device, 10 crops, K1 = K2 = 65536: the shape the kernels are tuned for."""
    _check_against_reference("triton", 128, 10, 65536, 65536, dtype, rng, device=DEVICE)


@pytest.mark.parametrize("cosine", [False, True])
def test_split_forward_agrees_with_one_program_per_image(rng, cosine):
    """The K-split partial statistics merged like flash-attention's LSE merge equal one pass."""
    k = 65536 if ON_GPU else 300
    student = (torch.randn(40, k, generator=rng) * 2).to(DEVICE)
    teacher = (torch.randn(8, k, generator=rng) * 0.3).to(DEVICE)
    center = (torch.randn(k, generator=rng) * 0.05).to(DEVICE)
    fwd = kt.dvr_loss_fwd if cosine else kt.dir_loss_fwd
    one = fwd(student, teacher, center, 10, TS, 0.04, num_splits=1)
    for splits in (2, 3, 16):
        many = fwd(student, teacher, center, 10, TS, 0.04, num_splits=splits)
        for a, b in zip(one, many):
            torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-5)


def test_extreme_logits_and_nan(rng):
    inputs = [x.to(DEVICE) for x in _inputs(rng, 2, 4, 300, 200, F32, scale=3e3, dvr_scale=3e3)]
    parts, g1, g2 = _run(clever_loss, *inputs, 4, 0.04, backend="triton")
    want, _, _ = reference_centred_in_float32(*inputs, 4, 0.04)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    for got, exp in zip(parts[:3], want[:3]):
        torch.testing.assert_close(got.double(), exp, rtol=1e-4, atol=1e-3)
    for where in range(4):
        bad = [x.clone() for x in inputs]
        bad[where][1, 7] = float("nan")
        assert torch.isnan(clever_loss(*bad, 4, TS, 0.04, backend="triton")[0])


@pytest.mark.parametrize("splits", [1, 3])
def test_minus_inf_logits_on_the_device(rng, splits):
    """The -inf cases of the interpreter's test, compiled (exp2 flushes what underflows, the
    selects as the compiler emits them): +inf against a positive teacher probability, 0 against
    an exactly-zero one, whole blocks of -inf included."""
    b, v, k, tile = 2, 3, (3000 if ON_GPU else 100), (1500 if ON_GPU else 60)
    student = torch.randn(v * b, k, generator=rng) * 1.5
    teacher = torch.randn(2 * b, k, generator=rng) * 0.3
    center = torch.randn(k, generator=rng) * 0.05
    pairs, for_reference = minus_inf_against_positive_teacher(student, teacher, tile)
    q = torch.softmax((teacher.double() - center.double()) / 0.04, -1)
    log_r = torch.log_softmax(for_reference.double() / TS, -1)
    want = -(q.view(2, 1, b, k) * log_r.view(1, v, b, k)).sum(-1).reshape(2, -1)
    ce = kt.dir_loss_fwd(student.to(DEVICE), teacher.to(DEVICE), center.to(DEVICE), v, TS, 0.04,
                         num_splits=splits)[2].cpu()
    want_inf = assert_inf_exactly_at(ce, want, pairs)
    torch.testing.assert_close(ce[~want_inf].double(), want[~want_inf], rtol=1e-5, atol=1e-4)


@gpu_only  # the interpreted kernels take no torch.func transform
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_triton_loss_under_torch_func(rng, dtype):
    """The Triton ops run under grad and vmap through the registered ops' vmap rules."""
    check_torch_func_matches_reference(rng, "triton", 3, 4, 4097, 1000, dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_triton_loss_forward_mode(rng, dtype):
    """Dual tensors and torch.func.jvp through the Triton ops (their jvp: the backward kernel's
    rows contracted with the tangent) against the float64 reference's forward mode."""
    check_forward_mode_matches_reference(rng, "triton", 3, 4, 4097, 1000, dtype, device=DEVICE)


def test_auto_backend_is_the_kernel_for_the_device(rng):
    inputs = [x.to(DEVICE) for x in _inputs(rng, 2, 3, 50, 40, F32)]
    auto = clever_loss(*inputs, 3, TS, 0.04, backend="auto")[0]
    explicit = clever_loss(*inputs, 3, TS, 0.04, backend="triton" if ON_GPU else "cpp")[0]
    torch.testing.assert_close(auto, explicit, rtol=0, atol=0)


def test_module_under_compile_and_autocast(rng):
    head = torch.nn.Linear(16, 40).to(DEVICE)
    loss_fn = CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=40, center_momentum=1.0).to(DEVICE)

    def step(x, t, loss=loss_fn):
        out = head(x)
        return loss(out, out * 0.5, t, t * 0.5, 0)[0]

    def assert_no_graph_break(fn):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(fn)(x, t)
        assert explanation.graph_break_count == 0, explanation.break_reasons

    x = torch.randn(9, 16, generator=rng).to(DEVICE)
    t = torch.randn(6, 40, generator=rng).to(DEVICE)
    eager = step(x, t)
    assert_no_graph_break(step)
    if ON_GPU:  # the interpreter's launchers do not trace
        check_compiled_matches_eager(rng, "inductor", "auto", DEVICE)
        # an explicit backend="triton" reaches the same registered ops, so it compiles whole too
        explicit = CLeVERLoss(40, 3, 0.04, 0.04, 0, 2, dvr_out_dim=40, center_momentum=1.0, backend="triton")
        assert_no_graph_break(functools.partial(step, loss=explicit.to(DEVICE)))
    with torch.autocast(DEVICE.type, dtype=BF16):
        hidden = head(x)
        total = loss_fn(hidden, hidden * 0.5, t, t * 0.5, 0)[0]
    assert hidden.dtype == BF16 and torch.isfinite(total)
    torch.testing.assert_close(total.float(), eager.detach().float(), rtol=3e-2, atol=3e-2)


@gpu_only
def test_loss_step_never_waits_for_the_device(rng):
    """Forward, centre update and backward of the module on CUDA without a synchronising call."""
    s1, s2, t1, t2, _, _ = [x.to(DEVICE) for x in _inputs(rng, 4, 10, 4097, 1000, F32)]
    loss_fn = CLeVERLoss(4097, 10, 0.04, 0.04, 0, 3, dvr_out_dim=1000).to(DEVICE)
    a, b = s1.requires_grad_(), s2.requires_grad_()
    loss_fn(a, b, t1, t2, 0)[0].backward()  # warm-up: Triton kernels compiled
    _warm_under_load(lambda: loss_fn(a, b, t1, t2, 1)[0].backward())
    torch.cuda.set_sync_debug_mode("error")
    try:
        _assert_host_runs_ahead(lambda: loss_fn(a, b, t1, t2, 1)[0].backward())
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _warm_under_load(fn):
    """fn() once behind a queued kernel, so the caches it needs then (pinned host blocks are
    reused only once their copies have finished) are primed before the timed-out check."""
    torch.cuda._sleep(int(2e9))
    fn()
    torch.cuda.synchronize()


def _assert_host_runs_ahead(fn):
    """fn() returns while a long kernel queued before it still runs: it never waited for the
    device, not even inside the driver (which set_sync_debug_mode cannot see)."""
    torch.cuda._sleep(int(2e9))  # about a second of GPU time
    fn()
    assert not torch.cuda.current_stream().query(), "the host waited for the device"
    torch.cuda.synchronize()


# ============================================================================= augmentation
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def photos():
    """Ragged real photographs and noise, on the CPU."""
    pytest.importorskip("sklearn")
    from clever_kernels.data import sample_photos
    china, flower = sample_photos()
    gen = torch.Generator().manual_seed(7)
    return [china[:, 11:312, 5:382].contiguous(), flower[:, 40:281, 100:403].contiguous(),
            torch.randint(0, 256, (3, 57, 83), dtype=torch.uint8, generator=gen),
            torch.randint(0, 256, (3, 23, 19), dtype=torch.uint8, generator=gen)]


def _on(images, device):
    return [x.to(device) for x in images]


def _every_op(images, global_size, local_size):
    """CAug+ draws with every op switched on often: blur, solarize, elastic, jitter, grayscale."""
    return sample_params(images, "caug+", global_size=global_size, local_size=local_size, n_local=3, seed=5,
                         step=1, global_blur_p=0.7, global2_solarize_p=0.6, jitter_p=1.0, grayscale_p=0.4)


@pytest.mark.parametrize("sizes", [(37, 15), pytest.param((224, 96), marks=gpu_only)])
@pytest.mark.parametrize("rotation_interpolation", ["nearest", "bilinear"])
def test_render_matches_cpu_kernel_and_reference(photos, sizes, rotation_interpolation):
    params = _every_op(photos, *sizes)
    kw = dict(mean=ZERO, std=ONE, rotation_interpolation=rotation_interpolation)
    got = render(_on(photos, DEVICE), [p.to(DEVICE) for p in params], backend="fused", **kw)
    cpu = render(photos, params, backend="fused", **kw)
    for p, g, c in zip(params, got, cpu):
        assert g.device.type == DEVICE.type
        # same per-pixel maths; nvcc's fused multiply-adds and CUDA's expf move the last bits
        assert (g.cpu() - c).abs().max().item() <= 5e-5
        want = ref_augment.render(photos, p, **kw)
        assert (g.cpu() - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("out_dtype", [F16, BF16])
def test_render_half_outputs_and_channels_last(photos, out_dtype):
    images = _on(photos, DEVICE)
    params = [p.to(DEVICE) for p in _every_op(photos, 29, 13)]
    full = render(images, params, backend="fused")
    half = render(images, params, out_dtype=out_dtype, backend="fused")
    nhwc = render(images, params, out_dtype=out_dtype, channels_last=True, backend="fused")
    for f, h, n in zip(full, half, nhwc):
        assert h.dtype == out_dtype and torch.equal(h, f.to(out_dtype))
        assert n.is_contiguous(memory_format=torch.channels_last) and torch.equal(n, h)


def test_render_is_bit_identical_on_rerender_and_grayscale_input(photos):
    images = _on(photos, DEVICE)
    params = [p.to(DEVICE) for p in _every_op(photos, 31, 14)]
    first = render(images, params, backend="fused")
    assert all(torch.equal(a, b) for a, b in zip(first, render(images, params, backend="fused")))
    gray = [x[:1].contiguous() for x in images]
    cpu_gray = [x[:1].contiguous() for x in photos]
    gparams = sample_params(cpu_gray, "caug+", global_size=27, local_size=13, n_local=1, seed=2)
    got = render(gray, [p.to(DEVICE) for p in gparams], mean=ZERO, std=ONE, backend="fused")
    for p, g in zip(gparams, got):
        assert (g.cpu() - ref_augment.render(cpu_gray, p, mean=ZERO, std=ONE)).abs().max().item() <= 1e-4


@gpu_only
def test_two_launches_per_view_size(photos):
    images = _on(photos, DEVICE)
    params = [p.to(DEVICE) for p in _every_op(photos, 64, 32)]
    render(images, params, backend="fused")  # warm-up
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        render(images, params, backend="fused")
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    for name in ("render_pass1_kernel", "render_pass2_kernel"):
        assert sum(name in k for k in kernels) == 2, kernels  # one launch of each per view size


def test_multicrop_on_device_matches_cpu(photos):
    mc = MultiCrop("caug+", n_local=4, global_size=36, local_size=16, seed=21, global_blur_p=0.6)
    views, params = mc(_on(photos, DEVICE), step=3)
    cpu_views, cpu_params = mc(photos, step=3)
    std = torch.tensor(mc.config.std).view(1, 3, 1, 1)
    for a, b in zip(params, cpu_params):
        assert a.device.type == DEVICE.type
        assert torch.equal(a.to_tensor(torch.float64).cpu(), b.to_tensor(torch.float64))
    for a, b in zip(views, cpu_views):
        assert a.device.type == DEVICE.type
        assert ((a.cpu() - b).abs() * std).max().item() <= 5e-5


def test_multicrop_renders_its_draws_as_render_does(photos):
    """MultiCrop renders from the tables its draw op wrote; render() builds them from the
    records: the same views, bit for bit, on the device."""
    images = _on(photos, DEVICE)
    mc = MultiCrop("caug+", n_local=5, global_size=33, local_size=14, seed=3, global_blur_p=0.6, elastic_p=0.5)
    views, params = mc(images, step=2, ids=torch.arange(10, 14, device=DEVICE))
    again = render(images, params, mean=mc.config.mean, std=mc.config.std)
    assert all(torch.equal(a, b) for a, b in zip(views, again))


def test_render_refuses_params_that_require_grad(photos):
    p = AugParams.identity(torch.tensor([list(x.shape[-2:]) for x in photos]), 16).to(DEVICE)
    p.angle.requires_grad_()
    with pytest.raises(ValueError, match="requires grad"):
        render(_on(photos, DEVICE), p, backend="fused")


@gpu_only
def test_multicrop_on_gpu_never_waits_for_the_device(photos):
    """MultiCrop on CUDA images draws and renders without one synchronising call (its draws are
    valid by construction); render() of given params makes exactly one (the value checks)."""
    import warnings
    images = _on(photos, DEVICE)
    mc = MultiCrop("caug+", n_local=4, global_size=36, local_size=16)
    _, params = mc(images)  # warm-up: kernels loaded, allocator primed
    _warm_under_load(lambda: mc(images, step=1))
    torch.cuda.set_sync_debug_mode("error")
    try:
        _assert_host_runs_ahead(lambda: mc(images, step=1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            render(images, params, backend="fused")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


# A child process: a device-side assert leaves its CUDA context unusable.
_BAD_TABLE_ROW = """
import sys, torch
import clever_kernels
from clever_kernels.augment import _fused, sample_params
gen = torch.Generator().manual_seed(3)
images = [torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=gen) for _ in range(3)]
params = sample_params(images, "caug+", global_size=16, local_size=8, n_local=0, seed=5)[:1]
pixels, offsets, sizes = _fused.pack_images([x.cuda() for x in images])
iparams, fparams = (t.cuda() for t in _fused.param_tables([p.to("cuda") for p in params]))
if sys.argv[1] == "crop":
    iparams[2, 3] = 10_000  # the last sample's crop height, far past its 40 rows
else:
    fparams[2, 5] = float("inf")  # the last sample's blur sigma
out = torch.ops.clever_kernels.render_views(pixels, offsets, sizes, 3, iparams, fparams, 16, [0.0] * 3,
                                            [1.0] * 3, True, 0, 0, torch.float32, False)
torch.cuda.synchronize()
print("RENDERED", out.isfinite().all().item())
"""


@gpu_only
@pytest.mark.parametrize("case", ["crop", "blur-sigma"])
def test_cuda_kernels_refuse_a_bad_table_row(case):
    """Given to the op directly (render() raises a ValueError first), a table row the kernels
    cannot render, a crop box outside its image or an infinite blur sigma, stops the launch with
    a device-side assert instead of reading outside the image or blurring without end."""
    run = subprocess.run([sys.executable, "-c", _BAD_TABLE_ROW, case], capture_output=True, text=True,
                         timeout=120)
    said = run.stdout + run.stderr
    assert run.returncode != 0 and "RENDERED" not in said, said
    assert "device-side assert" in said and "a row of iparams / fparams cannot be rendered" in said, said


# ============================================================================= training
@pytest.fixture
def restores_determinism():
    """The trainer's --deterministic switches process-wide settings, and it seeds the global
    generators; the tests after it in this process run without either."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if ON_GPU else None
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark = flags[2]
    torch.random.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


def _train(folder, out, device, *extra):
    from clever_kernels.train.cli import train_main
    from train_helpers import TINY_RUN
    assert train_main(TINY_RUN + ["--data", folder, "--device", str(device), "--out", str(out), *extra]) == 0
    return [json.loads(line) for line in open(out / "log.jsonl") if '"type": "step"' in line]


@pytest.mark.parametrize("method", ["dino", "clever"])
def test_training_on_the_device_follows_the_cpu(digits_folder, tmp_path, restores_determinism, method):
    """The trainer's GPU path (pinned loader, on-device multi-crop, the device's fused loss):
    each step draws what the CPU run draws, and the first step's loss, from the same weights
    and views equal to 5e-5, is the CPU's to float32 accuracy (the patch embedding may run in
    TF32 on a GPU, hence 1e-3)."""
    steps = ["--method", method, "--epochs", "1", "--max-steps", "2", "--save-params"]
    on_device = _train(digits_folder, tmp_path / "device", DEVICE, *steps)
    on_cpu = _train(digits_folder, tmp_path / "cpu", "cpu", *steps)
    parts = ("total", "DIR", "DVR", "reg") if method == "clever" else ("total", "DIR")
    for record in on_device:
        assert all(math.isfinite(record[p]) for p in parts), record
    for part in parts:
        assert on_device[0][part] == pytest.approx(on_cpu[0][part], rel=1e-3, abs=1e-5), part
    for step in range(2):
        name = f"step{step:08d}.pt"
        device_record = torch.load(tmp_path / "device" / "params" / name)
        cpu_record = torch.load(tmp_path / "cpu" / "params" / name)
        assert torch.equal(device_record["ids"], cpu_record["ids"])
        for a, b in zip(device_record["views"], cpu_record["views"]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_on_the_device(digits_folder, tmp_path, restores_determinism, precision):
    """A run stopped after 2 steps and resumed on the device (optimizer, centres, loss scaler and
    RNG states mapped back to it) reaches the uninterrupted run's state bit for bit. Global views
    only: a local view's position embedding is interpolated bicubically, whose CUDA backward adds
    with atomics, in another order each run; and the plain attention, for the same reason. In
    fp16 the loss scaler skips the first steps (their gradients overflow at its initial scale),
    so that case resumes the scaler; fp32 the weights and the optimizer."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from clever_kernels.train.checkpoint import load_checkpoint
    from train_helpers import assert_state_equal
    recipe = ["--method", "clever", "--epochs", "1", "--n-local", "0", "--precision", precision]
    # the plain attention: the fused kernels' backward may add in another order each run, which
    # --deterministic (warn_only) does not change
    with sdpa_kernel(SDPBackend.MATH):
        whole = _train(digits_folder, tmp_path / "whole", DEVICE, *recipe)
        _train(digits_folder, tmp_path / "resumed", DEVICE, *recipe, "--max-steps", "2", "--ckpt-every", "2")
        at_two = load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
        assert at_two["step"] == 2 and bool(at_two["scaler"]) == (precision == "fp16")
        resumed = _train(digits_folder, tmp_path / "resumed", DEVICE, *recipe, "--resume")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [0, 1, 2, 3]
    a = load_checkpoint(str(tmp_path / "whole" / "checkpoint.pt"))
    b = load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert a["step"] == b["step"] == 4
    if precision == "fp32":  # steps were taken: the comparison below is not of untouched weights
        assert len(a["optimizer"]["state"]) > 0
    for key in ("student", "teacher", "optimizer", "loss", "scaler"):
        assert_state_equal(a[key], b[key], key)
    assert [r["total"] for r in resumed] == [r["total"] for r in whole]


def test_comparison_on_the_device(digits_folder, tmp_path, restores_determinism, capsys):
    """The main job end to end on the device at toy size: both trainings, the untrained
    reference and the three evaluations run there and the report says so."""
    from clever_kernels.train.compare import main as compare_main
    from train_helpers import TINY_COMPARISON
    toy = TINY_COMPARISON + ["--data", digits_folder, "--device", str(DEVICE)]
    assert compare_main(["--seeds", "0", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
                        + toy) == 0
    assert "| DINO | CLeVER |" in capsys.readouterr().out
    report = json.load(open(tmp_path / "results" / "compare_tree_vit_tiny_seeds0.json"))
    trained = [r for r in report["runs"] if r["method"] != "untrained"]
    assert len(trained) == 2 and all(r["device"].startswith(DEVICE.type) for r in trained)
    for run in report["runs"]:
        assert all(0 <= run["eval"]["top1_ori"][part] <= 100 for part in ("full", "ir", "ef"))
        assert math.isfinite(run["eval"]["rotation_r2"]["full"])
