"""Compiles every Triton loss kernel, at the specialisations its launchers pick for GPU shapes,
down to cubin for sm_80 and sm_90 with the installed triton, no GPU needed; prints each kernel's
registers, spills and shared memory (cuobjdump's resource usage) and fails on any compile error
or register spill.

The test suite runs these kernels through the interpreter, which accepts code a GPU compile
rejects (types, layouts, shared-memory limits); this is the check that the kernels lower for real
devices. Run it with each triton the project supports: CI's (`make test`) and the GPU machines'
(`TRITON_FOR_CHECK=3.6.0 make triton-check` installs that one into a scratch folder).

    python tools/check_triton_compile.py [--arch 80 90] [--jobs 2]
"""
import argparse
import concurrent.futures
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
from triton.compiler import ASTSource  # noqa: E402

from clever_kernels.loss import _triton as kt  # noqa: E402

TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
STUDENT_POINTERS = {"student_ptr", "grad_ptr"}
TEACHER_POINTERS = {"teacher_ptr", "x_ptr"}  # x_ptr: the rows a one-tensor kernel reads
# (student, teacher) logit dtypes: one dtype, or reduced-precision students (autocast) with
# float32 teachers
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
               (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]
FLOAT_SCALARS = {"inv_ts", "inv_tt", "inv_temp"}
INT_SCALARS = {"B", "K", "chunk", "num_splits", "ROWS"}
SM_COUNT = 132  # H100 / H200: what the default split count is chosen for


def signature(fn, dtypes, constexprs):
    """Triton signature of `fn` for (student, teacher) logits of `dtypes`: student logits and
    gradients in the first, teacher rows in the second, every other pointer float32 (statistics,
    centre, workspaces), scalars as the launchers pass them."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in STUDENT_POINTERS:
            sig[name] = "*" + TRITON_DTYPE[dtypes[0]]
        elif name in TEACHER_POINTERS:
            sig[name] = "*" + TRITON_DTYPE[dtypes[1]]
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        elif name in INT_SCALARS:
            sig[name] = "i32"
        else:
            raise SystemExit(f"check_triton_compile: {fn.__name__}: no type rule for argument {name!r}; "
                             "extend the rules in this file")
    return sig


def specialisations():
    """(kernel, (student dtype, teacher dtype), constexprs, num_warps) for every launch the loss
    makes at the paper's shape (B = 128, K = 65536) and at small K, for 2, 4 and 10 crops, both
    heads and every pair of DTYPE_PAIRS. A one-tensor kernel reads either dtype as its rows."""
    cuda = torch.device("cuda", 0)  # an explicit index: no device query
    kt._sm_count = lambda index: SM_COUNT
    seen, out = set(), []

    def add(fn, dtypes, constexprs, num_warps):
        key = (fn.__name__, dtypes, tuple(sorted(constexprs.items())), num_warps)
        if key not in seen:
            seen.add(key)
            out.append((fn, dtypes, constexprs, num_warps))

    for dtypes in DTYPE_PAIRS:
        student, teacher = dtypes
        for batch, k in ((128, 65536), (8, 1000)):
            for ncrops in (2, 4, 10):
                v_pad = kt._view_pad(ncrops)
                for cosine in (False, True):
                    block = kt._block_k(k, v_pad, cuda, None, kt._FWD_TILE)
                    splits = kt._split_count(batch, k, block, cuda, None)
                    add(kt._loss_fwd_partial_kernel, dtypes,
                        dict(V=ncrops, V_PAD=v_pad, BLOCK_K=block, COSINE=cosine),
                        kt._num_warps(v_pad, block, forward=True))
                    add(kt._loss_fwd_merge_kernel, (torch.float32, torch.float32),  # statistics only
                        dict(V=ncrops, V_PAD=v_pad, S_PAD=max(2, triton.next_power_of_2(splits)), COSINE=cosine), 4)
                    block = kt._block_k(k, v_pad, cuda, None, kt._BWD_TILE)
                    add(kt._loss_bwd_kernel, dtypes, dict(V=ncrops, V_PAD=v_pad, BLOCK_K=block, COSINE=cosine),
                        kt._num_warps(v_pad, block))
            for centred, rows in ((False, student), (True, teacher)):  # the launcher's two calls
                add(kt._row_offsets_kernel, (rows, rows),
                    dict(HAS_CENTER=centred, LIMIT=kt._RECOMPUTE_LSE_ABOVE,
                         BLOCK_K=min(kt._OFFSET_BLOCK_K, triton.next_power_of_2(k))), 4)
            add(kt._column_sum_kernel, (teacher, teacher), dict(BLOCK_R=kt._SUM_ROWS, BLOCK_K=kt._SUM_BLOCK_K), 4)
    return out


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
    fn_name, dtype_names, constexprs, num_warps, arch = job
    fn = getattr(kt, fn_name)
    dtypes = tuple(getattr(torch, name) for name in dtype_names.split("/"))
    src = ASTSource(fn, signature(fn, dtypes, constexprs), constexprs=constexprs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    except Exception as exc:  # report every failure, not only the first
        return job, None, f"{type(exc).__name__}: {exc}"
    return job, resource_usage(compiled.asm["cubin"]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verbose", action="store_true", help="one line per compile, not per kernel")
    args = parser.parse_args()
    jobs = [(fn.__name__, "/".join(str(d).split(".")[1] for d in dtypes), constexprs, warps, arch)
            for fn, dtypes, constexprs, warps in specialisations() for arch in args.arch]
    failures, most = 0, {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for (name, dtype, constexprs, warps, arch), usage, error in pool.map(compile_one, jobs):
            spec = " ".join(f"{k}={v}" for k, v in constexprs.items())
            what = f"sm_{arch} {name} {dtype} {spec} warps={warps}"
            if error is not None:
                failures += 1
                print(f"check_triton_compile: FAIL {what}\n{error}")
                continue
            spilled = usage.get("LOCAL", 0) > 0 or usage.get("STACK", 0) > 0
            failures += spilled
            if spilled or args.verbose:
                print(f"check_triton_compile: {'SPILL' if spilled else 'ok   '} {what}: "
                      f"{usage.get('REG')} registers, {usage.get('SHARED', 0)} B shared, "
                      f"{usage.get('LOCAL', 0)} B local")
            key = (arch, name)
            if usage.get("REG", 0) > most.get(key, ("", -1))[1]:
                most[key] = (f"{dtype} {spec} warps={warps}", usage.get("REG", 0))
    for (arch, name), (spec, regs) in sorted(most.items()):
        print(f"check_triton_compile: sm_{arch} {name}: at most {regs} registers a thread ({spec})")
    print(f"check_triton_compile: triton {triton.__version__}, {len(jobs)} compiles, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
