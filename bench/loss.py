"""CLeVER loss, forward + backward: the fused kernels against (a) the authors' per-pair form
(clever_kernels.reference) and (b) the best plain-PyTorch version we could write (one
log_softmax / softmax per view, batched matmuls for the pair dots), in one run.

Shapes: the paper's (B = 128 per device, ncrops = 10, K1 = K2 = 65536) on a GPU, a CPU-sized
one (B = 16, ncrops = 10, K = 8192) on the CPU. On the GPU, achieved bytes/s is compared with
the measured copy bandwidth: the fused loss must read the student logits twice (forward,
backward), the teacher logits three times (forward, centre sum, backward) and write the
student gradients once; that traffic over the copy bandwidth is the floor.
"""
import torch
import torch.nn.functional as F

from clever_kernels.loss import clever_loss
from clever_kernels.reference import loss as reference

from . import harness

TS, TT, SEP = 0.1, 0.04, 1.0


def torch_best(s1, s2, t1, t2, c1, c2, ncrops, ts, tt, sep_lambd):
    """Plain PyTorch without per-pair passes: each row is normalised once and every
    (teacher view, student view) dot product comes from one batched matmul per head."""
    batch = t1.shape[0] // 2

    def per_image(x, views):  # (views*B, K) -> (B, views, K)
        return x.view(views, batch, -1).transpose(0, 1)

    ls = per_image(F.log_softmax(s1 / ts, dim=-1), ncrops)
    q = per_image(F.softmax((t1 - c1) / tt, dim=-1).to(s1.dtype), 2).detach()  # the centre is fp32
    ce = -torch.bmm(q, ls.transpose(1, 2))                       # (B, 2, V)
    r = per_image(F.softmax(s2 / ts, dim=-1), ncrops)
    p = per_image(F.softmax((t2 - c2) / tt, dim=-1).to(s2.dtype), 2).detach()
    cos = torch.bmm(p, r.transpose(1, 2)) / (p.norm(dim=-1)[:, :, None] * r.norm(dim=-1)[:, None, :])
    # a float mask, not boolean indexing: indexing by a mask waits on the device for its count
    keep = 1.0 - torch.eye(2, ncrops, dtype=ce.dtype, device=s1.device)
    pairs = 2 * (ncrops - 1)
    loss_dir = (ce.mean(0) * keep).sum() / pairs
    loss_dvr = (cos.mean(0).abs() * keep).sum() / pairs
    return loss_dir + sep_lambd * loss_dvr


def variants(device):
    # name the fused backend so a missing kernel fails the run instead of timing the fallback
    backend = "triton" if device.type == "cuda" else "cpp"
    return {
        "authors (reference)": lambda *a: reference.clever_loss(*a, TS, TT, SEP)[0],
        "plain PyTorch, batched": lambda *a: torch_best(*a, TS, TT, SEP),
        f"fused ({backend})": lambda *a: clever_loss(*a, TS, TT, SEP, backend=backend)[0],
    }


def make_inputs(batch, ncrops, k1, k2, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    s1 = randn(ncrops * batch, k1).requires_grad_()
    s2 = randn(ncrops * batch, k2).requires_grad_()
    return (s1, s2, randn(2 * batch, k1), randn(2 * batch, k2),
            randn(1, k1).float() * 0.1, randn(1, k2).float() * 0.1, ncrops)


def kernel_traffic_bytes(batch, ncrops, k1, k2, dtype):
    """Bytes each Triton kernel of a step moves as designed, both heads together: the forward
    reads the student and teacher logits, the centre's column sum the teacher's again, the
    backward both and writes the students' gradients (the per-row statistics and the merge's
    workspace are a few KiB)."""
    elem = torch.finfo(dtype).bits // 8
    student = ncrops * batch * (k1 + k2) * elem
    teacher = 2 * batch * (k1 + k2) * elem
    return {"_loss_fwd_partial_kernel": student + teacher, "_column_sum_kernel": teacher,
            "_loss_bwd_kernel": 2 * student + teacher}


def fused_traffic_bytes(batch, ncrops, k1, k2, dtype):
    """The fused step's floor traffic: S read twice, T three times, dS written once."""
    return sum(kernel_traffic_bytes(batch, ncrops, k1, k2, dtype).values())


def bench_shape(batch, ncrops, k1, k2, dtype, device, reps, copy_bw):
    inputs = make_inputs(batch, ncrops, k1, k2, dtype, device)
    s1, s2 = inputs[0], inputs[1]
    rows, reference_value = [], None
    fns = variants(device)

    def step_of(fn):
        def step():
            s1.grad = s2.grad = None
            fn(*inputs).backward()
        return step

    steps = {name: step_of(fn) for name, fn in fns.items()}
    if device.type == "cpu":  # in rounds: this machine kind's speed drifts over a run
        timings = harness.time_interleaved(steps, warmup=2, reps=reps)
    else:
        timings = {name: harness.time_median(step, device, warmup=2, reps=reps) for name, step in steps.items()}
    for name, fn in fns.items():
        step, timing = steps[name], timings[name]
        value = fn(*inputs).item()
        reference_value = value if reference_value is None else reference_value
        peak = harness.peak_memory_bytes(step, device)  # after timed steps: the grads are allocated
        saved = harness.saved_for_backward_bytes(lambda: fn(*inputs), inputs)
        row = {
            "shape": f"B={batch} V={ncrops} K1={k1} K2={k2} {str(dtype).replace('torch.', '')}",
            "variant": name,
            "fwd+bwd ms": timing["median_s"] * 1e3,
            "saved for backward MiB": saved / 2**20,
            "peak extra MiB": "n/a (CPU)" if peak is None else peak / 2**20,
            "loss": value,
            "|loss - authors|": abs(value - reference_value),
        }
        if name.startswith("fused") and copy_bw:
            moved = fused_traffic_bytes(batch, ncrops, k1, k2, dtype)
            row["GB/s"] = moved / timing["median_s"] / 1e9
            row["x bandwidth floor"] = timing["median_s"] / (moved / copy_bw)
        rows.append(row)
    authors = rows[0]["fwd+bwd ms"]
    for row in rows:
        row["speed-up vs authors"] = authors / row["fwd+bwd ms"]
    fused = next(name for name in steps if name.startswith("fused"))
    return rows, steps[fused]


def part_rows(step, shape_row, batch, ncrops, k1, k2, dtype, device, copy_bw):
    """The fused step split by kernel (harness.kernel_rows), in this benchmark's columns."""
    parts = harness.kernel_rows(step, device, copy_bw, kernel_traffic_bytes(batch, ncrops, k1, k2, dtype),
                                lambda name, calls: f"fused, {name} ({calls:g} a step)", "fwd+bwd ms")
    return [dict(row, shape=shape_row["shape"], **{"timed by": "profiler"}) for row in parts]


def split_sweep(batch, ncrops, k, dtype, device, reps, copy_bw):
    """The Triton forward (one head, DIR statistics) with K split over 1 to 16 programs per image
    and with the launcher's own choice: the data for _split_count's default."""
    from clever_kernels.loss import _triton as kt
    student, _, teacher, _, center, _, _ = make_inputs(batch, ncrops, k, 1, dtype, device)
    student, center = student.detach(), center.reshape(-1)
    moved = (ncrops + 2 * 2) * batch * k * (torch.finfo(dtype).bits // 8)  # S once, T twice (stats, sum)
    rows = []
    for splits in (1, 2, 4, 8, 16, None):
        fn = lambda: kt.dir_loss_fwd(student, teacher, center, ncrops, TS, TT, num_splits=splits)
        try:  # kernel time: at ~0.1 ms a forward is about as long as the host's work to launch it
            timing, timed_by = harness.time_cuda_graph(fn, device, reps=reps), "CUDA graph replay"
        except Exception as exc:  # a capture failure must not cost the rest of the run
            timing, timed_by = harness.time_median(fn, device, warmup=3, reps=reps), f"eager ({exc!r:.80})"
        launches, _ = kt.forward_launches(student, teacher, center, ncrops, TS, TT, False, splits)
        chosen = launches[0].grid[1]  # the partial kernel's grid is (B, splits), splits as launched
        rows.append({
            "shape": f"B={batch} V={ncrops} K={k} {str(dtype).replace('torch.', '')}",
            "variant": f"Triton forward, num_splits={'auto (' + str(chosen) + ')' if splits is None else splits}",
            "fwd+bwd ms": timing["median_s"] * 1e3,
            "GB/s": moved / timing["median_s"] / 1e9,
            "x bandwidth floor": timing["median_s"] / (moved / copy_bw) if copy_bw else "",
            "timed by": timed_by,
        })
    return rows


def main(args):
    device = torch.device(args.device)
    if device.type == "cuda":
        copy_bw = harness.copy_bandwidth(device)
        shapes = [(128, 10, 65536, 65536, torch.float32), (128, 10, 65536, 65536, torch.bfloat16)]
        reps = 20
    else:
        copy_bw = None
        shapes = [(16, 10, 8192, 8192, torch.float32), (16, 10, 8192, 8192, torch.bfloat16)]
        reps = 100  # a few seconds a run: enough reps for the medians to settle
    if args.quick:
        shapes = [(4, 4, 1000, 777, torch.float32)]
        reps = 2
    rows = []
    # written after every block of rows, so a run stopped part-way still leaves the blocks it timed
    for shape in shapes:
        timed, fused_step = bench_shape(*shape, device=device, reps=reps, copy_bw=copy_bw)
        rows += timed
        path = _write(rows, device, copy_bw, args.quick)
        # after the timings are on disk: a profiler that fails or stalls costs only these rows
        rows += part_rows(fused_step, timed[0], *shape, device=device, copy_bw=copy_bw)
        path = _write(rows, device, copy_bw, args.quick)
    if device.type == "cuda":
        for dtype in (torch.float32, torch.bfloat16):
            rows += split_sweep(128, 10, 65536, dtype, device, reps, copy_bw)
            path = _write(rows, device, copy_bw, args.quick)
    return path


def _write(rows, device, copy_bw, quick):
    columns = ["shape", "variant", "fwd+bwd ms", "speed-up vs authors", "saved for backward MiB",
               "peak extra MiB", "GB/s",
               "x bandwidth floor", "loss", "|loss - authors|", "timed by"]
    notes = ("Median of fwd+bwd over repeated steps after warm-up, one process; on the CPU the variants' "
             "steps are taken in rounds, one step of each a round. Saved for backward: "
             "bytes autograd keeps between forward and backward beyond the inputs (activation memory). "
             "Peak extra: CUDA allocator peak of fwd+bwd above what is allocated before it, the inputs and "
             "the students' gradients of the step before, which the step drops and allocates again "
             "(GPU only). "
             "GPU only, the 'Triton forward' rows time the forward op of one head alone (its column "
             "'fwd+bwd ms' holds the forward's time) for fixed K splits per image and the default "
             "choice; their floor counts the student logits read once and the teacher's twice. "
             "On a GPU every time is per call of calls run back to back between two CUDA events (no "
             "synchronisation between them); the 'Triton forward' rows replay the calls from a CUDA graph "
             "where capture works ('timed by'), so that the host's launch work, as long as such a forward, "
             "does not count. "
             "The rows 'fused, <kernel>' split the fused step by GPU kernel (by operator, self time, on the "
             "CPU, with the time outside every operator as a row of its own), from torch.profiler over three "
             "steps after one (its overhead included; parts under 1% of the step left out; profiled apart "
             "from the timed rows, so they need not add up to them); on a GPU their floor is the bytes that "
             "kernel must move (the forward: S and T read; the centre's sum: T; the backward: S and T "
             "read, dS written). ")
    if copy_bw:
        notes += f"Measured copy bandwidth: {copy_bw / 1e9:.0f} GB/s (read + write)."
    return harness.write_results("loss", device, rows, columns, notes, quick=quick)
