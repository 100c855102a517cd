"""Fused RDA step (docs/ALGORITHMS.md section 1) over all tensors of a param group, in two launches:

1. ``_max_A_kernel``: this step's A = beta_b A + (1 - beta_b) a, reduced to its per-tensor max (atomic max);
   A is not written, so the pass costs one read of w and A.
2. ``_step_kernel``: recomputes the same A (same code, same bits), then om, B, T, v and w, writes them, and
   counts the nonzeros of each tensor.

The max must be this step's, over the whole tensor (the reference's), so it needs its own pass; a lagged max
would save it (see bench/NOTES.md). Structured modes take `a` from a per-group mean |w| computed by torch
(the reference's own expression) into a buffer kept per parameter, and broadcast it by index: offs // group_size.

Capturable mode (``device_scalars``): lr and averaging are read from a device tensor, the momentum decays are
computed in the kernel, and a GradScaler's found_inf makes the kernels write nothing, with no host sync, so the
step can be captured in a CUDA graph.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from sparse_rda import reference

from .math import count_nonzero, dual_average, finite_or_zero, load_f32, reweight_factor, soft_threshold, store
from .rda_block_step import rda_block_step
from .tensor_table import (TORCH_TO_TL, Contiguous, address_table, chunk_table, float_table, kernel_grads,
                           per_dtype_pair)

BLOCK = 1024
# rows of the address table: tensor addresses, then integers per tensor
ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_A_GROUP, ROW_NUMEL, ROW_GROUP_SIZE = (tl.constexpr(i) for i in range(9))



@triton.jit
def _scalars(scalars, found_inf, lr, beta, beta_b, alpha, inv_tau, inv_tau_b, DEVICE_SCALARS: tl.constexpr):
    """(skip, lr, beta, beta_b, alpha): the host's values, or in capturable mode read from the device."""
    if DEVICE_SCALARS:
        skip = tl.load(found_inf) != 0
        lr = tl.load(scalars)
        alpha = tl.load(scalars + 1)
        beta = tl.where(inv_tau > 0, tl.exp(-lr * inv_tau), 0.0)
        beta_b = tl.where(inv_tau_b > 0, tl.exp(-lr * inv_tau_b), 0.0)
    else:
        skip = False
    return skip, lr, beta, beta_b, alpha


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
def _max_A_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, scalars, found_inf,
                  lr, beta, beta_b, alpha, inv_tau, inv_tau_b,
                  DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    skip, lr, beta, beta_b, alpha = _scalars(scalars, found_inf, lr, beta, beta_b, alpha, inv_tau, inv_tau_b,
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
def _step_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, nnz, inv_scale, scalars, found_inf,
                 lr, lam, beta, beta_b, alpha, inv_tau, inv_tau_b, weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    factor = tl.load(factors + t)  # sqrt(group size), 0 when the tensor is not penalized
    m = tl.load(max_A + t)
    skip, lr, beta, beta_b, alpha = _scalars(scalars, found_inf, lr, beta, beta_b, alpha, inv_tau, inv_tau_b,
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


# Per-parameter buffers for the structured modes' group means: allocated once, so their addresses (and the
# address table) stay the same from step to step, as CUDA graph replays need.
# Keyed by id(param), dropped when the parameter is freed (tensors cannot be WeakKeyDictionary keys: == is elementwise).
_group_means: dict[int, torch.Tensor] = {}


def _group_magnitude(param: torch.Tensor, w: torch.Tensor, granularity: str) -> torch.Tensor | None:
    """Per-group mean |w| for structured modes (the reference's expression), None in element mode."""
    mode = reference.effective_granularity(w.shape, granularity)
    if mode == reference.ELEMENT:
        return None
    dims = (2, 3) if mode == reference.KERNEL else (1, 2, 3)
    shape = w.shape[:2] if mode == reference.KERNEL else w.shape[:1]
    out = _group_means.get(id(param))
    if out is None or out.shape != shape or out.device != w.device:
        out = _group_means[id(param)] = torch.empty(shape, dtype=torch.float32, device=w.device)
        weakref.finalize(param, _group_means.pop, id(param), None)
    return torch.mean(w.float().abs(), dim=dims, out=out)


def rda_step(params, grads, T, B, A, v, *, penalized, lr, lam, beta, beta_b, averaging, weight_decay,
             max_factor, reweight, granularity, maximize, grad_scale=None, device_scalars=None,
             occupancy=None) -> torch.Tensor:
    """The reference's rda_step as fused kernels; returns the nonzero count of each param (int64, on device).

    device_scalars: capturable mode, (scalars, found_inf, momentum_time, reweight_time) with scalars a float32
    device tensor [lr, averaging] and found_inf a device tensor (or None); lr, averaging, beta, beta_b unused.
    Block granularity: the penalized 2-D weights go to kernels/rda_block_step.py (which fills ``occupancy``),
    the other tensors to the element-wise kernels."""
    inv_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None
    grads = kernel_grads(grads)
    block = reference.block_shape(granularity)
    if block is not None:
        return _rda_step_with_blocks(params, grads, T, B, A, v, penalized, occupancy, block, grad_scale,
                                     lr=lr, lam=lam, beta=beta, beta_b=beta_b, averaging=averaging,
                                     weight_decay=weight_decay, max_factor=max_factor, reweight=reweight,
                                     maximize=maximize)
    options = dict(lr=lr, lam=lam, beta=beta, beta_b=beta_b, averaging=averaging, weight_decay=weight_decay,
                   max_factor=max_factor, reweight=reweight, granularity=granularity, maximize=maximize,
                   device_scalars=device_scalars)

    def launch(idx, w_dtype, g_dtype):
        pick = lambda tensors: [tensors[i] for i in idx]  # noqa: E731
        return _launch(pick(params), pick(grads), pick(T), pick(B), pick(A), pick(v), pick(penalized), inv_scale,
                       w_dtype=w_dtype, g_dtype=g_dtype, **options)

    return per_dtype_pair(params, grads, launch)


def _rda_step_with_blocks(params, grads, T, B, A, v, penalized, occupancy, block, grad_scale, **scalars):
    inv_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None
    tiled = [i for i, (p, pen) in enumerate(zip(params, penalized)) if pen and p.dim() == 2]
    tiled_set = set(tiled)
    rest = [i for i in range(len(params)) if i not in tiled_set]
    nnz = torch.zeros(len(params), dtype=torch.int64, device=params[0].device)
    pick = lambda tensors, idx: [tensors[i] for i in idx]  # noqa: E731
    if rest:
        nnz[rest] = rda_step(pick(params, rest), pick(grads, rest), pick(T, rest), pick(B, rest), pick(A, rest),
                             pick(v, rest), penalized=pick(penalized, rest), granularity=reference.ELEMENT,
                             grad_scale=grad_scale, **scalars)
    if tiled:
        def launch(idx, w_dtype, g_dtype):
            ws, gs = Contiguous(pick(params, idx), write_back=True), Contiguous(pick(grads, idx), write_back=False)
            states = [Contiguous(pick(s, idx), write_back=True) for s in (T, B, A, v)]
            counts = rda_block_step(ws.tensors, gs.tensors, *(s.tensors for s in states), pick(occupancy, idx),
                                    block=block, inv_scale=inv_scale, **scalars)
            for c in (ws, *states):
                c.finish()
            return counts

        tiled_params, tiled_grads = pick(params, tiled), pick(grads, tiled)
        nnz[tiled] = per_dtype_pair(tiled_params, tiled_grads, lambda idx, w, g: launch([tiled[i] for i in idx], w, g))
    return nnz


def _inverse(time_scale) -> float:
    return 1.0 / time_scale if time_scale else 0.0


def _launch(params, grads, T, B, A, v, penalized, inv_scale, *, lr, lam, beta, beta_b, averaging, weight_decay,
            max_factor, reweight, granularity, maximize, device_scalars, w_dtype, g_dtype) -> torch.Tensor:
    device = params[0].device
    n = len(params)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(grads, write_back=False)
    states = [Contiguous(s, write_back=True) for s in (T, B, A, v)]
    ws = weights.tensors
    groups = [_group_magnitude(p, w, granularity) if pen else None for p, w, pen in zip(params, ws, penalized)]
    sizes = [reference.group_size(w.shape, granularity) for w in ws]
    numels = [w.numel() for w in ws]
    table = address_table([ws, flat_grads.tensors, *(s.tensors for s in states), groups], [numels, sizes], device)
    factors = float_table(tuple(size**0.5 if pen else 0.0 for size, pen in zip(sizes, penalized)), device)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    max_A = torch.zeros(n, dtype=torch.float32, device=device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    if device_scalars is not None:
        scalars, found_inf, tau, tau_b = device_scalars
        found_inf = found_inf if found_inf is not None else torch.zeros((), device=device)
        inv_tau, inv_tau_b = _inverse(tau), _inverse(tau_b)
    else:
        scalars = found_inf = max_A  # unused pointers
        inv_tau = inv_tau_b = 0.0
    on_device = device_scalars is not None
    grid = (chunk_tensor.numel(),)
    wt, gt = TORCH_TO_TL[w_dtype], TORCH_TO_TL[g_dtype]
    if reweight and any(penalized):
        _max_A_kernel[grid](table, factors, n, chunk_tensor, chunk_start, max_A, scalars, found_inf,
                            lr, beta, beta_b, averaging, inv_tau, inv_tau_b,
                            DEVICE_SCALARS=on_device, W_DTYPE=wt, BLOCK=BLOCK, CHUNK=chunk)
    _step_kernel[grid](
        table, factors, n, chunk_tensor, chunk_start, max_A, nnz,
        inv_scale if inv_scale is not None else max_A, scalars, found_inf,
        lr, lam, beta, beta_b, averaging, inv_tau, inv_tau_b, weight_decay, max_factor,
        REWEIGHT=reweight, MAXIMIZE=maximize, HAS_SCALE=inv_scale is not None, DEVICE_SCALARS=on_device,
        W_DTYPE=wt, G_DTYPE=gt, BLOCK=BLOCK, CHUNK=chunk,
    )
    weights.finish()
    for s in states:
        s.finish()
    return nnz
