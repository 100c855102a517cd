"""Fused gRDA step (docs/ALGORITHMS.md section 2) over all tensors of a param group, one launch per dtype pair:
acc -= lr * grad; w = S_l1(acc), with each tensor's threshold l1 computed on the host; nonzeros counted."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import count_nonzero, load_f32, soft_threshold, store
from .rda_step import BLOCK, TORCH_TO_TL
from .tensor_table import Contiguous, address_table, chunk_table, per_dtype_pair

ROW_W, ROW_G, ROW_ACC, ROW_NUMEL = (tl.constexpr(i) for i in range(4))


@triton.jit
def _step_kernel(table, thresholds, n_tensors, chunk_tensor, chunk_start, nnz, inv_scale, lr,
                 HAS_SCALE: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    numel = tl.load(table + ROW_NUMEL * n_tensors + t)
    l1 = tl.load(thresholds + t)
    count = 0
    for i in range(0, tl.minimum(CHUNK, numel - start), BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < numel
        g = load_f32(table, ROW_G, n_tensors, t, offs, mask, G_DTYPE)
        if HAS_SCALE:
            g = g * tl.load(inv_scale)
        acc = load_f32(table, ROW_ACC, n_tensors, t, offs, mask, tl.float32) - lr * g
        w_new = soft_threshold(acc, l1)
        store(table, ROW_ACC, n_tensors, t, offs, mask, acc, tl.float32)
        store(table, ROW_W, n_tensors, t, offs, mask, w_new, W_DTYPE)
        count += count_nonzero(w_new, mask, W_DTYPE)
    tl.atomic_add(nnz + t, count.to(tl.int64))


def grda_step(params, grads, acc, *, lr, thresholds, grad_scale=None) -> torch.Tensor:
    """The reference's grda_step as one fused kernel per dtype pair; returns each param's nonzero count."""
    device = params[0].device
    inv_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None

    def launch(idx, w_dtype, g_dtype):
        weights = Contiguous([params[i] for i in idx], write_back=True)
        flat_grads = Contiguous([grads[i] for i in idx], write_back=False)
        accs = Contiguous([acc[i] for i in idx], write_back=True)
        numels = [w.numel() for w in weights.tensors]
        table = address_table([weights.tensors, flat_grads.tensors, accs.tensors], [numels], device)
        l1 = torch.tensor([thresholds[i] for i in idx], dtype=torch.float32).to(device, non_blocking=True)
        chunk_tensor, chunk_start, chunk = chunk_table(numels, device)
        counts = torch.zeros(len(idx), dtype=torch.int64, device=device)
        _step_kernel[(chunk_tensor.numel(),)](
            table, l1, len(idx), chunk_tensor, chunk_start, counts,
            inv_scale if inv_scale is not None else l1, lr,
            HAS_SCALE=inv_scale is not None, W_DTYPE=TORCH_TO_TL[w_dtype], G_DTYPE=TORCH_TO_TL[g_dtype],
            BLOCK=BLOCK, CHUNK=chunk,
        )
        weights.finish()
        accs.finish()
        return counts

    return per_dtype_pair(params, grads, launch)
