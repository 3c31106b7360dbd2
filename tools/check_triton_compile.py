"""Compiles every Triton loss kernel exactly as the launchers launch it on a GPU, down to cubin for
sm_80 and sm_90 with the installed triton, no GPU needed; prints each kernel's largest register
count, and fails on any compile error, on local memory, or on a kernel that spills at the
register ceiling.

Spills show as a stack frame (cuobjdump's STACK; Triton kernels have no other use for one, and
ptxas -v gives the same bytes as spill stores). At the ceiling of 255 registers a spill means the
tile does not fit, and fails; below it ptxas chose fewer registers and a few bytes of spill
for occupancy (8 bytes at 48 or 64 registers, in a few default configurations), which is reported.

The launches come from the launchers themselves (clever_kernels.loss._triton.forward_launches /
backward_launches) on meta tensors, with the configuration chosen for a CUDA device of the
target's SM count, and each argument is specialised by triton's own rule (pointer and integer
divisibility by 16, integers equal to 1 as constants), so what compiles here is what a GPU run
compiles. Shapes, crops and dtypes: see SHAPES and MORE_SHAPES below (the paper's B = 128,
K = 65536, small odd ones, B = 1, the merge widths of the default split counts, 2 to 40 crops,
both heads, tensors on and off 16-byte boundaries), and the largest block_k the launchers accept
for each crop count (LARGEST_BLOCK_SHAPES), whose tiles are up to twice the default's.

The test suite runs these kernels through the interpreter, which accepts code a GPU compile
rejects (types, layouts, shared-memory limits); this is the check that they lower for real
devices. `make triton-check` runs it with CI's triton, tools/check_gpu_torch.sh with the GPU
machines' (3.6).

    python tools/check_triton_compile.py [--arch 80 90] [--jobs N] [--verbose]
"""
import argparse
import concurrent.futures
import itertools
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default on GPU runs; silences 3.9's notice

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import native_specialize_impl  # noqa: E402

from clever_kernels.loss import _triton as kt  # noqa: E402

SM_COUNT = {80: 108, 90: 132}  # A100; H100 and H200: what the default split count is chosen for
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every pair of student and teacher dtypes on aligned tensors for (B, K) the paper's, a small odd
# one and B = 1, with 2, 4 and 10 crops
SHAPES = [(128, 65536), (3, 1000), (1, 4097)]
CROPS = (2, 4, 10)
DTYPE_PAIRS = tuple(itertools.product(DTYPES, DTYPES))
# then one dtype for both, tensors on and off 16-byte boundaries, for more shapes: K = 1 (a
# constant to triton) and K = 7 (under one block); a batch whose default split count needs a
# 32-wide merge and B = 1 with a 128-wide one; 6, 20 and 40 crops (8, 32 and 64 padded views)
MORE_SHAPES = SHAPES + [(3, 1), (3, 7), (32, 65536), (1, 524288)]
MORE_CROPS = CROPS + (6, 20, 40)
SAME_DTYPES = tuple((d, d) for d in DTYPES)
# the largest block_k a caller may pass (kt.largest_block_k; larger ones are refused on CUDA):
# the tiles that come nearest to spilling, with every alignment hint and with none (K not a
# multiple of 16, tensors off 16-byte boundaries): (batch, K, aligned)
LARGEST_BLOCK_SHAPES = [(3, 65536, True), (1, 65537, False)]
TS, TT = 0.1, 0.04
MAX_REGISTERS = 255  # a thread's ceiling on sm_80 and sm_90 at up to 8 warps, the most launched


def launches_for(arch):
    """Every distinct (kernel, specialisation) the forward and backward launch on sm_<arch>."""
    kt._sm_count = lambda index: SM_COUNT[arch]
    cuda = torch.device("cuda", 0)
    seen = {}
    cases = [(shape, ncrops, cosine, dtypes, True, None)
             for shape, ncrops, cosine, dtypes in itertools.product(SHAPES, CROPS, (False, True), DTYPE_PAIRS)]
    cases += [(shape, ncrops, cosine, dtypes, aligned, None)
              for shape, ncrops, cosine, dtypes, aligned in itertools.product(
                  MORE_SHAPES, MORE_CROPS, (False, True), SAME_DTYPES, (True, False))]
    cases += [((batch, k), ncrops, cosine, dtypes, aligned, kt.largest_block_k)
              for (batch, k, aligned), ncrops, cosine, dtypes in itertools.product(
                  LARGEST_BLOCK_SHAPES, MORE_CROPS, (False, True), SAME_DTYPES)]
    for (batch, k), ncrops, cosine, (ds, dt), aligned, block_for in cases:
        v_pad = kt._view_pad(ncrops)
        fwd_block, bwd_block = (None, None) if block_for is None else (
            block_for(v_pad, kt._FWD_TILE), block_for(v_pad, kt._BWD_TILE))
        meta = dict(device="meta")
        student = torch.empty(ncrops * batch, k, dtype=ds, **meta)
        teacher = torch.empty(2 * batch, k, dtype=dt, **meta)
        center = torch.empty(k, dtype=torch.float32, **meta)
        fwd, _ = kt.forward_launches(student, teacher, center, ncrops, TS, TT, cosine, block_k=fwd_block,
                                     device=cuda)
        stats = [torch.empty(2, n, dtype=torch.float32, **meta) for n in (ncrops * batch, 2 * batch)]
        pair, row = torch.empty(2, ncrops * batch, **meta), torch.empty(ncrops * batch, **meta)
        bwd, _ = kt.backward_launches(student, teacher, center, *stats, pair, row, ncrops, TS, TT, cosine,
                                      block_k=bwd_block, device=cuda)
        for launch in fwd + bwd:
            job = specialise(launch, arch, aligned)
            seen.setdefault(job[:-1], job)
    return list(seen.values())


def specialise(launch, arch, aligned=True):
    """(kernel name, signature, constexprs, attrs, num_warps, arch) as triton's JIT would build
    them for this launch's arguments; aligned=False as for tensors whose data does not start on
    a 16-byte boundary (a contiguous slice of a larger tensor)."""
    fn = launch.kernel
    meta = dict(launch.meta)
    num_warps = meta.pop("num_warps")
    signature, constexprs, attrs = {}, {}, {}
    args = iter(launch.args)
    for i, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = meta[param.name]
            continue
        value = next(args)
        align = not param.do_not_specialize_on_alignment and (aligned or not isinstance(value, torch.Tensor))
        kind, attr = native_specialize_impl(CUDABackend, value, False, not param.do_not_specialize, align)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = attr
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    freeze = lambda d: tuple(sorted((str(k), str(v)) for k, v in d.items()))
    return (fn.__name__, freeze(signature), freeze(constexprs), freeze(attrs), num_warps, arch,
            (signature, constexprs, attrs))


def resource_usage(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the kernel in `cubin`, from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_one(job):
    name, _, _, _, num_warps, arch, (signature, constexprs, attrs) = job
    src = ASTSource(getattr(kt, name), signature, constexprs=constexprs, attrs=attrs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    except Exception as exc:  # report every failure, not only the first
        return None, f"{type(exc).__name__}: {exc}"
    return resource_usage(compiled.asm["cubin"]), None


def describe(job):
    name, _, _, _, num_warps, arch, (signature, constexprs, attrs) = job
    pointers = "/".join(v[1:] for k, v in signature.items() if v.startswith("*") and k in
                        ("student_ptr", "teacher_ptr", "x_ptr"))
    consts = " ".join(f"{k}={v}" for k, v in constexprs.items())
    return f"sm_{arch} {name} {pointers} {consts} warps={num_warps} ({len(attrs)} aligned args)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SM_COUNT))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verbose", action="store_true", help="one line per compile, not per kernel")
    args = parser.parse_args()
    jobs = [job for arch in args.arch for job in launches_for(arch)]
    failures, most = 0, {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for job, (usage, error) in zip(jobs, pool.map(compile_one, jobs)):
            what = describe(job)
            if error is not None:
                failures += 1
                print(f"check_triton_compile: FAIL {what}\n{error}")
                continue
            # local memory (a register array indexed at run time) always fails; a stack frame
            # (spills) fails at the register ceiling
            spills = usage.get("STACK", 0) > 0 or usage.get("LOCAL", 0) > 0
            does_not_fit = usage.get("LOCAL", 0) > 0 or (spills and usage.get("REG", 0) >= MAX_REGISTERS)
            failures += does_not_fit
            if spills or args.verbose:
                status = "SPILL" if does_not_fit else ("spill" if spills else "ok   ")
                print(f"check_triton_compile: {status} {what}: {usage.get('REG')} registers, "
                      f"{usage.get('SHARED', 0)} B shared, {usage.get('LOCAL', 0)} B local, "
                      f"{usage.get('STACK', 0)} B stack")
            key = (job[5], job[0])
            if usage.get("REG", 0) > most.get(key, ("", -1))[1]:
                most[key] = (what, usage.get("REG", 0))
    for _, (what, regs) in sorted(most.items()):
        print(f"check_triton_compile: at most {regs} registers a thread: {what}")
    print(f"check_triton_compile: triton {triton.__version__}, {len(jobs)} compiles, {failures} failed "
          "(a compile error, local memory, or a spill at the register ceiling)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
