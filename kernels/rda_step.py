"""Fused RDA step (docs/ALGORITHMS.md section 1) over all tensors of a param group, in two launches:

1. ``_max_A_kernel``: this step's A = beta_b A + (1 - beta_b) a, reduced to its per-tensor max (atomic max);
   A is not written, so the pass costs one read of w and A.
2. ``_step_kernel``: recomputes the same A (same code, same bits), then om, B, T, v and w, writes them, and
   counts the nonzeros of each tensor.

The max must be this step's, over the whole tensor (the reference's), so it needs its own pass; a lagged max
would save it (see bench/NOTES.md). Structured modes take `a` from a per-group mean |w| computed by torch
(the reference's own expression) and broadcast it by index: offs // group_size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparse_rda import reference

from .math import count_nonzero, load_f32, soft_threshold, store
from .tensor_table import Contiguous, address_table, chunk_table, per_dtype_pair

BLOCK = 1024
# rows of the address table: tensor addresses, then integers per tensor
ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_A_GROUP, ROW_NUMEL, ROW_GROUP_SIZE = (tl.constexpr(i) for i in range(9))

TORCH_TO_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _new_A(table, n_tensors, t, offs, mask, w, beta_b, one_minus_beta_b):
    """A = beta_b * A + (1 - beta_b) * a, with a = |w| or the mean |w| of the element's group."""
    A_old = load_f32(table, ROW_A, n_tensors, t, offs, mask, tl.float32)
    group_size = tl.load(table + ROW_GROUP_SIZE * n_tensors + t)
    if group_size > 1:
        a = load_f32(table, ROW_A_GROUP, n_tensors, t, offs // group_size, mask, tl.float32)
    else:
        a = tl.abs(w)
    return beta_b * A_old + one_minus_beta_b * a


@triton.jit
def _max_A_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, beta_b, one_minus_beta_b,
                  W_DTYPE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    if tl.load(factors + t) == 0:  # unpenalized: no A
        return
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    running = tl.zeros([BLOCK], tl.float32)
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        w = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
        A_new = _new_A(table, n_tensors, t, offs, mask, w, beta_b, one_minus_beta_b)
        running = tl.maximum(running, tl.where(mask, A_new, 0.0))
    tl.atomic_max(max_A + t, tl.max(running, axis=0))


@triton.jit
def _step_kernel(table, factors, n_tensors, chunk_tensor, chunk_start, max_A, nnz, inv_scale,
                 lr, lam, beta, one_minus_beta, beta_b, one_minus_beta_b, alpha, one_minus_alpha,
                 weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    factor = tl.load(factors + t)  # sqrt(group size), 0 when the tensor is not penalized
    m = tl.load(max_A + t)
    count = 0
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        w = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
        g = load_f32(table, ROW_G, n_tensors, t, offs, mask, G_DTYPE)
        if HAS_SCALE:
            g = g * tl.load(inv_scale)
        if MAXIMIZE:
            g = -g
        g = g + weight_decay * w
        threshold = tl.zeros([BLOCK], tl.float32)
        if factor > 0:
            A_new = _new_A(table, n_tensors, t, offs, mask, w, beta_b, one_minus_beta_b)
            store(table, ROW_A, n_tensors, t, offs, mask, A_new, tl.float32)
            if REWEIGHT:
                om = max_factor / (1.0 + (max_factor - 1.0) * (A_new / m))
                om = tl.where(m > 0, om, max_factor)
            else:
                om = tl.full([BLOCK], 1.0, tl.float32)
            B_new = alpha * load_f32(table, ROW_B, n_tensors, t, offs, mask, tl.float32) + lr * (om * factor)
            store(table, ROW_B, n_tensors, t, offs, mask, B_new, tl.float32)
            threshold = lam * B_new
        T_new = alpha * load_f32(table, ROW_T, n_tensors, t, offs, mask, tl.float32) + one_minus_alpha * w
        v_new = beta * load_f32(table, ROW_V, n_tensors, t, offs, mask, tl.float32) + one_minus_beta * g
        T_new = T_new - lr * v_new
        w_new = soft_threshold(T_new, threshold)
        store(table, ROW_T, n_tensors, t, offs, mask, T_new, tl.float32)
        store(table, ROW_V, n_tensors, t, offs, mask, v_new, tl.float32)
        store(table, ROW_W, n_tensors, t, offs, mask, w_new, W_DTYPE)
        count += count_nonzero(w_new, mask, W_DTYPE)
    tl.atomic_add(nnz + t, count.to(tl.int64))


def _group_magnitude(w: torch.Tensor, granularity: str) -> torch.Tensor | None:
    """Per-group mean |w| for structured modes (the reference's expression), None in element mode."""
    mode = reference.effective_granularity(w.shape, granularity)
    if mode == reference.ELEMENT:
        return None
    dims = (2, 3) if mode == reference.KERNEL else (1, 2, 3)
    return w.float().abs().mean(dim=dims).contiguous()


def rda_step(params, grads, T, B, A, v, *, penalized, lr, lam, beta, beta_b, averaging, weight_decay,
             max_factor, reweight, granularity, maximize, grad_scale=None) -> torch.Tensor:
    """The reference's rda_step as fused kernels; returns the nonzero count of each param (int64, on device)."""
    inv_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None
    scalars = dict(lr=lr, lam=lam, beta=beta, beta_b=beta_b, averaging=averaging, weight_decay=weight_decay,
                   max_factor=max_factor, reweight=reweight, granularity=granularity, maximize=maximize)

    def launch(idx, w_dtype, g_dtype):
        pick = lambda tensors: [tensors[i] for i in idx]  # noqa: E731
        return _launch(pick(params), pick(grads), pick(T), pick(B), pick(A), pick(v), pick(penalized), inv_scale,
                       w_dtype=w_dtype, g_dtype=g_dtype, **scalars)

    return per_dtype_pair(params, grads, launch)


def _launch(params, grads, T, B, A, v, penalized, inv_scale, *, lr, lam, beta, beta_b, averaging, weight_decay,
            max_factor, reweight, granularity, maximize, w_dtype, g_dtype) -> torch.Tensor:
    device = params[0].device
    n = len(params)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(grads, write_back=False)
    states = [Contiguous(s, write_back=True) for s in (T, B, A, v)]
    ws = weights.tensors
    groups = [_group_magnitude(w, granularity) if pen else None for w, pen in zip(ws, penalized)]
    factors = [(reference.group_size(w.shape, granularity) ** 0.5) if pen else 0.0 for w, pen in zip(ws, penalized)]
    numels = [w.numel() for w in ws]
    sizes = [reference.group_size(w.shape, granularity) for w in ws]
    table = address_table([ws, flat_grads.tensors, *(s.tensors for s in states), groups], [numels, sizes], device)
    factor_table = torch.tensor(factors, dtype=torch.float32).to(device, non_blocking=True)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    max_A = torch.zeros(n, dtype=torch.float32, device=device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    grid = (chunk_tensor.numel(),)
    wt, gt = TORCH_TO_TL[w_dtype], TORCH_TO_TL[g_dtype]
    if reweight and any(penalized):
        _max_A_kernel[grid](table, factor_table, n, chunk_tensor, chunk_start, max_A, beta_b, 1.0 - beta_b,
                            W_DTYPE=wt, BLOCK=BLOCK, CHUNK=chunk)
    _step_kernel[grid](
        table, factor_table, n, chunk_tensor, chunk_start, max_A, nnz,
        inv_scale if inv_scale is not None else max_A,
        lr, lam, beta, 1.0 - beta, beta_b, 1.0 - beta_b, averaging, 1.0 - averaging, weight_decay, max_factor,
        REWEIGHT=reweight, MAXIMIZE=maximize, HAS_SCALE=inv_scale is not None,
        W_DTYPE=wt, G_DTYPE=gt, BLOCK=BLOCK, CHUNK=chunk,
    )
    weights.finish()
    for s in states:
        s.finish()
    return nnz
