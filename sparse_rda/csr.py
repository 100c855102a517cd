"""A sparse weight by output row (CSR) and ``y = x W^T + b`` from its nonzeros, for inference.

:func:`pack_csr` keeps a 2-D weight's nonzeros: ``crow`` int64 [out + 1] (row starts), ``col`` the column of
each (int16, read as unsigned, when in_features <= 65536; else int32), ``values`` in the weight's dtype. That is
6 bytes per fp32 nonzero (4 per bf16) against 4 (2) per dense weight: at 95% zeros a tenth of the bytes, and a
matrix-vector product is bound by those bytes.

:func:`csr_linear` runs the native CPU kernel ``torch.ops.sparse_rda.csr_linear`` (csrc/cpu/csr_linear_cpu.cpp),
which checks every argument (indices included) before it reads past them; elsewhere (CUDA tensors, or an
installation without the extension) the same product with ``torch.sparse`` in fp32.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from . import native


class CSRWeight(NamedTuple):
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]  # (out_features, in_features)


def pack_csr(weight: torch.Tensor, index_dtype: torch.dtype | None = None) -> CSRWeight:
    """The nonzeros of a 2-D weight [out, in] by row. ``index_dtype``: torch.int16 or torch.int32 for ``col``
    (default: int16 when in_features <= 65536)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in]; got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if index_dtype is None:
        index_dtype = torch.int16 if in_features <= 65536 else torch.int32
    if index_dtype not in (torch.int16, torch.int32) or (index_dtype == torch.int16 and in_features > 65536):
        raise ValueError(f"index_dtype must be torch.int16 (in_features <= 65536) or torch.int32; got {index_dtype}")
    w = weight.detach()
    keep = w != 0
    crow = torch.zeros(out_features + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(keep.sum(1), 0, out=crow[1:])
    cols = keep.nonzero()[:, 1]
    if index_dtype == torch.int16:  # columns 32768..65535 wrap to negative int16: the kernel reads them unsigned
        cols = torch.where(cols >= 32768, cols - 65536, cols)
    return CSRWeight(crow, cols.to(index_dtype), w[keep].contiguous(), (out_features, in_features))


def unpack_csr(packed: CSRWeight) -> torch.Tensor:
    """The dense weight back (for tests and for the fallback)."""
    out_features, in_features = packed.shape
    rows = torch.repeat_interleave(torch.arange(out_features, device=packed.crow.device), packed.crow.diff())
    cols = packed.col.long() % 65536 if packed.col.dtype == torch.int16 else packed.col.long()
    dense = torch.zeros(packed.shape, dtype=packed.values.dtype, device=packed.values.device)
    dense[rows, cols] = packed.values
    return dense


def native_runs(x: torch.Tensor) -> bool:
    """The native kernel takes CPU tensors, where the extension is installed (it always has CPU kernels)."""
    return x.device.type == "cpu" and native.has_kernels("cpu")


def csr_linear(x: torch.Tensor, packed: CSRWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for the packed W: x [..., in] in W's dtype; fp32 accumulation."""
    crow, col, values, (out_features, in_features) = packed
    if native_runs(x):
        # the overload itself: resolving it from the packet costs ~3 us a call, as much as a small layer's math
        return torch.ops.sparse_rda.csr_linear.default(x, crow, col, values, bias, in_features)
    if x.shape[-1] != in_features:
        raise ValueError(f"x's last dimension must be in_features {in_features}; got x of shape {tuple(x.shape)}")
    cols = col.long() % 65536 if col.dtype == torch.int16 else col.long()
    with warnings.catch_warnings():  # "CSR support is in beta": the one call here is a plain SpMM
        warnings.simplefilter("ignore", UserWarning)
        # fp32: CPU torch.sparse has no 16-bit SpMM; our own packing needs no invariant checks
        sparse = torch.sparse_csr_tensor(crow, cols, values.float(), packed.shape, check_invariants=False)
        y = (sparse @ x.reshape(-1, in_features).float().t()).t()
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
