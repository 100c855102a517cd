"""Fused gRDA step (docs/ALGORITHMS.md section 2) over all tensors of a param group, one launch per dtype pair:
acc -= lr * grad; w = S_l1(acc), with each tensor's threshold l1 given per tensor; nonzeros counted.

Capturable mode: lr, the thresholds and found_inf are device tensors (the optimizer updates the thresholds
with device ops), so nothing waits on the host; a found_inf makes the kernel write nothing."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import count_nonzero, load_f32, soft_threshold, store
from .rda_step import BLOCK
from .tensor_table import TORCH_TO_TL, Contiguous, address_table, chunk_table, kernel_grads

ROW_W, ROW_G, ROW_ACC, ROW_NUMEL = (tl.constexpr(i) for i in range(4))


@triton.jit
def _step_kernel(table, thresholds, n_tensors, chunk_tensor, chunk_start, nnz, inv_scale, lr_ptr, found_inf, lr,
                 HAS_SCALE: tl.constexpr, DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr,
                 G_DTYPE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    l1 = tl.load(thresholds + t)
    if DEVICE_SCALARS:
        lr = tl.load(lr_ptr)
        skip = tl.load(found_inf) != 0
    else:
        skip = False
    count = 0
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        write = mask & (not skip)  # a skipped step still counts the nonzeros of the unchanged weights
        g = load_f32(table, ROW_G, n_tensors, t, offs, mask, G_DTYPE)
        if HAS_SCALE:
            g = g * tl.load(inv_scale)
        acc = load_f32(table, ROW_ACC, n_tensors, t, offs, mask, tl.float32) - lr * g
        w_new = soft_threshold(acc, l1)
        store(table, ROW_ACC, n_tensors, t, offs, write, acc, tl.float32)
        store(table, ROW_W, n_tensors, t, offs, write, w_new, W_DTYPE)
        if skip:  # count what stays
            w_new = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
        count += count_nonzero(w_new, mask, W_DTYPE)
    tl.atomic_add(nnz + t, count.to(tl.int64))


def grda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's grda_step (sparse_rda/step.py) as one fused kernel; returns each param's nonzero
    count. Capturable mode: ``s.lr_device`` replaces lr and ``tensors.thresholds`` is on the device."""
    params, grads, acc, thresholds = tensors
    device = params[0].device
    on_device = s.lr_device is not None
    found_inf = s.found_inf if s.found_inf is not None or not on_device else torch.zeros((), device=device)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(kernel_grads(grads), write_back=False)
    accs = Contiguous(acc, write_back=True)
    numels = [w.numel() for w in weights.tensors]
    table = address_table([weights.tensors, flat_grads.tensors, accs.tensors], [numels], device)
    l1 = thresholds.to(device, torch.float32, non_blocking=True)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    counts = torch.zeros(len(params), dtype=torch.int64, device=device)
    _step_kernel[(chunk_tensor.numel(),)](
        table, l1, len(params), chunk_tensor, chunk_start, counts,
        s.inv_scale if s.inv_scale is not None else l1, s.lr_device if on_device else l1,
        found_inf if found_inf is not None else l1, s.lr,
        HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=on_device,
        W_DTYPE=TORCH_TO_TL[bucket.w_dtype], G_DTYPE=TORCH_TO_TL[flat_grads.tensors[0].dtype],
        BLOCK=BLOCK, CHUNK=chunk,
    )
    weights.finish()
    accs.finish()
    return counts
