"""Fused RDA step (docs/ALGORITHMS.md section 1) over all tensors of a param group, in two launches:

1. ``_max_A_kernel``: this step's A = beta_b A + (1 - beta_b) a, reduced to its per-tensor max (atomic max);
   A is not written, so the pass costs one read of w and A.
2. ``_step_kernel``: recomputes the same A (same code, same bits), then om, B, T, v and w, writes them, and
   counts the nonzeros of each tensor.

The max must be this step's, over the whole tensor (the reference's), so it needs its own pass; a lagged max
would save it (see bench/NOTES.md). Structured modes take `a` from the per-group mean |w| the front end passes
(``group_means``), broadcast by index: offs // group_size.

The device form (``scalars.device``: capturable mode, and steps traced by torch.compile): lr, averaging, the decays
and lam are read from a device tensor, and a GradScaler's found_inf makes the kernels write nothing, with no host
sync, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import (count_nonzero, dual_average, finite_or_zero, load_f32, reweight_factor, soft_threshold,
                   step_scalars, store)
from .rda_block_step import rda_block_step
from .tensor_table import TORCH_TO_TL, Contiguous, address_table, chunk_table, float_table, kernel_grads

BLOCK = 1024
# rows of the address table: tensor addresses, then integers per tensor
ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_A_GROUP, ROW_NUMEL, ROW_GROUP_SIZE = (tl.constexpr(i) for i in range(9))


@triton.jit
def _new_A(table, n_tensors, t, offs, mask, w, beta_b):
    """A = beta_b * A + (1 - beta_b) * a, with a = |w| or the mean |w| of the element's group."""
    A_old = load_f32(table, ROW_A, n_tensors, t, offs, mask, tl.float32)
    group_size = tl.load(table + ROW_GROUP_SIZE * n_tensors + t)
    if group_size > 1:
        a = load_f32(table, ROW_A_GROUP, n_tensors, t, offs // group_size, mask, tl.float32)
    else:
        a = tl.abs(w)
    return beta_b * A_old + (1.0 - beta_b) * a


@triton.jit
def _max_A_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, device_scalars, found_inf,
                  lr, beta, beta_b, alpha,
                  DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    skip, lr, _, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, 0.0, beta, beta_b, alpha,
                                                    DEVICE_SCALARS)
    if tl.load(factors + t) == 0 or skip:  # unpenalized tensors have no A
        return
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    running = tl.zeros([BLOCK], tl.float32)
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        w = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
        A_new = _new_A(table, n_tensors, t, offs, mask, w, beta_b)
        running = tl.maximum(running, tl.where(mask, finite_or_zero(A_new), 0.0))
    tl.atomic_max(max_A + t, tl.max(running, axis=0))


@triton.jit
def _step_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, nnz, inv_scale, device_scalars,
                 found_inf, lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    factor = tl.load(factors + t)  # sqrt(group size), 0 when the tensor is not penalized
    m = tl.load(max_A + t)
    skip, lr, lam, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha,
                                                      DEVICE_SCALARS)
    count = 0
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        write = mask & (not skip)  # a skipped step still counts the nonzeros of the unchanged weights
        w = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
        threshold = tl.zeros([BLOCK], tl.float32)
        if factor > 0:
            A_new = _new_A(table, n_tensors, t, offs, mask, w, beta_b)
            store(table, ROW_A, n_tensors, t, offs, write, A_new, tl.float32)
            if REWEIGHT:
                om = reweight_factor(A_new, m, max_factor)
            else:
                om = tl.full([BLOCK], 1.0, tl.float32)
            B_new = alpha * load_f32(table, ROW_B, n_tensors, t, offs, mask, tl.float32) + lr * (om * factor)
            store(table, ROW_B, n_tensors, t, offs, write, B_new, tl.float32)
            threshold = lam * B_new
        T_new, v_new = dual_average(w, load_f32(table, ROW_G, n_tensors, t, offs, mask, G_DTYPE),
                                    load_f32(table, ROW_T, n_tensors, t, offs, mask, tl.float32),
                                    load_f32(table, ROW_V, n_tensors, t, offs, mask, tl.float32),
                                    inv_scale, lr, alpha, beta, weight_decay, HAS_SCALE, MAXIMIZE)
        w_new = soft_threshold(T_new, threshold)
        store(table, ROW_T, n_tensors, t, offs, write, T_new, tl.float32)
        store(table, ROW_V, n_tensors, t, offs, write, v_new, tl.float32)
        store(table, ROW_W, n_tensors, t, offs, write, w_new, W_DTYPE)
        count += count_nonzero(tl.where(skip, w, w_new), mask, W_DTYPE)
    tl.atomic_add(nnz + t, count.to(tl.int64))


def rda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's rda_step (sparse_rda/step.py) as fused kernels; returns the nonzero count of each
    param (int64, on device). A tiled bucket goes to kernels/rda_block_step.py (which fills the tile maps)."""
    params, grads, T, B, A, v, occupancy, group_means = tensors
    grads = kernel_grads(grads)
    if bucket.tiled:
        ws, gs = Contiguous(params, write_back=True), Contiguous(grads, write_back=False)
        states = [Contiguous(x, write_back=True) for x in (T, B, A, v)]
        counts = rda_block_step(ws.tensors, gs.tensors, *(x.tensors for x in states), occupancy, bucket.block, s)
        for c in (ws, *states):
            c.finish()
        return counts
    return _launch(params, grads, T, B, A, v, group_means, bucket, s)


def _launch(params, grads, T, B, A, v, group_means, bucket, s) -> torch.Tensor:
    device = params[0].device
    n = len(params)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(grads, write_back=False)
    states = [Contiguous(x, write_back=True) for x in (T, B, A, v)]
    ws = weights.tensors
    numels = [w.numel() for w in ws]
    sizes = [plan.group_size for plan in bucket.plans]
    means = [m if plan.grouped and plan.penalized else None for m, plan in zip(group_means, bucket.plans)]
    table = address_table([ws, flat_grads.tensors, *(x.tensors for x in states), means], [numels, sizes], device)
    factors = float_table(tuple(plan.factor for plan in bucket.plans), device)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    max_A = torch.zeros(n, dtype=torch.float32, device=device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    on_device = s.device is not None
    device_scalars = s.device if on_device else max_A  # (an unused pointer)
    found_inf = s.found_inf if s.found_inf is not None else torch.zeros((), device=device) if on_device else max_A
    grid = (chunk_tensor.numel(),)
    wt, gt = TORCH_TO_TL[bucket.w_dtype], TORCH_TO_TL[flat_grads.tensors[0].dtype]
    if s.reweight and any(plan.penalized for plan in bucket.plans):
        _max_A_kernel[grid](table, factors, n, chunk_tensor, chunk_start, max_A, device_scalars, found_inf,
                            s.lr, s.beta, s.beta_b, s.averaging,
                            DEVICE_SCALARS=on_device, W_DTYPE=wt, BLOCK=BLOCK, CHUNK=chunk)
    _step_kernel[grid](
        table, factors, n, chunk_tensor, chunk_start, max_A, nnz,
        s.inv_scale if s.inv_scale is not None else max_A, device_scalars, found_inf,
        s.lr, s.lam, s.beta, s.beta_b, s.averaging, s.weight_decay, s.max_factor,
        REWEIGHT=s.reweight, MAXIMIZE=s.maximize, HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=on_device,
        W_DTYPE=wt, G_DTYPE=gt, BLOCK=BLOCK, CHUNK=chunk,
    )
    weights.finish()
    for x in states:
        x.finish()
    return nnz
