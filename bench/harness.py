"""Timing, memory and result files shared by every benchmark.

A benchmark module exposes `run(args) -> list of row dicts`; rows of one run share a machine,
so ratios between its variants are meaningful. Results land in bench/results/ as
<name>-<device tag>.json plus a markdown table naming the machine, versions and commit.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# On a GPU each timed rep runs fn() back to back for at least this long between two events, so
# that neither the synchronisation after a rep nor the launch latency of the first call counts:
# steady-state time per call, as a training loop sees it.
_CUDA_REP_SECONDS = 2e-3
_CUDA_MAX_INNER = 200


def time_median(fn: Callable[[], object], device: torch.device, warmup: int = 3, reps: int = 10,
                min_seconds: float = 0.0) -> Dict[str, float]:
    """Median, min and max seconds per fn() over `reps` runs after `warmup`; keeps repeating
    until `min_seconds` have been spent so short ops are not dominated by noise. On a GPU a rep
    is `inner` calls back to back timed by CUDA events (inner is in the result)."""
    for _ in range(warmup):
        fn()
    sync(device)
    inner = _calibrate_inner(fn, device) if device.type == "cuda" else 1
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        if device.type == "cuda":
            times.append(_cuda_events_seconds(lambda: _repeat(fn, inner)) / inner)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return _summary(times, inner)


def time_interleaved(fns: Dict[str, Callable[[], object]], warmup: int = 1,
                     reps: int = 5) -> Dict[str, Dict[str, float]]:
    """time_median of every fn on the CPU, their reps taken in rounds (one call of each per round,
    the order rotated from round to round) instead of one fn's reps after another's: a machine
    whose speed drifts over a run (shared cores, frequency) then slows every variant alike, and
    the ratios between them, which are what a run reports, hold."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(reps):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: _summary(times[name], 1) for name in names}


def _summary(times, inner: int) -> Dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "reps": len(times),
            "inner": inner}


def _repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()  # each result dropped before the next call, as in a training loop


def _cuda_events_seconds(work: Callable[[], object]) -> float:
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    work()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def _calibrate_inner(fn: Callable[[], object], device: torch.device) -> int:
    one = _cuda_events_seconds(fn)
    return max(1, min(_CUDA_MAX_INNER, int(_CUDA_REP_SECONDS / max(one, 1e-7))))


def time_cuda_graph(fn: Callable[[], object], device: torch.device, reps: int = 10) -> Dict[str, float]:
    """As time_median, with `inner` calls of fn() captured once in a CUDA graph and replayed:
    the kernels' own time, with no host work (argument checks, launches) between them. Raises
    whatever capture raises (fn must not synchronise or read back)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    sync(device)
    inner = _calibrate_inner(fn, device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _repeat(fn, inner)
    graph.replay()
    sync(device)
    return _summary([_cuda_events_seconds(graph.replay) / inner for _ in range(reps)], inner)


BETWEEN_OPERATORS = "outside operators (Python, autograd, freeing memory)"


def kernel_times(fn: Callable[[], object], device: torch.device, reps: int = 3) -> Dict[str, Dict[str, float]]:
    """Where one fn() spends its time, from torch.profiler over `reps` calls: per GPU kernel (by
    name, memory copies and fills included) its device seconds and launches per call; on the CPU
    per operator, its self time (children excluded, so nested operators are not counted twice).
    On the CPU the call's time outside every operator (Python, autograd) is an entry of its own,
    BETWEEN_OPERATORS. Sorted by time, largest first. The profiler's own overhead is in these
    times, not in time_median's. The session traces one warm-up call before the counted ones:
    CUPTI before CUDA 13.1 can drop or garble the first kernel records of a session
    (pytorch/pytorch#192021)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    fn()
    sync(device)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    traced = []  # the active window's events, taken when it ends (the profiler then clears them)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events")  # taken above
        with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=reps),
                     on_trace_ready=lambda done: traced.append(done.events())) as prof:
            for _ in range(1 + reps):
                fn()
                sync(device)
                prof.step()
    if not traced:
        raise RuntimeError("the profiler returned no trace")
    events = traced[-1]
    totals: Dict[str, List[float]] = {}
    if on_gpu:
        for event in events:
            if event.device_type == DeviceType.CUDA:
                entry = totals.setdefault(kernel_label(event.name), [0.0, 0])
                entry[0] += event.time_range.elapsed_us()
                entry[1] += 1
    else:
        for event in events.key_averages():
            if event.self_cpu_time_total > 0:
                # a profiler step's self time is the call's time outside every operator
                name = BETWEEN_OPERATORS if event.key.startswith("ProfilerStep") else event.key
                totals[name] = [event.self_cpu_time_total, event.count]
    if on_gpu and not totals:
        raise RuntimeError("the profiler recorded no GPU kernel")
    per_call = {name: {"seconds": us / 1e6 / reps, "calls": count / reps} for name, (us, count) in totals.items()}
    partial = [name for name, t in per_call.items() if t["calls"] != int(t["calls"])]
    if partial:  # every call launches the same kernels: a fraction means records were lost
        print(f"  the profiler lost records: launches per call not whole for {partial[:3]}", flush=True)
    return dict(sorted(per_call.items(), key=lambda item: -item[1]["seconds"]))


def kernel_rows(fn: Callable[[], object], device: torch.device, copy_bw: Optional[float],
                traffic: Dict[str, float], variant: Callable[[str, float], str], time_column: str) -> List[dict]:
    """Result rows splitting one fn() by kernel (kernel_times), the largest first and those under
    1% of the whole left out: `variant(name, calls)` names a row, `time_column` holds its
    milliseconds per call of fn, and where `traffic` gives a kernel's bytes (and the copy
    bandwidth is known) its GB/s and its time over that traffic's floor."""
    try:
        times = kernel_times(fn, device)
    except Exception as exc:  # the profiler is an extra: its failure must not cost a run's timings
        print(f"  no per-kernel rows: the profiler failed ({exc!r:.200})", flush=True)
        return []
    total = sum(t["seconds"] for t in times.values())
    rows = []
    for name, t in times.items():
        if t["seconds"] < 0.01 * total:
            continue
        row = {"variant": variant(name, t["calls"]), time_column: t["seconds"] * 1e3}
        if name in traffic and copy_bw:
            row["GB/s"] = traffic[name] / t["seconds"] / 1e9
            row["x bandwidth floor"] = t["seconds"] / (traffic[name] / copy_bw)
        rows.append(row)
    return rows


def kernel_label(name: str) -> str:
    """A CUDA kernel's name without its return type, namespaces and parameter list:
    'void ns::(anonymous namespace)::render_pass2_kernel<float>(float const*, ...)' ->
    'render_pass2_kernel<float>'. Triton's and copy/fill events are kept as they are."""
    if not name.startswith("void "):
        return name
    head, depth = [], 0
    for char in name[len("void "):]:  # the name ends at the first '(' outside template brackets
        if char == "(" and depth == 0 and head and not "".join(head).endswith("::"):
            break
        depth += (char == "<") - (char == ">")
        head.append(char)
    label = "".join(head)
    depth, cut = 0, 0
    for i, char in enumerate(label):  # the last '::' outside template brackets
        depth += (char == "<") - (char == ">")
        if depth == 0 and label.startswith("::", i):
            cut = i + 2
    return label[cut:]


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory that fn() allocates on top of what is allocated before it, from the CUDA
    caching allocator; None on the CPU, where no allocator keeps such a count (see
    saved_for_backward_bytes for a device-independent measure)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def saved_for_backward_bytes(forward: Callable[[], object], inputs) -> int:
    """Bytes that autograd keeps alive between forward() and its backward, not counting
    tensors that share storage with `inputs` (those exist anyway): the activation memory
    a loss costs, on any device."""
    excluded = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, torch.Tensor)}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    del out
    return sum(kept.values())


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28) -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a large buffer)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    stats = time_median(lambda: dst.copy_(src), device, warmup=2, reps=10)  # back to back, by events
    return 2 * nbytes / stats["median_s"]


def _git_commit() -> str:
    """The checked-out commit; CLEVER_KERNELS_COMMIT names it where the tree has no .git."""
    if os.environ.get("CLEVER_KERNELS_COMMIT"):
        return os.environ["CLEVER_KERNELS_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(RESULTS), stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device) -> Dict[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    info = {
        # the ISA: the C++ loss loops are cloned for AVX2 and AVX-512, one picked at load by the CPU
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
               f"widest vector ISA {torch.backends.cpu.get_cpu_capability()}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return "cpu"


def write_results(name: str, device: torch.device, rows: List[dict], columns: List[str],
                  notes: str = "", quick: bool = False) -> str:
    """Writes bench/results/<name>-<tag>.json and .md (smoke runs go to results/quick/, which
    is not committed); returns the markdown path."""
    folder = os.path.join(RESULTS, "quick") if quick else RESULTS
    os.makedirs(folder, exist_ok=True)
    info = machine(device)
    base = os.path.join(folder, f"{name}-{device_tag(device)}")
    _write_replacing(base + ".json", json.dumps({"benchmark": name, "machine": info, "rows": rows}, indent=2))
    lines = [f"# {name} benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(col, "")) for col in columns) + " |")
    if notes:
        lines += ["", notes]
    _write_replacing(base + ".md", "\n".join(lines) + "\n")
    return base + ".md"


def _write_replacing(path: str, text: str) -> None:
    # benchmarks rewrite their results as rows come in and may be killed at any moment: a reader
    # sees the previous file or the new one, never half of one
    with open(path + ".part", "w") as out:
        out.write(text)
    os.replace(path + ".part", path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
