"""Fused RDA step in N:M granularity (granularity ("nm", N, M); the reference's nm_soft_threshold): element mode's
per-element update (A, om, B, T, v as kernels/rda_step.py's ``_update``), then in each group of M consecutive
weights along a row only the N largest soft-thresholded weights kept, over all N:M tensors of a param group.

A tensor is viewed as [rows, K], K = prod(shape[1:]); a row's groups are its elements j M .. j M + M - 1, the last
one shorter when M does not divide K. A program takes GROUPS groups at a time as a [GROUPS, MP] block (MP: M
rounded up to a power of two, lanes past a group's end masked), so every per-element value keeps the layout its
loads have. The kept elements are picked by reductions along the lanes (``_keep``): each element's |w| as an
integer key made distinct by its lane (ties to the lower lane, NaN as +inf: the reference's stable sort), then
the N largest taken one max at a time, or the MP - N smallest dropped one min at a time when that is fewer. A
rank by a [GROUPS, MP, MP] compare (M^2 per group) took a 3-D layout of its own and its conversions: at M = 32,
87 registers for blocks of 256 lanes, 201 at 1024 (with vectors); the reductions take at most M / 2 passes of
[GROUPS, MP] and no conversion.

Chunks come from kernels/tensor_table.py as in the element kernels, counted in lanes (a tensor has rows x
ceil(K / M) groups of MP lanes), so a chunk is a whole number of groups. When every tensor of the launch has
K % M == 0 (EVEN) group g starts at g M; otherwise a group's row and position come without a division: the row of
the chunk's first group from the host (tensor_table.chunk_groups), then rows advance by a compare or a multiply
(``_rows_ahead``). EVEN launches with M a power of two and 16-byte aligned arrays (ALIGNED) access whole groups
as vectors; the others element by element.

The reweighting's max of this step's A (A is per element, as in element mode) comes from kernels/rda_step.py's
max kernel, or from the caller (``given_max``). The device form (DEVICE_SCALARS) reads the step's scalars as the
element kernels do (math.step_scalars), and a set found_inf makes the kernel write nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import dual_average, load_f32, nonzeros, reweight_factor, soft_threshold, step_scalars, store, tensor_ptr
from .rda_step import chunk_bounds
from .tensor_table import TORCH_TO_TL, address_table, aligned, chunk_groups, chunk_table, given_max_A, on_device

# rows of the address table: tensor addresses, then integers per tensor
ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_LANES, ROW_K, ROW_GPR, ROW_MAGIC = (tl.constexpr(i) for i in range(10))
# Lanes per block: 1024 in the vector variants (4 per thread and array at 8 warps, one 16-byte access each, as the
# element kernels: 48-78 registers, sm_90), 512 in the others (one address per element: 59-72 registers; at 1024
# they took 128-160, and some spilled).
LANES = 1024
NUM_WARPS = 8
INF = tl.constexpr(float("inf"))
PICKED, DROPPED = tl.constexpr(-(1 << 62)), tl.constexpr(1 << 62)  # below / above every key of _keep


def block_groups(mp: int, vectors: bool) -> int:
    """GROUPS of a launch whose groups take mp lanes."""
    return max(1, (LANES if vectors else LANES // 2) // mp)


def row_magic(groups_per_row: int, groups: int) -> int:
    """_rows_ahead's multiplier, ceil(2**32 / groups per row), where rows are shorter than a block (else 0)."""
    return -(-(1 << 32) // groups_per_row) if 0 < groups_per_row < groups else 0


@triton.jit
def _rows_ahead(q, gpr, magic, GROUPS: tl.constexpr):
    """q // gpr for 0 <= q < gpr + GROUPS, with no division (a 64-bit one is a subroutine call that spills): one
    row on at most when gpr >= GROUPS; else the high word of q * magic, magic = ceil(2**32 / gpr), exact because
    q * (magic * gpr - 2**32) < q * gpr < 2 GROUPS**2 < 2**32 (int64: no overflow for any gpr)."""
    if gpr >= GROUPS:
        rows = (q >= gpr).to(tl.int64)
    else:
        rows = (q * magic) >> 32
    return rows


@triton.jit
def _keep(w, mask, N: tl.constexpr, MP: tl.constexpr):
    """[GROUPS, MP]: True on the N largest |w| of each group (a row of the block), ties to the lower lane, NaN above
    everything (as +inf). |w| orders as its bits (an int32 >= 0; NaN as inf's), masked lanes as -1, below every
    element; with the lane in the low bits every key of a group is distinct. The N largest are picked one max at a
    time, or the MP - N smallest dropped one min at a time when that is fewer (short groups' masked lanes go
    first): min(N, MP - N) reductions per group, no [GROUPS, MP, MP] compare (and its registers)."""
    key = tl.where(w != w, INF, tl.abs(w)).to(tl.int32, bitcast=True)
    if mask is not None:
        key = tl.where(mask, key, -1)
    lane = tl.arange(0, MP)[None, :]
    key = key.to(tl.int64) * MP + (MP - 1 - lane)  # larger: ranks first (an equal |w| at a lower lane)
    if 2 * N <= MP:
        for _ in tl.static_range(N):
            key = tl.where(key == tl.max(key, axis=1)[:, None], PICKED, key)
        keep = key == PICKED
    else:
        for _ in tl.static_range(MP - N):
            key = tl.where(key == tl.min(key, axis=1)[:, None], DROPPED, key)
        keep = key != DROPPED
    return keep


@triton.jit
def _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, offs, mask, m, skip, inv_scale, lr, lam, beta, beta_b, alpha,
            weight_decay, max_factor, N: tl.constexpr, MP: tl.constexpr, REWEIGHT: tl.constexpr,
            MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr, W_DTYPE: tl.constexpr):
    """One block's step (written unless skip): rda_step._update's element math (factor 1: every N:M tensor is
    penalized), then the top N of each group kept; returns its nonzeros (of the unchanged weights when skipped)."""
    w = load_f32(w_ptr, offs, mask)
    A_new = beta_b * load_f32(A_ptr, offs, mask) + (1.0 - beta_b) * tl.abs(w)  # the max kernel's A, same bits
    if REWEIGHT:
        om = reweight_factor(A_new, m, max_factor)
    else:
        om = 1.0
    B_new = alpha * load_f32(B_ptr, offs, mask) + lr * om
    T_new, v_new = dual_average(w, load_f32(g_ptr, offs, mask), load_f32(T_ptr, offs, mask),
                                load_f32(v_ptr, offs, mask), inv_scale, lr, alpha, beta, weight_decay,
                                HAS_SCALE, MAXIMIZE)
    w_soft = soft_threshold(T_new, lam * B_new)
    if not skip:  # stored before the ranking, so that only w_soft (and w) stay live across it
        store(A_ptr, offs, mask, A_new)
        store(B_ptr, offs, mask, B_new)
        store(T_ptr, offs, mask, T_new)
        store(v_ptr, offs, mask, v_new)
    w_new = tl.where(_keep(w_soft, mask, N, MP), w_soft, 0.0)
    if not skip:
        store(w_ptr, offs, mask, w_new)
    return nonzeros(tl.where(skip, w, w_new), mask, W_DTYPE)


@triton.jit
def _step_kernel(table, n_tensors, chunk_tensor, chunk_start, chunk_row, max_A, nnz, inv_scale, device_scalars,
                 found_inf, lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                 N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, GROUPS: tl.constexpr, EVEN: tl.constexpr,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 ALIGNED: tl.constexpr, CHUNK: tl.constexpr):
    # the chunk in lanes (MP per group), then in groups: its first group, its groups, those in full blocks
    t, start, n, full = chunk_bounds(table, ROW_LANES, n_tensors, chunk_tensor, chunk_start, GROUPS * MP, CHUNK)
    first, n, full = start // MP, n // MP, full // MP
    m = tl.load(max_A + t)
    skip, lr, lam, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha,
                                                      DEVICE_SCALARS)
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    g_ptr = tensor_ptr(table, ROW_G, n_tensors, t, G_DTYPE, ALIGNED)
    T_ptr = tensor_ptr(table, ROW_T, n_tensors, t, tl.float32, ALIGNED)
    B_ptr = tensor_ptr(table, ROW_B, n_tensors, t, tl.float32, ALIGNED)
    A_ptr = tensor_ptr(table, ROW_A, n_tensors, t, tl.float32, ALIGNED)
    v_ptr = tensor_ptr(table, ROW_V, n_tensors, t, tl.float32, ALIGNED)
    lane = tl.arange(0, MP)[None, :]
    block = tl.arange(0, GROUPS)
    count = tl.zeros([GROUPS, MP], tl.int32)
    if EVEN:  # every row a whole number of groups: group g starts at g M
        if M == MP:  # full blocks are whole: no mask (vectors when ALIGNED)
            for i in range(0, full, GROUPS):
                offs = (first + i + block)[:, None] * M + lane
                count += _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, offs, None, m, skip, inv_scale, lr, lam,
                                 beta, beta_b, alpha, weight_decay, max_factor, N, MP, REWEIGHT, MAXIMIZE, HAS_SCALE,
                                 W_DTYPE)
        else:
            full = 0
        for i in range(full, n, GROUPS):  # the ragged end (every block when M < MP), masked
            offs = (first + i + block)[:, None] * M + lane
            mask = ((i + block)[:, None] < n) & (lane < M)
            count += _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, offs, mask, m, skip, inv_scale, lr, lam,
                             beta, beta_b, alpha, weight_decay, max_factor, N, MP, REWEIGHT, MAXIMIZE, HAS_SCALE,
                             W_DTYPE)
    else:  # rows end in a short group: the block's first group is at (row, j), each group's own row found from it
        K = tl.load(table + ROW_K * n_tensors + t)
        gpr = tl.load(table + ROW_GPR * n_tensors + t)
        magic = tl.load(table + ROW_MAGIC * n_tensors + t)
        row = tl.load(chunk_row + tl.program_id(0))
        j = first - row * gpr
        for i in range(0, n, GROUPS):
            q = j + block
            rows = _rows_ahead(q, gpr, magic, GROUPS)
            pos = (q - rows * gpr) * M  # the group's first element in its row
            offs = ((row + rows) * K + pos)[:, None] + lane
            mask = ((i + block)[:, None] < n) & (lane < tl.minimum(K - pos, M)[:, None])
            count += _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, offs, mask, m, skip, inv_scale, lr, lam,
                             beta, beta_b, alpha, weight_decay, max_factor, N, MP, REWEIGHT, MAXIMIZE, HAS_SCALE,
                             W_DTYPE)
            carry = _rows_ahead(j + GROUPS, gpr, magic, GROUPS)
            row, j = row + carry, j + GROUPS - carry * gpr
    tl.atomic_add(nnz + t, tl.sum(count).to(tl.int64))


def rda_nm_step(params, grads, T, B, A, v, bucket, s, given_max=None) -> torch.Tensor:
    """N:M-mode RDA over a constrained bucket's tensors (all contiguous, 2+ dims, penalized; one param dtype and
    one grad dtype) with the step's scalars ``s`` (host values, or the device form); returns each tensor's nonzero
    count. ``given_max``: the reweighting's max A per tensor (kernels/rda_step.py's max kernel, or the caller's);
    None when the step does not reweight."""
    device = params[0].device
    n = len(params)
    nm_n, nm_m = bucket.nm
    mp = triton.next_power_of_2(nm_m)
    plans = bucket.plans
    assert all(plan.constrained and plan.penalized for plan in plans), "a constrained bucket holds N:M tensors only"
    rows = [w.numel() // plan.row if plan.row else 0 for w, plan in zip(params, plans)]
    assert all(r * plan.row == w.numel() for r, plan, w in zip(rows, plans, params)), "rows of plan.row elements"
    per_row = [-(-plan.row // nm_m) for plan in plans]
    lanes = [r * g * mp for r, g in zip(rows, per_row)]
    even = all(plan.row % nm_m == 0 for plan in plans)
    # whole groups are vectors where every group starts at a multiple of M (a power of two) of aligned arrays
    vectors = even and mp == nm_m and aligned([*params, *grads, *T, *B, *A, *v])
    groups = block_groups(mp, vectors)
    table = address_table([list(params), list(grads), list(T), list(B), list(A), list(v)],
                          [lanes, [plan.row for plan in plans], per_row, [row_magic(g, groups) for g in per_row]],
                          device)
    chunk_tensor, chunk_start, chunk = chunk_table(lanes, device)
    assert chunk % (groups * mp) == 0, "chunks are whole blocks"
    # the row of each chunk's first group (divided on the host, once); EVEN launches need none
    chunk_row = chunk_start if even else chunk_groups(lanes, [g * mp for g in per_row], device)
    max_A, _ = given_max_A(given_max, n, device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    if chunk_tensor.numel() == 0:  # only empty tensors
        return nnz
    device_form = s.device is not None
    device_scalars = s.device if device_form else max_A  # (an unused pointer)
    found_inf = s.found_inf if s.found_inf is not None else torch.zeros((), device=device) if device_form else max_A
    with on_device(device):
        _step_kernel[(chunk_tensor.numel(),)](
            table, n, chunk_tensor, chunk_start, chunk_row, max_A, nnz,
            s.inv_scale if s.inv_scale is not None else max_A, device_scalars, found_inf,
            s.lr, s.lam, s.beta, s.beta_b, s.averaging, s.weight_decay, s.max_factor,
            N=nm_n, M=nm_m, MP=mp, GROUPS=groups, EVEN=even, REWEIGHT=s.reweight, MAXIMIZE=s.maximize,
            HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=device_form, W_DTYPE=TORCH_TO_TL[params[0].dtype],
            G_DTYPE=TORCH_TO_TL[grads[0].dtype], ALIGNED=vectors, CHUNK=chunk, num_warps=NUM_WARPS,
        )
    return nnz
