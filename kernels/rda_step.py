"""Fused RDA step (docs/ALGORITHMS.md section 1) over all tensors of a param group, in two launches:

1. ``_max_A_kernel``: this step's A = beta_b A + (1 - beta_b) a, reduced to its per-tensor max (atomic max);
   A is not written, so the pass costs one read of w and A.
2. ``_step_kernel``: recomputes the same A (same code, same bits), then om, B, T, v and w, writes them, and
   counts the nonzeros of each tensor.

The max must be this step's, over the whole tensor (the reference's), so it needs its own pass; a lagged max
would save it (see bench/NOTES.md). Structured modes take `a` from the per-group mean |w| the front end passes
(``group_means``), broadcast by index: each block knows the group and position of its first element, and an
element's group offset within the block takes a multiply or a compare (``_div_small``), not a division.

A program runs the full BLOCKs of its chunk without a mask and the ragged end as one masked block. When every
array of the launch is 16-byte aligned (checked on the host: ALIGNED), the full blocks' accesses are 16-byte
vectors (8 bytes for 16-bit weights and gradients); otherwise, and in the tail, element by element.

The device form (``scalars.device``: capturable mode, and steps traced by torch.compile): lr, averaging, the decays
and lam are read from a device tensor, and a GradScaler's found_inf makes the kernels write nothing, with no host
sync, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import (dual_average, finite_or_zero, load_f32, nonzeros, reweight_factor, soft_threshold, step_scalars,
                   store, tensor_ptr)
from .rda_block_step import rda_block_step
from .tensor_table import (TORCH_TO_TL, Contiguous, address_table, aligned, chunk_groups, chunk_table, float_table,
                           given_max_A, kernel_grads, on_device)

BLOCK = 1024
# 8 warps: 4 elements per thread and array, one 16-byte access each (8 bytes for 16-bit w and g), 62-70 registers:
# 3-4 programs (24-32 warps) per SM. At 4 warps a thread held 8 elements per array and took 126-149 registers.
NUM_WARPS = 8
# rows of the address table: tensor addresses, then integers per tensor
ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_A_GROUP, ROW_NUMEL, ROW_GROUP_SIZE, ROW_GROUP_MAGIC = (
    tl.constexpr(i) for i in range(10))


@triton.jit
def chunk_bounds(table, row_numel, n_tensors, chunk_tensor, chunk_start, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """(tensor, first element, elements, elements in full blocks) of this program's chunk."""
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.multiple_of(tl.load(chunk_start + c), BLOCK)  # chunks start at multiples of CHUNK, one of BLOCK
    n = tl.minimum(CHUNK, tl.load(table + row_numel * n_tensors + t) - start)
    return t, start, n, n - n % BLOCK


@triton.jit
def block_offsets(start, BLOCK: tl.constexpr):
    """Offsets of a full block: BLOCK contiguous elements from a multiple of BLOCK (start's divisibility is not
    known to the compiler, and vector accesses need it)."""
    return tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK), BLOCK), BLOCK)


@triton.jit
def _div_small(q, size, magic, BLOCK: tl.constexpr):
    """q // size for 0 <= q < size + BLOCK, with no integer division (a 64-bit one is a long instruction
    sequence): q spans two groups at most when size >= BLOCK; else the high word of q * magic, magic =
    ceil(2**32 / size), is exact because q * (magic * size - 2**32) < 2 BLOCK * BLOCK < 2**32 (q int64: any size)."""
    if size >= BLOCK:
        quotient = (q >= size).to(tl.int64)
    else:
        quotient = tl.umulhi(q.to(tl.uint32), magic.to(tl.uint32)).to(tl.int64)
    return quotient


@triton.jit
def _group_start(table, n_tensors, t, start, chunk_group):
    """(group size, its magic (see _div_small), group of element start, start's position in it): the group from
    the host's chunk table (tensor_table.chunk_groups), so no program divides; blocks move on with _next_group."""
    size = tl.load(table + ROW_GROUP_SIZE * n_tensors + t)
    magic = tl.load(table + ROW_GROUP_MAGIC * n_tensors + t)
    group = tl.load(chunk_group + tl.program_id(0))
    return size, magic, group, start - group * tl.maximum(size, 1)


@triton.jit
def _next_group(group, pos, size, magic, BLOCK: tl.constexpr):
    """(group, position) BLOCK elements further on."""
    carry = _div_small(pos + BLOCK, size, magic, BLOCK)
    return group + carry, pos + BLOCK - carry * size


@triton.jit
def _new_A(A_ptr, means_ptr, offs, mask, w, beta_b, size, magic, group, pos, BLOCK: tl.constexpr):
    """A = beta_b * A + (1 - beta_b) * a, with a = |w| or the mean |w| of the element's group; the block's first
    element is at position pos of group ``group`` (groups of ``size`` elements)."""
    A_old = load_f32(A_ptr, offs, mask)
    if size > 1:
        groups = group + _div_small(pos + tl.arange(0, BLOCK), size, magic, BLOCK)
        a = load_f32(means_ptr, groups, mask)
    else:
        a = tl.abs(w)
    return beta_b * A_old + (1.0 - beta_b) * a


@triton.jit
def _max_A_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, chunk_group, max_A, device_scalars, found_inf,
                  lr, beta, beta_b, alpha,
                  DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                  BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, n, full = chunk_bounds(table, ROW_NUMEL, n_tensors, chunk_tensor, chunk_start, BLOCK, CHUNK)
    skip, lr, _, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, 0.0, beta, beta_b, alpha,
                                                    DEVICE_SCALARS)
    if tl.load(factors + t) == 0 or skip:  # unpenalized tensors have no A
        return
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    A_ptr = tensor_ptr(table, ROW_A, n_tensors, t, tl.float32, ALIGNED)
    means_ptr = tensor_ptr(table, ROW_A_GROUP, n_tensors, t, tl.float32, False)
    size, magic, group, pos = _group_start(table, n_tensors, t, start, chunk_group)
    running = tl.zeros([BLOCK], tl.float32)
    for i in range(0, full, BLOCK):  # full blocks: no mask, vector accesses when ALIGNED
        offs = block_offsets(start + i, BLOCK)
        A_new = _new_A(A_ptr, means_ptr, offs, None, load_f32(w_ptr, offs, None), beta_b, size, magic, group, pos,
                       BLOCK)
        running = tl.maximum(running, finite_or_zero(A_new))
        group, pos = _next_group(group, pos, size, magic, BLOCK)
    if full < n:  # the ragged end, masked
        offs = start + full + tl.arange(0, BLOCK)
        mask = offs < start + n
        A_new = _new_A(A_ptr, means_ptr, offs, mask, load_f32(w_ptr, offs, mask), beta_b, size, magic, group, pos,
                       BLOCK)
        running = tl.maximum(running, tl.where(mask, finite_or_zero(A_new), 0.0))
    tl.atomic_max(max_A + t, tl.max(running, axis=0))


@triton.jit
def _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, means_ptr, offs, mask, size, magic, group, pos, factor, m,
            skip, inv_scale, lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
            REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr, W_DTYPE: tl.constexpr,
            BLOCK: tl.constexpr):
    """One block's step (written unless skip); returns its nonzeros (of the unchanged weights when skipped)."""
    w = load_f32(w_ptr, offs, mask)
    threshold = tl.zeros([BLOCK], tl.float32)
    if factor > 0:
        A_new = _new_A(A_ptr, means_ptr, offs, mask, w, beta_b, size, magic, group, pos, BLOCK)
        if REWEIGHT:
            om = reweight_factor(A_new, m, max_factor)
        else:
            om = tl.full([BLOCK], 1.0, tl.float32)
        B_new = alpha * load_f32(B_ptr, offs, mask) + lr * (om * factor)
        if not skip:
            store(A_ptr, offs, mask, A_new)
            store(B_ptr, offs, mask, B_new)
        threshold = lam * B_new
    T_new, v_new = dual_average(w, load_f32(g_ptr, offs, mask), load_f32(T_ptr, offs, mask),
                                load_f32(v_ptr, offs, mask), inv_scale, lr, alpha, beta, weight_decay,
                                HAS_SCALE, MAXIMIZE)
    w_new = soft_threshold(T_new, threshold)
    if not skip:
        store(T_ptr, offs, mask, T_new)
        store(v_ptr, offs, mask, v_new)
        store(w_ptr, offs, mask, w_new)
    return nonzeros(tl.where(skip, w, w_new), mask, W_DTYPE)


@triton.jit
def _step_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, chunk_group, max_A, nnz, inv_scale,
                 device_scalars,
                 found_inf, lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, n, full = chunk_bounds(table, ROW_NUMEL, n_tensors, chunk_tensor, chunk_start, BLOCK, CHUNK)
    factor = tl.load(factors + t)  # sqrt(group size), 0 when the tensor is not penalized
    m = tl.load(max_A + t)
    skip, lr, lam, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha,
                                                      DEVICE_SCALARS)
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    g_ptr = tensor_ptr(table, ROW_G, n_tensors, t, G_DTYPE, ALIGNED)
    T_ptr = tensor_ptr(table, ROW_T, n_tensors, t, tl.float32, ALIGNED)
    B_ptr = tensor_ptr(table, ROW_B, n_tensors, t, tl.float32, ALIGNED)
    A_ptr = tensor_ptr(table, ROW_A, n_tensors, t, tl.float32, ALIGNED)
    v_ptr = tensor_ptr(table, ROW_V, n_tensors, t, tl.float32, ALIGNED)
    means_ptr = tensor_ptr(table, ROW_A_GROUP, n_tensors, t, tl.float32, False)
    size, magic, group, pos = _group_start(table, n_tensors, t, start, chunk_group)
    count = tl.zeros([BLOCK], tl.int32)
    for i in range(0, full, BLOCK):  # full blocks: no mask, vector accesses when ALIGNED
        count += _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, means_ptr, block_offsets(start + i, BLOCK), None,
                         size, magic, group, pos, factor, m, skip, inv_scale, lr, lam, beta, beta_b, alpha,
                         weight_decay, max_factor, REWEIGHT, MAXIMIZE, HAS_SCALE, W_DTYPE, BLOCK)
        group, pos = _next_group(group, pos, size, magic, BLOCK)
    if full < n:  # the ragged end, masked
        offs = start + full + tl.arange(0, BLOCK)
        count += _update(w_ptr, g_ptr, T_ptr, B_ptr, A_ptr, v_ptr, means_ptr, offs, offs < start + n,
                         size, magic, group, pos, factor, m, skip, inv_scale, lr, lam, beta, beta_b, alpha,
                         weight_decay, max_factor, REWEIGHT, MAXIMIZE, HAS_SCALE, W_DTYPE, BLOCK)
    tl.atomic_add(nnz + t, tl.sum(count).to(tl.int64))


def group_magic(size: int) -> int:
    """_div_small's multiplier for groups smaller than a block (0 where it is not used)."""
    return -(-(1 << 32) // size) if 1 < size < BLOCK else 0


def rda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's rda_step (sparse_rda/step.py) as fused kernels; returns the nonzero count of each
    param (int64, on device). A tiled bucket goes to kernels/rda_block_step.py (which fills the tile maps)."""
    return _run(tensors, bucket, s, max_only=False)


def rda_max_A(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's rda_max_A: the step's first kernel alone, its per-tensor max of this step's A
    (float32, on device); nothing is written."""
    return _run(tensors, bucket, s, max_only=True)


def _run(tensors, bucket, s, max_only: bool) -> torch.Tensor:
    params, grads, T, B, A, v, occupancy, group_means, max_A = tensors
    grads = kernel_grads(grads)
    if bucket.tiled or (bucket.constrained and not max_only):  # (an N:M bucket's max is the element kernel's)
        ws, gs = Contiguous(params, write_back=True), Contiguous(grads, write_back=False)
        states = [Contiguous(x, write_back=True) for x in (T, B, A, v)]
        arrays = (ws.tensors, gs.tensors, *(x.tensors for x in states))
        if bucket.tiled:
            result = rda_block_step(*arrays, occupancy, bucket.block, s, max_A, max_only)
        else:  # N:M: this file's max kernel (A is per element), then the N:M step
            from .rda_nm_step import rda_nm_step  # (here: that module reuses this one's chunk_bounds)

            if s.reweight and max_A is None:
                max_A = _launch(*arrays, group_means, None, bucket, s, max_only=True)
            result = rda_nm_step(*arrays, bucket, s, max_A)
        if not max_only:
            for c in (ws, *states):
                c.finish()
        return result
    return _launch(params, grads, T, B, A, v, group_means, max_A, bucket, s, max_only)


def _launch(params, grads, T, B, A, v, group_means, given_max, bucket, s, max_only) -> torch.Tensor:
    device = params[0].device
    n = len(params)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(grads, write_back=False)
    states = [Contiguous(x, write_back=True) for x in (T, B, A, v)]
    ws = weights.tensors
    numels = [w.numel() for w in ws]
    sizes = [plan.group_size for plan in bucket.plans]
    means = [m if plan.grouped and plan.penalized else None for m, plan in zip(group_means, bucket.plans)]
    table = address_table([ws, flat_grads.tensors, *(x.tensors for x in states), means],
                          [numels, sizes, [group_magic(size) for size in sizes]], device)
    factors = float_table(tuple(plan.factor for plan in bucket.plans), device)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    chunk_group = chunk_groups(numels, sizes, device)
    max_A, find_max = given_max_A(given_max, n, device)
    find_max = find_max and (s.reweight or max_only) and any(plan.penalized for plan in bucket.plans)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    device_form = s.device is not None
    device_scalars = s.device if device_form else max_A  # (an unused pointer)
    found_inf = s.found_inf if s.found_inf is not None else torch.zeros((), device=device) if device_form else max_A
    grid = (chunk_tensor.numel(),)
    wt, gt = TORCH_TO_TL[bucket.w_dtype], TORCH_TO_TL[flat_grads.tensors[0].dtype]
    assert chunk % BLOCK == 0, "full blocks start at multiples of BLOCK"
    # vector accesses when every array starts 16-byte aligned (the group means are gathered, never vectors)
    vectors = aligned([*ws, *flat_grads.tensors, *(t for x in states for t in x.tensors)])
    with on_device(device):
        if find_max:
            _max_A_kernel[grid](table, factors, n, chunk_tensor, chunk_start, chunk_group, max_A, device_scalars,
                                found_inf,
                                s.lr, s.beta, s.beta_b, s.averaging,
                                DEVICE_SCALARS=device_form, W_DTYPE=wt, ALIGNED=vectors, BLOCK=BLOCK, CHUNK=chunk,
                                num_warps=NUM_WARPS)
        if max_only:
            return max_A
        _step_kernel[grid](
            table, factors, n, chunk_tensor, chunk_start, chunk_group, max_A, nnz,
            s.inv_scale if s.inv_scale is not None else max_A, device_scalars, found_inf,
            s.lr, s.lam, s.beta, s.beta_b, s.averaging, s.weight_decay, s.max_factor,
            REWEIGHT=s.reweight, MAXIMIZE=s.maximize, HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=device_form,
            W_DTYPE=wt, G_DTYPE=gt, ALIGNED=vectors, BLOCK=BLOCK, CHUNK=chunk, num_warps=NUM_WARPS,
        )
    weights.finish()
    for x in states:
        x.finish()
    return nnz
