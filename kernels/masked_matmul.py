"""Block-sparse linear layer ``y = x @ W.T + b`` that skips W's dead tiles (docs/DESIGN.md, "Masked matmul").

W is [N, K] (out, in). Its tile occupancy map ``occupancy`` [ceil(N/BN), ceil(K/BK)] says which BN x BK tiles are
live (hold a nonzero); dead tiles are treated as zero and never read. From the map, torch ops on the device build
CSR-like lists (:func:`tile_lists`): the live K-tiles of each N-block (forward) and the live N-tiles of each K-block
(backward ``dX = dY @ W``). One kernel, ``_sparse_matmul_kernel``, computes both products: an output column block
sums over its list of live tiles. ``dW = dY.T @ X`` is dense by default (RDA's dual average needs every gradient,
cuBLAS computes it); ``dw_live_only=True`` computes only the live tiles and writes zeros in the dead ones.

Tiles: the sparsity tile (BN, BK) IS the kernel's W tile. The forward tiles its output [BLOCK_M, BN] and reduces
over BK-wide steps; dX tiles its output [BLOCK_M, BK] and reduces over BN-wide steps. So every loop step loads
exactly one live tile of W, and a map for another tile size must be converted first (a coarser map is the OR of
the finer one's tiles: ``tile_occupancy`` of the expanded mask). BN and BK must be powers of two >= 16 (tl.dot's
minimum); 64 x 64 is the GPU default. Only BLOCK_M and num_warps/num_stages are free: see ``HOPPER_CONFIGS``.

No host sync: the lists keep a fixed size (all tiles, the live ones first), loop bounds are read by the kernels,
and every grid depends on the shapes only (the dW grid has one program per tile, dead ones write zeros).

Runs on CUDA tensors (fp32/bf16/fp16, fp32 accumulation, output in the input dtype), or on CPU fp32 tensors under
``TRITON_INTERPRET=1``. Elsewhere :func:`masked_linear` computes the same with dense torch math on the weight as it
is (dead tiles count as zero only if they are zero), with the same ``dw_live_only`` gradient.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .tensor_table import TORCH_TO_TL, on_device
from .tiles import check_masked_linear, check_matmul_block

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # a triton without the interpreter: kernels never run on CPU tensors
    InterpretedFunction = ()

DEFAULT_BLOCK = (64, 64)

# Hopper (sm_90, 227 KB shared memory per block) starting points, keyed by (larger tile side, element bytes):
# (BLOCK_M, num_warps, num_stages). One pipeline buffer holds (BLOCK_M + BN) * BK elements. In the gather loop the
# tile index is loaded a stage ahead of the tiles, and Triton 3.9 then makes 2 buffers for num_stages 2-4 and 3 for
# 5-6: bf16 64 x 64 uses 3 x 24 KB. tests/masked_matmul_aot.py compiles every entry and checks it fits. Not yet
# measured on a GPU: bench/tune_masked_matmul.py sweeps the candidates and prints the entries to put here.
# Tiles larger than 128 use the 128 row.
HOPPER_CONFIGS = {
    (16, 2): (64, 4, 5), (16, 4): (64, 4, 3),
    (32, 2): (128, 4, 5), (32, 4): (64, 4, 3),
    (64, 2): (128, 4, 5), (64, 4): (64, 4, 3),
    (128, 2): (128, 8, 2), (128, 4): (32, 4, 2),
}
DW_BLOCK_M = 64  # dW's reduction step over the batch rows (live-only mode)
MAX_GRID = 2**31 - 1  # CUDA's limit on a grid's x size (the kernels' grids are 1-D)



def _config(block: tuple[int, int], dtype: torch.dtype, m: int) -> tuple[int, int, int]:
    side = min(max(block), 128)
    block_m, warps, stages = HOPPER_CONFIGS[side, 2 if dtype.itemsize == 2 else 4]
    # few rows (decoding): a smaller M tile wastes less of the MMA; 16 is tl.dot's minimum
    return min(block_m, max(16, triton.next_power_of_2(m))), warps, stages


# ------------------------------------------------------------------------------------------ occupancy, lists


def tile_occupancy(weight: torch.Tensor, block=DEFAULT_BLOCK) -> torch.Tensor:
    """Bool [ceil(N/BN), ceil(K/BK)]: True where the BN x BK tile of weight [N, K] has a nonzero (NaN counts)."""
    bn, bk = check_matmul_block(block)
    n, k = weight.shape
    nb, kb = triton.cdiv(n, bn), triton.cdiv(k, bk)
    nonzero = torch.zeros((nb * bn, kb * bk), dtype=torch.bool, device=weight.device)
    nonzero[:n, :k] = weight.detach() != 0
    return nonzero.view(nb, bn, kb, bk).any(dim=3).any(dim=1)


def expand_occupancy(occupancy: torch.Tensor, block, shape) -> torch.Tensor:
    """The element mask [N, K] of a tile map: True inside live tiles."""
    bn, bk = block
    nb, kb = occupancy.shape
    tiles = (occupancy != 0)[:, None, :, None].expand(nb, bn, kb, bk)
    return tiles.reshape(nb * bn, kb * bk)[: shape[0], : shape[1]]


class TileLists(NamedTuple):
    """Live tiles of a map [nb, kb], both ways round (int32, on the map's device).

    The live K-tiles of N-block r are ``col_idx[row_ptr[r]:row_ptr[r + 1]]`` (ascending), the live N-tiles of
    K-block c are ``row_idx[col_ptr[c]:col_ptr[c + 1]]``. The index lists hold all nb * kb tiles, the
    ``row_ptr[-1]`` live ones first, so that building them needs no host sync (their length would)."""

    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor


def _csr(live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = live.shape
    ptr = torch.zeros(rows + 1, dtype=torch.int32, device=live.device)
    torch.cumsum(live.sum(dim=1, dtype=torch.int32), dim=0, out=ptr[1:])
    # a stable sort of "is dead" puts the live tiles first, in row-major order
    order = torch.sort((~live).reshape(-1).to(torch.uint8), stable=True).indices
    return ptr, (order % cols).to(torch.int32)


def tile_lists(occupancy: torch.Tensor) -> TileLists:
    live = occupancy != 0
    row_ptr, col_idx = _csr(live)
    col_ptr, row_idx = _csr(live.t())
    return TileLists(row_ptr, col_idx, col_ptr, row_idx)


# ------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _sparse_matmul_kernel(a, b, bias, out, ptr, idx, M, R, O,
                          stride_am, stride_ar, stride_br, stride_bo, stride_om, stride_oo,
                          HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr):
    """out[M, O] = a[M, R] @ b[R, O] (+ bias[O]) where b's only nonzero tiles in output column block o are the
    BLOCK_R x BLOCK_O tiles at R-blocks idx[ptr[o]:ptr[o + 1]]. Forward: a = x, b = W.T; dX: a = dY, b = W.
    A 1-D grid (CUDA's y and z sizes stop at 65535): the M-blocks of an output column block are consecutive
    programs, so the programs that read the same tiles of b run together."""
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = tl.program_id(0) % m_blocks
    pid_o = tl.program_id(0) // m_blocks
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    rows = offs_m.to(tl.int64)[:, None]  # int64 offsets: M * R or R * O can pass 2**31
    cols = offs_o.to(tl.int64)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    for i in range(tl.load(ptr + pid_o), tl.load(ptr + pid_o + 1)):
        offs_r = tl.load(idx + i).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        a_tile = tl.load(a + rows * stride_am + offs_r[None, :] * stride_ar,
                         mask=(rows < M) & (offs_r[None, :] < R), other=0.0)
        b_tile = tl.load(b + offs_r[:, None] * stride_br + cols * stride_bo,
                         mask=(offs_r[:, None] < R) & (cols < O), other=0.0)
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + offs_o, mask=offs_o < O, other=0.0).to(tl.float32)[None, :]
    tl.store(out + rows * stride_om + cols * stride_oo, acc.to(out.dtype.element_ty), mask=(rows < M) & (cols < O))


@triton.jit
def _live_tile_grad_kernel(dy, x, live, dw, M, N, K, k_blocks,
                           stride_dym, stride_dyn, stride_xm, stride_xk, stride_dwn, stride_dwk,
                           PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    """One program per W tile: dW tile = dy[:, n-tile].T @ x[:, k-tile] if the tile is live, else zeros."""
    t = tl.program_id(0)
    offs_n = ((t // k_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = ((t % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if tl.load(live + t) != 0:
        for m in range(0, M, BLOCK_M):
            offs_m = (m + tl.arange(0, BLOCK_M)).to(tl.int64)
            dy_t = tl.load(dy + offs_m[None, :] * stride_dym + offs_n[:, None] * stride_dyn,
                           mask=(offs_m[None, :] < M) & (offs_n[:, None] < N), other=0.0)
            x_tile = tl.load(x + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                             mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
            acc = tl.dot(dy_t, x_tile, acc, input_precision=PRECISION)
    tl.store(dw + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk, acc.to(dw.dtype.element_ty),
             mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))


# ------------------------------------------------------------------------------------------------ launchers


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs: tf32 only where torch's own fp32 matmuls may use it (ignored for 16-bit inputs)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _sparse_matmul(a, b_strides, b, bias, ptr, idx, out_cols, block_r, block_o):
    """a [M, R] times the tile-sparse b (given by its storage and (stride_r, stride_o)) -> [M, out_cols]."""
    m, r = a.shape
    out = torch.empty((m, out_cols), dtype=a.dtype, device=a.device)
    block_m, warps, stages = _config((block_r, block_o), a.dtype, m)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(out_cols, block_o),)
    if grid[0] > MAX_GRID:
        raise ValueError(f"masked_linear: {grid[0]} programs for a [{m}, {out_cols}] output, more than CUDA's "
                         f"{MAX_GRID}")
    with on_device(a.device):
        _sparse_matmul_kernel[grid](
            a, b, bias if bias is not None else a, out, ptr, idx, m, r, out_cols,
            a.stride(0), a.stride(1), *b_strides, out.stride(0), out.stride(1),
            HAS_BIAS=bias is not None, PRECISION=_precision(a.dtype),
            BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_O=block_o, num_warps=warps, num_stages=stages)
    return out


def _live_tile_grad(dy, x, occupancy, block):
    (m, n), k = dy.shape, x.shape[1]
    bn, bk = block
    dw = torch.empty((n, k), dtype=dy.dtype, device=dy.device)
    live = (occupancy != 0).to(torch.uint8).contiguous()
    _, warps, stages = _config(block, dy.dtype, DW_BLOCK_M)
    with on_device(dy.device):
        _live_tile_grad_kernel[(live.numel(),)](
            dy, x, live, dw, m, n, k, live.shape[1],
            dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), dw.stride(0), dw.stride(1),
            PRECISION=_precision(dy.dtype), BLOCK_M=DW_BLOCK_M, BLOCK_N=bn, BLOCK_K=bk,
            num_warps=warps, num_stages=stages)
    return dw


# the kernels run on CPU tensors only when defined under TRITON_INTERPRET=1 (triton decides at definition)
INTERPRETED = isinstance(_sparse_matmul_kernel, InterpretedFunction)


def _triton_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CUDA tensors of a tl.dot dtype, or CPU fp32 tensors when the kernels were defined under TRITON_INTERPRET=1;
    no empty dimension (those are trivial in torch)."""
    if x.numel() == 0 or weight.numel() == 0 or x.dtype not in TORCH_TO_TL:
        return False
    if x.is_cuda:
        return True
    return x.device.type == "cpu" and x.dtype == torch.float32 and INTERPRETED


class MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` over W's live tiles with the Triton kernels; use it through :func:`masked_linear`."""

    @staticmethod
    def forward(ctx, x, weight, bias, occupancy, block, dw_live_only):
        n, k = weight.shape
        bn, bk = block
        x2d = x.reshape(-1, k)
        row_ptr, col_idx = _csr(occupancy != 0)
        # b = W.T [K, N]: strides (along K, along N)
        y = _sparse_matmul(x2d, (weight.stride(1), weight.stride(0)), weight, bias, row_ptr, col_idx, n, bk, bn)
        ctx.save_for_backward(x2d, weight, occupancy)
        ctx.block, ctx.dw_live_only, ctx.x_shape = (bn, bk), dw_live_only, x.shape
        return y.reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, occupancy = ctx.saved_tensors
        bn, bk = ctx.block
        n, k = weight.shape
        dy = dy.reshape(-1, n)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # dX [M, K] = dY [M, N] @ W [N, K], over the live N-tiles of each K-block
            col_ptr, row_idx = _csr((occupancy != 0).t())
            dx = _sparse_matmul(dy, weight.stride(), weight, None, col_ptr, row_idx, k, bn, bk).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            dw = _live_tile_grad(dy, x2d, occupancy, ctx.block) if ctx.dw_live_only else dy.t() @ x2d
        if ctx.needs_input_grad[2]:
            db = dy.sum(dim=0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, db, None, None, None


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, occupancy: torch.Tensor,
                  block=DEFAULT_BLOCK, dw_live_only: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` skipping weight's dead BN x BK tiles (``occupancy`` False: taken as zero).

    x: [..., K]; weight: [N, K]; bias: [N] or None; occupancy: bool/uint8 [ceil(N/BN), ceil(K/BK)] (see
    :func:`tile_occupancy`); block: (BN, BK), powers of two >= 16. ``dw_live_only``: weight's gradient only on
    live tiles, zeros elsewhere (default: the dense gradient). Under autocast, the inputs are cast to its dtype.
    Without a device for the kernels (see the module docstring), dense torch math on the weight as it is."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if autocast:  # as F.linear would; the kernels then run with autocast off
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    block = check_masked_linear(x, weight, bias, occupancy, block)
    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        if _triton_runs(x, weight):
            return MaskedLinearFunction.apply(x, weight, bias, occupancy, block, bool(dw_live_only))
        if dw_live_only and weight.requires_grad:  # same value; the gradient reaches the live tiles only
            weight = torch.where(expand_occupancy(occupancy, block, weight.shape), weight, weight.detach())
        return F.linear(x, weight, bias)
