"""Fused gRDA step (docs/ALGORITHMS.md section 2) over all tensors of a param group, one launch per dtype pair:
acc -= lr * grad; w = S_l1(acc), with each tensor's threshold l1 given per tensor; nonzeros counted.

Capturable mode: lr, the thresholds and found_inf are device tensors (the optimizer updates the thresholds
with device ops), so nothing waits on the host; a found_inf makes the kernel write nothing."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import load_f32, nonzeros, soft_threshold, store, tensor_ptr
from .rda_step import BLOCK, NUM_WARPS, block_offsets, chunk_bounds
from .tensor_table import TORCH_TO_TL, Contiguous, address_table, aligned, chunk_table, kernel_grads, on_device

ROW_W, ROW_G, ROW_ACC, ROW_NUMEL = (tl.constexpr(i) for i in range(4))


@triton.jit
def _update(w_ptr, g_ptr, acc_ptr, offs, mask, l1, lr, inv_scale, skip, HAS_SCALE: tl.constexpr,
            W_DTYPE: tl.constexpr):
    """One block's step (written unless skip); returns its nonzeros (of the unchanged weights when skipped)."""
    g = load_f32(g_ptr, offs, mask)
    if HAS_SCALE:
        g = g * tl.load(inv_scale)
    acc = load_f32(acc_ptr, offs, mask) - lr * g
    w_new = soft_threshold(acc, l1)
    if skip:  # count what stays
        w_new = load_f32(w_ptr, offs, mask)
    else:
        store(acc_ptr, offs, mask, acc)
        store(w_ptr, offs, mask, w_new)
    return nonzeros(w_new, mask, W_DTYPE)


@triton.jit
def _step_kernel(table, thresholds, n_tensors, chunk_tensor, chunk_start, nnz, inv_scale, lr_ptr, found_inf, lr,
                 HAS_SCALE: tl.constexpr, DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr,
                 G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, n, full = chunk_bounds(table, ROW_NUMEL, n_tensors, chunk_tensor, chunk_start, BLOCK, CHUNK)
    l1 = tl.load(thresholds + t)
    if DEVICE_SCALARS:
        lr = tl.load(lr_ptr)
        skip = tl.load(found_inf) != 0
    else:
        skip = False
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    g_ptr = tensor_ptr(table, ROW_G, n_tensors, t, G_DTYPE, ALIGNED)
    acc_ptr = tensor_ptr(table, ROW_ACC, n_tensors, t, tl.float32, ALIGNED)
    count = tl.zeros([BLOCK], tl.int32)
    for i in range(0, full, BLOCK):  # full blocks: no mask, vector accesses when ALIGNED
        count += _update(w_ptr, g_ptr, acc_ptr, block_offsets(start + i, BLOCK), None, l1, lr, inv_scale, skip,
                         HAS_SCALE, W_DTYPE)
    if full < n:  # the ragged end, masked
        offs = start + full + tl.arange(0, BLOCK)
        count += _update(w_ptr, g_ptr, acc_ptr, offs, offs < start + n, l1, lr, inv_scale, skip, HAS_SCALE, W_DTYPE)
    tl.atomic_add(nnz + t, tl.sum(count).to(tl.int64))


def grda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's grda_step (sparse_rda/step.py) as one fused kernel; returns each param's nonzero
    count. Capturable mode: ``s.lr_device`` replaces lr and ``tensors.thresholds`` is on the device."""
    params, grads, acc, thresholds = tensors
    device = params[0].device
    device_form = s.lr_device is not None
    found_inf = s.found_inf if s.found_inf is not None or not device_form else torch.zeros((), device=device)
    weights = Contiguous(params, write_back=True)
    flat_grads = Contiguous(kernel_grads(grads), write_back=False)
    accs = Contiguous(acc, write_back=True)
    numels = [w.numel() for w in weights.tensors]
    table = address_table([weights.tensors, flat_grads.tensors, accs.tensors], [numels], device)
    l1 = thresholds.to(torch.float32)
    if l1.device != device:  # host thresholds (eager steps): one asynchronous copy from pinned memory, no wait
        l1 = l1.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else l1.to(device)
    chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
    counts = torch.zeros(len(params), dtype=torch.int64, device=device)
    assert chunk % BLOCK == 0, "full blocks start at multiples of BLOCK"
    vectors = aligned([*weights.tensors, *flat_grads.tensors, *accs.tensors])
    with on_device(device):
        _step_kernel[(chunk_tensor.numel(),)](
            table, l1, len(params), chunk_tensor, chunk_start, counts,
            s.inv_scale if s.inv_scale is not None else l1, s.lr_device if device_form else l1,
            found_inf if found_inf is not None else l1, s.lr,
            HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=device_form,
            W_DTYPE=TORCH_TO_TL[bucket.w_dtype], G_DTYPE=TORCH_TO_TL[flat_grads.tensors[0].dtype],
            ALIGNED=vectors, BLOCK=BLOCK, CHUNK=chunk, num_warps=NUM_WARPS,
        )
    weights.finish()
    accs.finish()
    return counts
