"""Triton kernels and launchers for the loss ops (DIR cross-entropy head, DVR cosine head).

The launchers have the signatures of the op schemas in csrc/ops.cpp and return the same tensors;
`register_cuda_impls()` makes them the CUDA implementations of those ops. They also run on CPU
tensors when TRITON_INTERPRET=1 was set before triton was imported (tests).

Layout (SPEC.md, "Why it fuses well"): student row v*B + b is view v of image b, teacher row
iq*B + b is global view iq of image b. The forward reads every logit once: program (b, j) holds
image b's V student rows as one [V_PAD, BLOCK_K] tile plus its 2 teacher rows and walks the j-th
chunk of K with online softmax, keeping per row a running maximum and the sums rescaled to it,
and per (teacher row, student row) pair a running dot product. Each program writes these partial
statistics, relative to its own maxima, to small float32 workspaces; a second kernel merges the
chunks like flash-attention's LSE merge. The backward recomputes both softmaxes from the logits
and the softmax offsets the forward stored per row (its maximum and its log-sum, kept apart so
that nothing large is rounded) and writes every gradient element once.
"""
import contextlib
import functools
import operator
from typing import Dict, NamedTuple, Tuple

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting
from ._function import TRITON_LOGIT_DTYPES, check_temperature

Tensor = torch.Tensor

# The forward holds a [V_PAD, BLOCK_K] tile of 4096 logits per step with 8 warps: compiled for
# sm_90 as launched (K and the pointers 16-aligned, tools/check_triton_compile.py) that is 64-104
# registers a thread, two programs resident per SM (without the alignment hints, as for K not a
# multiple of 16, V_PAD = 16 takes up to ~195). Eight programs per SM in the grid is then a few
# waves, so the last, partial wave costs little. A chunk of K shorter than four blocks would make
# the workspace traffic and the merge noticeable.
_FWD_TILE = 4096
_PROGRAMS_PER_SM = 8
_MIN_BLOCKS_PER_SPLIT = 4
_MAX_SPLITS = 128
# The merge holds a (V_PAD x splits) tile per statistic: past 4096 elements its registers spill
# (64 views and 128 splits did on sm_80 and sm_90), so many views get fewer splits.
_MERGE_TILE = 4096
# The backward is elementwise on the tile; 8192 logits with 8 warps stay near 64 registers.
_BWD_TILE = 8192
_GPU_MAX_BLOCK_K = 2048
# the default block's floor: reached only past 32 views, where a (views x block) tile of the
# default size keeps to it (64 views: 64-wide blocks; a floor of 128 made the forward spill)
_GPU_MIN_BLOCK_K = 32
# The interpreter pays per numpy call, not per element: big blocks are cheaper there.
_INTERPRETER_BLOCK_K = 128
_SUM_ROWS = 8
_SUM_BLOCK_K = 256


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _finite_ref(m):
    # The maximum to subtract before exponentiating. A row with no element yet, or a padding
    # view masked everywhere, has m = -inf; subtracting 0 instead keeps its exponentials at
    # exp2(-inf) = 0 where -inf - -inf would give NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _weight(m_part, m_total, scale):
    # exp2((m_part - m_total) * scale) re-expresses a sum taken relative to the maximum m_part
    # relative to m_total >= m_part; a part that has seen nothing (-inf) weighs 0. NaN or +inf
    # in the data still make the weight, and so every statistic it scales, NaN.
    return tl.exp2((m_part - _finite_ref(m_total)) * scale)


@triton.jit
def _scale_ce_cross(w, d):
    # w * d for a cross-entropy cross term d <= 0: -inf (a -inf student logit where the teacher's
    # probability is positive, the cross-entropy +inf) stays -inf where w underflows to 0.
    return tl.where(d == float("-inf"), d, w * d)


@triton.jit
def _loss_fwd_partial_kernel(
    student_ptr, teacher_ptr, center_ptr, part_s_ptr, part_t_ptr, part_d_ptr,
    B, K, chunk, inv_ts, inv_tt,
    V: tl.constexpr, V_PAD: tl.constexpr, BLOCK_K: tl.constexpr, COSINE: tl.constexpr,
):
    b = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    scale_s = inv_ts * 1.4426950408889634
    scale_t = inv_tt * 1.4426950408889634

    views = tl.arange(0, V_PAD)
    view_ok = views < V
    s_rows = student_ptr + (views * B + b).to(tl.int64)[:, None] * K
    t0_row = teacher_ptr + b.to(tl.int64) * K
    t1_row = teacher_ptr + (b + B).to(tl.int64) * K
    cols = tl.arange(0, BLOCK_K)
    k_begin = split * chunk
    k_stop = tl.minimum(k_begin + chunk, K)

    # Maxima are kept in raw logit units (before dividing by the temperature): x - max is then
    # exact or nearly so even for logits of 1e4, and only the scaled difference is rounded.
    m_s = tl.full([V_PAD], float("-inf"), tl.float32)
    l_s = tl.zeros([V_PAD], tl.float32)
    sq_s = tl.zeros([V_PAD], tl.float32)
    m_t0 = float("-inf")
    m_t1 = float("-inf")
    l_t0 = 0.0
    l_t1 = 0.0
    sq_t0 = 0.0
    sq_t1 = 0.0
    # DIR: d = sum_k e_t[k] * (s[k] - m_s) / ts, relative to both running maxima; it is <= 0,
    # so accumulating it never cancels, and ce = log(l_s) - d / l_t is a sum of two terms >= 0.
    # DVR: d = sum_k e_t[k] * e_s[k]; the softmax normalisers cancel in the cosine.
    d0 = tl.zeros([V_PAD], tl.float32)
    d1 = tl.zeros([V_PAD], tl.float32)

    for k0 in range(k_begin, k_stop, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        tile_ok = view_ok[:, None] & k_ok[None, :]
        c = tl.load(center_ptr + k, mask=k_ok, other=0.0)
        t0 = tl.load(t0_row + k, mask=k_ok, other=float("-inf")).to(tl.float32) - c
        t1 = tl.load(t1_row + k, mask=k_ok, other=float("-inf")).to(tl.float32) - c
        s = tl.load(s_rows + k[None, :], mask=tile_ok, other=float("-inf")).to(tl.float32)

        m_s_new = tl.maximum(m_s, tl.max(s, axis=1))
        a_s = _weight(m_s, m_s_new, scale_s)
        ref_s = _finite_ref(m_s_new)
        e_s = tl.exp2((s - ref_s[:, None]) * scale_s)

        m_t0_new = tl.maximum(m_t0, tl.max(t0, axis=0))
        a_t0 = _weight(m_t0, m_t0_new, scale_t)
        e_t0 = tl.exp2((t0 - _finite_ref(m_t0_new)) * scale_t)
        m_t1_new = tl.maximum(m_t1, tl.max(t1, axis=0))
        a_t1 = _weight(m_t1, m_t1_new, scale_t)
        e_t1 = tl.exp2((t1 - _finite_ref(m_t1_new)) * scale_t)

        if COSINE:
            d0 = d0 * (a_t0 * a_s) + tl.sum(e_t0[None, :] * e_s, axis=1)
            d1 = d1 * (a_t1 * a_s) + tl.sum(e_t1[None, :] * e_s, axis=1)
            sq_s = sq_s * (a_s * a_s) + tl.sum(e_s * e_s, axis=1)
            sq_t0 = sq_t0 * (a_t0 * a_t0) + tl.sum(e_t0 * e_t0, axis=0)
            sq_t1 = sq_t1 * (a_t1 * a_t1) + tl.sum(e_t1 * e_t1, axis=0)
        else:
            # Masked lanes hold -inf; zero them here, where e_t = 0 would turn them into NaN.
            x_s = tl.where(tile_ok, (s - ref_s[:, None]) * inv_ts, 0.0)
            # Moving the student reference from m_s to m_s_new adds (m_s - m_s_new)/ts per unit
            # of teacher mass seen so far, l_t (still relative to the old teacher maximum).
            shift = tl.where(m_s == float("-inf"), 0.0, (m_s - ref_s) * inv_ts)
            # A -inf student logit adds 0 where the teacher's probability is exactly 0 (its centred
            # logit is -inf: 0 log 0 in the cross-entropy, not 0 * -inf = NaN) and -inf wherever
            # it is positive, its weight underflowed or not (the cross-entropy is +inf); NaN and
            # +inf still reach the sums.
            log_zero = x_s == float("-inf")
            c0 = tl.where(log_zero, tl.where(t0 == float("-inf"), 0.0, float("-inf"))[None, :], e_t0[None, :] * x_s)
            c1 = tl.where(log_zero, tl.where(t1 == float("-inf"), 0.0, float("-inf"))[None, :], e_t1[None, :] * x_s)
            d0 = _scale_ce_cross(a_t0, d0 + shift * l_t0) + tl.sum(c0, axis=1)
            d1 = _scale_ce_cross(a_t1, d1 + shift * l_t1) + tl.sum(c1, axis=1)

        l_s = l_s * a_s + tl.sum(e_s, axis=1)
        l_t0 = l_t0 * a_t0 + tl.sum(e_t0, axis=0)
        l_t1 = l_t1 * a_t1 + tl.sum(e_t1, axis=0)
        m_s = m_s_new
        m_t0 = m_t0_new
        m_t1 = m_t1_new

    # Workspaces, record (b, split): student [3, V_PAD] (max, sum, sum of squares), teacher
    # [3, 2] (same fields, iq minor), pair dots [2, V_PAD]. Padding views are stored too, so the
    # stores need no mask; the merge never reads them as real rows.
    rec = b * num_splits + split
    ps = part_s_ptr + rec * (3 * V_PAD) + views
    tl.store(ps, m_s)
    tl.store(ps + V_PAD, l_s)
    tl.store(ps + 2 * V_PAD, sq_s)
    pt = part_t_ptr + rec * 6
    tl.store(pt, m_t0)
    tl.store(pt + 1, m_t1)
    tl.store(pt + 2, l_t0)
    tl.store(pt + 3, l_t1)
    tl.store(pt + 4, sq_t0)
    tl.store(pt + 5, sq_t1)
    pd = part_d_ptr + rec * (2 * V_PAD) + views
    tl.store(pd, d0)
    tl.store(pd + V_PAD, d1)


@triton.jit
def _loss_fwd_merge_kernel(
    part_s_ptr, part_t_ptr, part_d_ptr,
    off_s_ptr, off_t_ptr, norm_s_ptr, norm_t_ptr, pair_ptr,
    B, num_splits, inv_ts, inv_tt,
    V: tl.constexpr, V_PAD: tl.constexpr, S_PAD: tl.constexpr, COSINE: tl.constexpr,
):
    b = tl.program_id(0)
    scale_s = inv_ts * 1.4426950408889634
    scale_t = inv_tt * 1.4426950408889634
    views = tl.arange(0, V_PAD)
    view_ok = views < V
    splits = tl.arange(0, S_PAD)
    split_ok = splits < num_splits
    rec = b * num_splits + splits
    rows = views * B + b

    ps = part_s_ptr + rec[None, :] * (3 * V_PAD) + views[:, None]
    m_s = tl.load(ps, mask=split_ok[None, :], other=float("-inf"))
    l_s = tl.load(ps + V_PAD, mask=split_ok[None, :], other=0.0)
    big_m_s = tl.max(m_s, axis=1)
    ref_s = _finite_ref(big_m_s)
    w_s = _weight(m_s, big_m_s[:, None], scale_s)
    # Padding views have no mass; 1 keeps their (unstored) logs finite.
    big_l_s = tl.where(view_ok, tl.sum(l_s * w_s, axis=1), 1.0)
    log_l_s = tl.log(big_l_s)
    # each row's softmax offset in two parts (online_softmax.h, row_offset): folded into one
    # float32 lse it would be rounded to |lse| 2^-24
    tl.store(off_s_ptr + rows, ref_s, mask=view_ok)
    tl.store(off_s_ptr + V * B + rows, log_l_s, mask=view_ok)
    if COSINE:
        sq_s = tl.load(ps + 2 * V_PAD, mask=split_ok[None, :], other=0.0)
        root_s = tl.sqrt(tl.where(view_ok, tl.sum(sq_s * w_s * w_s, axis=1), 1.0))
        tl.store(norm_s_ptr + rows, root_s / big_l_s, mask=view_ok)
    else:
        shift_s = tl.where(m_s == float("-inf"), 0.0, (m_s - ref_s[:, None]) * inv_ts)

    for iq in tl.static_range(2):
        pt = part_t_ptr + rec * 6 + iq
        m_t = tl.load(pt, mask=split_ok, other=float("-inf"))
        l_t = tl.load(pt + 2, mask=split_ok, other=0.0)
        big_m_t = tl.max(m_t, axis=0)
        w_t = _weight(m_t, big_m_t, scale_t)
        big_l_t = tl.sum(l_t * w_t, axis=0)
        tl.store(off_t_ptr + iq * B + b, _finite_ref(big_m_t))
        tl.store(off_t_ptr + (2 + iq) * B + b, tl.log(big_l_t))
        d = tl.load(part_d_ptr + rec[None, :] * (2 * V_PAD) + iq * V_PAD + views[:, None],
                    mask=split_ok[None, :], other=0.0)
        if COSINE:
            sq_t = tl.load(pt + 4, mask=split_ok, other=0.0)
            root_t = tl.sqrt(tl.sum(sq_t * w_t * w_t, axis=0))
            tl.store(norm_t_ptr + iq * B + b, root_t / big_l_t)
            dot = tl.sum(d * w_t[None, :] * w_s, axis=1)
            pair = dot / (root_t * root_s)
        else:
            dot = tl.sum(_scale_ce_cross(w_t[None, :], d + shift_s * l_t[None, :]), axis=1)
            pair = log_l_s - dot / big_l_t
        tl.store(pair_ptr + iq * (V * B) + rows, pair, mask=view_ok)


@triton.jit
def _loss_bwd_kernel(
    student_ptr, teacher_ptr, center_ptr, off_s_ptr, off_t_ptr, pair_coef_ptr, row_coef_ptr,
    grad_ptr, B, K, inv_ts, inv_tt,
    V: tl.constexpr, V_PAD: tl.constexpr, BLOCK_K: tl.constexpr, COSINE: tl.constexpr,
):
    # DIR: grad = row_coef * r - mix;  DVR: grad = r * (mix - row_coef * r),
    # with mix = sum_iq pair_coef[iq, row] * q[iq] and r, q the student and teacher softmaxes.
    b = tl.program_id(0)
    kb = tl.program_id(1)
    views = tl.arange(0, V_PAD)
    view_ok = views < V
    rows = views * B + b
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < K
    tile_ok = view_ok[:, None] & k_ok[None, :]

    # exp((x - m) / T - c) as one fma, with the row's maximum m and log-sum c as the forward
    # stored them: x / T can be large, and rounding it before the subtraction would cost up to
    # percent-level errors in the softmax for extreme logits.
    c = tl.load(center_ptr + k, mask=k_ok, other=0.0)
    m_t0, m_t1 = tl.load(off_t_ptr + b), tl.load(off_t_ptr + B + b)
    c_t0, c_t1 = tl.load(off_t_ptr + 2 * B + b), tl.load(off_t_ptr + 3 * B + b)
    # Masked lanes load -inf: their softmax values are exp(-inf) = 0 rather than overflowing.
    t0 = tl.load(teacher_ptr + b.to(tl.int64) * K + k, mask=k_ok, other=float("-inf")).to(tl.float32) - c
    t1 = tl.load(teacher_ptr + (b + B).to(tl.int64) * K + k, mask=k_ok, other=float("-inf")).to(tl.float32) - c
    q0 = tl.exp(tl.fma(t0 - m_t0, inv_tt, -c_t0))
    q1 = tl.exp(tl.fma(t1 - m_t1, inv_tt, -c_t1))

    offs = rows.to(tl.int64)[:, None] * K + k[None, :]
    s = tl.load(student_ptr + offs, mask=tile_ok, other=float("-inf")).to(tl.float32)
    m_s = tl.load(off_s_ptr + rows, mask=view_ok, other=0.0)
    c_s = tl.load(off_s_ptr + V * B + rows, mask=view_ok, other=0.0)
    r = tl.exp(tl.fma(s - m_s[:, None], inv_ts, -c_s[:, None]))

    w0 = tl.load(pair_coef_ptr + rows, mask=view_ok, other=0.0)
    w1 = tl.load(pair_coef_ptr + V * B + rows, mask=view_ok, other=0.0)
    a = tl.load(row_coef_ptr + rows, mask=view_ok, other=0.0)
    # A global view and its own teacher row form no pair of the loss (coefficient 0): that
    # term is 0 even where the teacher row has no probabilities (NaN), as in the reference.
    own0 = (views == 0) & (w0 == 0)
    own1 = (views == 1) & (w1 == 0)
    mix = (tl.where(own0[:, None], 0.0, w0[:, None] * q0[None, :])
           + tl.where(own1[:, None], 0.0, w1[:, None] * q1[None, :]))
    if COSINE:
        g = r * (mix - a[:, None] * r)
    else:
        g = a[:, None] * r - mix
    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _column_sum_kernel(x_ptr, c_ptr, out_ptr, c_out_ptr, ROWS, K, BLOCK_R: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    # One program owns a block of columns and adds all rows in a fixed order: the sum is the
    # same bit for bit on every run, unlike atomics from the row-parallel forward programs.
    # It also copies the centre's columns for the backward (center_used in csrc/ops.cpp).
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < K
    tl.store(c_out_ptr + k, tl.load(c_ptr + k, mask=k_ok), mask=k_ok)
    r = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rr = r0 + r
        ok = (rr < ROWS)[:, None] & k_ok[None, :]
        acc += tl.load(x_ptr + rr.to(tl.int64)[:, None] * K + k[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + k, tl.sum(acc, axis=0), mask=k_ok)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _processors(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 2  # interpreter: a stand-in small enough that default launches stay cheap


def _view_pad(ncrops: int) -> int:
    return triton.next_power_of_2(ncrops)


def largest_block_k(v_pad: int, tile: int) -> int:
    """The largest block_k a caller may choose on a GPU for v_pad views and a kernel's default
    tile: a (views x block_k) tile lives in registers, and compiles spill above twice the default
    tile up to 16 views and above the default tile beyond (the per-view statistics take the rest:
    the forward spilled at 32 views). The kernels hold the two teacher rows too, so the block
    itself stays within twice the default's largest (the backward spilled at 2 views and 8192
    with triton 3.6). The interpreter takes any size, so only a GPU would show it;
    tools/check_triton_compile.py compiles these largest blocks."""
    per_views = (2 if v_pad <= 16 else 1) * tile // v_pad
    return max(min(per_views, 2 * _GPU_MAX_BLOCK_K), _GPU_MIN_BLOCK_K)


def _block_k(K: int, v_pad: int, device: torch.device, block_k, tile: int) -> int:
    if block_k is not None:
        if not isinstance(block_k, int) or block_k < 2 or block_k & (block_k - 1):
            raise ValueError(f"block_k must be a power of two >= 2, got {block_k!r}")
        largest = largest_block_k(v_pad, tile)
        if device.type == "cuda" and block_k > largest:
            raise ValueError(f"block_k = {block_k} with ncrops padded to {v_pad} views makes a tile of "
                             f"{v_pad * block_k} elements, too many for a GPU's registers; use block_k <= "
                             f"{largest}")
        return block_k
    if device.type == "cuda":
        cap = min(_GPU_MAX_BLOCK_K, max(_GPU_MIN_BLOCK_K, tile // v_pad))
    else:
        cap = _INTERPRETER_BLOCK_K
    return min(cap, max(16, triton.next_power_of_2(K)))


def _num_warps(v_pad: int, width: int) -> int:
    """Warps for a program holding a (v_pad x width) tile: 8 from 4096 elements up."""
    return 8 if v_pad * width >= 4096 else 4


def _max_splits(v_pad: int) -> int:
    return max(1, min(_MAX_SPLITS, _MERGE_TILE // v_pad))


def _split_count(batch: int, K: int, block_k: int, v_pad: int, device: torch.device, num_splits) -> int:
    """K chunks per image: enough programs to fill the device when the batch alone does not,
    with each chunk at least _MIN_BLOCKS_PER_SPLIT blocks long."""
    blocks = triton.cdiv(K, block_k)
    most = _max_splits(v_pad) if device.type == "cuda" else _MAX_SPLITS  # a GPU register limit, as block_k's
    if num_splits is not None:
        if not isinstance(num_splits, int) or not 1 <= num_splits <= most:
            raise ValueError(f"num_splits must be an int in [1, {most}] (ncrops padded to {v_pad} views), "
                             f"got {num_splits!r}")
        wanted = num_splits
    else:
        wanted = min(triton.cdiv(_PROGRAMS_PER_SM * _processors(device), batch),
                     max(1, blocks // _MIN_BLOCKS_PER_SPLIT), most)
    return max(1, min(wanted, blocks))


# CUDA's limit on a grid's second axis; the first takes 2**31 - 1.
_MAX_GRID_AXIS1 = 65535


def _k_blocks(K: int, block: int, v_pad: int, device: torch.device) -> int:
    """Programs along K of the backward grid's second axis, checked against CUDA's limit."""
    blocks = triton.cdiv(K, block)
    if blocks > _MAX_GRID_AXIS1:
        largest = largest_block_k(v_pad, _BWD_TILE) if device.type == "cuda" else None
        if largest is None or largest > block:
            hint = "use a larger block_k" + (f" (at most {largest} with ncrops padded to {v_pad} views)"
                                             if largest else "")
        else:
            hint = f"no block_k a GPU allows with ncrops padded to {v_pad} views is larger: use fewer crops"
        raise ValueError(f"K = {K} in blocks of block_k = {block} needs {blocks} programs along K, more than "
                         f"CUDA's {_MAX_GRID_AXIS1}; {hint}")
    return blocks


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_logits(student, teacher, center, ncrops, student_temp, teacher_temp) -> int:
    """Returns B; raises naming the offending argument."""
    if isinstance(ncrops, bool) or not hasattr(ncrops, "__index__") or ncrops < 2:
        raise ValueError(f"ncrops must be an int >= 2 (two global views at least), got {ncrops!r}")
    check_temperature("student_temp", student_temp)
    check_temperature("teacher_temp", teacher_temp)
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in TRITON_LOGIT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, K), got shape {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if teacher.shape[0] == 0 or teacher.shape[0] % 2:
        raise ValueError(f"teacher must have 2*B rows (two global views of B >= 1 images), got {teacher.shape[0]}")
    batch = teacher.shape[0] // 2
    if student.shape[0] != ncrops * batch:
        raise ValueError(f"student must have ncrops*B = {ncrops}*{batch} = {ncrops * batch} rows "
                         f"(B from teacher), got {student.shape[0]}")
    K = teacher.shape[1]
    if K == 0 or student.shape[1] != K:
        raise ValueError(f"student and teacher must have the same width K >= 1, got "
                         f"{student.shape[1]} and {K}")
    if not isinstance(center, torch.Tensor) or center.dtype != torch.float32:
        raise TypeError(f"center must be a float32 tensor, got "
                        f"{center.dtype if isinstance(center, torch.Tensor) else type(center).__name__}")
    if center.numel() != K or not center.is_contiguous():
        raise ValueError(f"center must be contiguous with K = {K} elements, got shape {tuple(center.shape)}")
    for name, x in (("teacher", teacher), ("center", center)):
        if x.device != student.device:
            raise ValueError(f"{name} must be on {student.device} like student, got {x.device}")
    if student.device.type != "cuda" and not triton_interpreting():
        raise ValueError(f"student is on {student.device}: the Triton kernels need CUDA tensors, "
                         "or TRITON_INTERPRET=1 set before importing triton to run on the CPU")
    return batch


def _check_stat(name: str, x, shape, device) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"{name} must be a float32 tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if x.device != device:
        raise ValueError(f"{name} must be on {device} like student, got {x.device}")


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
class Launch(NamedTuple):
    """One kernel launch as the launchers make it: kernel[grid](*args, **meta)."""
    kernel: object
    grid: Tuple[int, ...]
    args: Tuple[object, ...]
    meta: Dict[str, object]  # constexpr arguments and num_warps

    def __call__(self):
        self.kernel[self.grid](*self.args, **self.meta)


def forward_launches(student, teacher, center, ncrops, student_temp, teacher_temp, cosine, num_splits=None,
                     block_k=None, device=None):
    """(launches, outputs) of a forward on checked arguments: every launch with its exact
    arguments and configuration, and the tensors they fill. `device` (default student's) is the
    one the configuration is chosen for; tools/check_triton_compile.py passes CUDA with meta
    tensors to compile exactly what a GPU run launches."""
    batch = teacher.shape[0] // 2
    K = student.shape[1]
    device = student.device if device is None else device
    v_pad = _view_pad(ncrops)
    block = _block_k(K, v_pad, device, block_k, _FWD_TILE)
    splits = _split_count(batch, K, block, v_pad, device, num_splits)
    chunk = triton.cdiv(triton.cdiv(K, block), splits) * block
    splits = triton.cdiv(K, chunk)
    inv_ts, inv_tt = 1.0 / student_temp, 1.0 / teacher_temp
    rows = ncrops * batch

    f32 = dict(dtype=torch.float32, device=student.device)
    part_s = torch.empty(batch * splits * 3 * v_pad, **f32)
    part_t = torch.empty(batch * splits * 6, **f32)
    part_d = torch.empty(batch * splits * 2 * v_pad, **f32)
    off_s = torch.empty(2, rows, **f32)
    off_t = torch.empty(2, 2 * batch, **f32)
    pair = torch.empty(2, rows, **f32)
    norm_s = torch.empty(rows, **f32) if cosine else off_s  # unused by the cross-entropy head
    norm_t = torch.empty(2 * batch, **f32) if cosine else off_t
    teacher_sum = torch.empty(K, **f32)
    center_used = torch.empty(K, **f32)
    sum_block = _SUM_BLOCK_K if device.type == "cuda" else min(_SUM_BLOCK_K, block)
    s_pad = max(2, triton.next_power_of_2(splits))
    launches = [
        Launch(_loss_fwd_partial_kernel, (batch, splits),
               (student, teacher, center, part_s, part_t, part_d, batch, K, chunk, inv_ts, inv_tt),
               dict(V=ncrops, V_PAD=v_pad, BLOCK_K=block, COSINE=cosine,
                    num_warps=_num_warps(v_pad, block))),
        Launch(_loss_fwd_merge_kernel, (batch,),
               (part_s, part_t, part_d, off_s, off_t, norm_s, norm_t, pair, batch, splits, inv_ts, inv_tt),
               dict(V=ncrops, V_PAD=v_pad, S_PAD=s_pad, COSINE=cosine, num_warps=_num_warps(v_pad, s_pad))),
        Launch(_column_sum_kernel, (triton.cdiv(K, sum_block),), (teacher, center, teacher_sum, center_used, 2 * batch, K),
               dict(BLOCK_R=_SUM_ROWS, BLOCK_K=sum_block, num_warps=4)),
    ]
    if cosine:
        return launches, (off_s, off_t, norm_s, norm_t, pair, teacher_sum, center_used)
    return launches, (off_s, off_t, pair, teacher_sum, center_used)


def backward_launches(student, teacher, center, offset_student, offset_teacher, pair_coef, row_coef, ncrops,
                      student_temp, teacher_temp, cosine, block_k=None, device=None):
    """(launches, grad) of a backward on checked arguments, as forward_launches."""
    batch = teacher.shape[0] // 2
    K = student.shape[1]
    device = student.device if device is None else device
    v_pad = _view_pad(ncrops)
    block = _block_k(K, v_pad, device, block_k, _BWD_TILE)
    grad = torch.empty_like(student)
    launches = [Launch(
        _loss_bwd_kernel, (batch, _k_blocks(K, block, v_pad, device)),
        (student, teacher, center, offset_student, offset_teacher, pair_coef, row_coef, grad,
         batch, K, 1.0 / student_temp, 1.0 / teacher_temp),
        dict(V=ncrops, V_PAD=v_pad, BLOCK_K=block, COSINE=cosine, num_warps=_num_warps(v_pad, block)))]
    return launches, grad


def _forward(student, teacher, center, ncrops, student_temp, teacher_temp, cosine, num_splits, block_k):
    _check_logits(student, teacher, center, ncrops, student_temp, teacher_temp)
    ncrops = operator.index(ncrops)  # a constexpr of the kernels: a Python int (not numpy's)
    # the default backward's grid, refused now rather than after the forward has run
    K = student.shape[1]
    v_pad = _view_pad(ncrops)
    _k_blocks(K, _block_k(K, v_pad, student.device, None, _BWD_TILE), v_pad, student.device)
    launches, outputs = forward_launches(student, teacher, center, ncrops, student_temp, teacher_temp, cosine,
                                         num_splits, block_k)
    with _device_guard(student):
        for launch in launches:
            launch()
    return outputs


def _backward(student, teacher, center, offset_student, offset_teacher, pair_coef, row_coef, names,
              ncrops, student_temp, teacher_temp, cosine, block_k):
    batch = _check_logits(student, teacher, center, ncrops, student_temp, teacher_temp)
    ncrops = operator.index(ncrops)
    rows = ncrops * batch
    device = student.device
    _check_stat("offset_student", offset_student, (2, rows), device)
    _check_stat("offset_teacher", offset_teacher, (2, 2 * batch), device)
    _check_stat(names[0], pair_coef, (2, rows), device)
    _check_stat(names[1], row_coef, (rows,), device)
    launches, grad = backward_launches(student, teacher, center, offset_student, offset_teacher, pair_coef, row_coef,
                                       ncrops, student_temp, teacher_temp, cosine, block_k)
    with _device_guard(student):
        for launch in launches:
            launch()
    return grad


def dir_loss_fwd(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int, student_temp: float,
                 teacher_temp: float, *, num_splits=None, block_k=None):
    """DINO cross-entropy head, forward statistics.

    student (ncrops*B, K) and teacher (2*B, K) logits in float32/float16/bfloat16, contiguous,
    rows view-major; center float32 with K elements. Returns float32
    (offset_student (2, ncrops*B), offset_teacher (2, 2*B), ce (2, ncrops*B), teacher_sum (K,),
    center_used (K,), a copy of center) with
    ce[iq, v*B+b] = -<q[iq,b], log_softmax(student[v*B+b] / student_temp)> for every (iq, v)
    and each row's softmax offset (its maximum, its log-sum) as csrc/ops.cpp defines it.
    num_splits: K chunks per image (default: chosen from B, K and the SM count).
    block_k: K elements per step, a power of two (default: chosen from ncrops and the device).
    """
    return _forward(student, teacher, center, ncrops, student_temp, teacher_temp, False, num_splits, block_k)


def dir_loss_bwd(student: Tensor, teacher: Tensor, center: Tensor, offset_student: Tensor,
                 offset_teacher: Tensor, alpha: Tensor, beta: Tensor, ncrops: int, student_temp: float,
                 teacher_temp: float, *, block_k=None) -> Tensor:
    """grad[v*B+b] = alpha[v*B+b] * softmax(student[v*B+b]/ts) - sum_iq beta[iq, v*B+b] * q[iq, b],
    the term of a global view's own teacher row (iq = v) left out where its beta is 0.

    offset_student (2, ncrops*B), offset_teacher (2, 2*B) from dir_loss_fwd; alpha (ncrops*B,)
    and beta (2, ncrops*B) float32. Returns grad (ncrops*B, K) in student's dtype.
    """
    return _backward(student, teacher, center, offset_student, offset_teacher, beta, alpha, ("beta", "alpha"),
                     ncrops, student_temp, teacher_temp, False, block_k)


def dvr_loss_fwd(student: Tensor, teacher: Tensor, center: Tensor, ncrops: int, student_temp: float,
                 teacher_temp: float, *, num_splits=None, block_k=None):
    """Cosine head, forward statistics, r = softmax(student/ts), p = softmax((teacher-center)/tt).

    Inputs as dir_loss_fwd. Returns float32 (offset_student (2, ncrops*B), offset_teacher (2, 2*B),
    norm_student = ||r|| (ncrops*B,), norm_teacher = ||p|| (2*B,),
    cos (2, ncrops*B) = <p[iq,b], r[v*B+b]> / (||p|| ||r||), teacher_sum (K,), center_used (K,)).
    """
    return _forward(student, teacher, center, ncrops, student_temp, teacher_temp, True, num_splits, block_k)


def dvr_loss_bwd(student: Tensor, teacher: Tensor, center: Tensor, offset_student: Tensor,
                 offset_teacher: Tensor, u: Tensor, z: Tensor, ncrops: int, student_temp: float,
                 teacher_temp: float, *, block_k=None) -> Tensor:
    """grad[v*B+b] = r * (sum_iq u[iq, v*B+b] * p[iq, b] - z[v*B+b] * r), r and p as in dvr_loss_fwd,
    the own-view term (iq = v) left out where its u is 0.

    u (2, ncrops*B) and z (ncrops*B,) float32. Returns grad (ncrops*B, K) in student's dtype.
    """
    return _backward(student, teacher, center, offset_student, offset_teacher, u, z, ("u", "z"),
                     ncrops, student_temp, teacher_temp, True, block_k)


_cuda_library = None


def register_cuda_impls() -> None:
    """Registers the launchers as the CUDA kernels of the ops defined by clever_kernels._C
    (import it first). Idempotent."""
    global _cuda_library
    if _cuda_library is not None:
        return
    lib = torch.library.Library("clever_kernels", "IMPL")
    for name, fn in (("dir_loss_fwd", dir_loss_fwd), ("dir_loss_bwd", dir_loss_bwd),
                     ("dvr_loss_fwd", dvr_loss_fwd), ("dvr_loss_bwd", dvr_loss_bwd)):
        lib.impl(name, fn, "CUDA")
    _cuda_library = lib
