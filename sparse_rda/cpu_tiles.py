"""SparseLinear on CPU: the forward and dX over the weight's live tiles only, in composed ATen calls.

Packing (:func:`pack_tiles`, once per weight update: a layer keeps it until the weight's or the map's version
counter moves, and optimizer steps, RDA's kernels included, bump the weight's): for each output block r of BN
rows, the input columns of its live tiles and the weight there packed side by side, ``W_r`` [BN, live columns];
likewise for each input block c of BK columns, the output rows of its live tiles and ``W_c`` [live rows, BK].

- forward: ``y[:, r] = x[:, columns of r] @ W_r.T`` (+ bias): one GEMM per output block over its live tiles;
- dX: ``dx[:, c] = dy[:, rows of c] @ W_c``, one GEMM per input block;
- dW: dense ``dy.T @ x`` by default (RDA's dual average needs every gradient, as on the GPU); with
  ``dw_live_only`` the live tiles' ``dy[:, r].T @ x[:, columns of r]`` and zeros elsewhere.

Work scales with the live tiles (at 10% live: a tenth of the dense FLOPs), plus gathering each block's live
input columns (x [M, live columns of r]). Each output block is one GEMM, so 16-bit inputs accumulate in fp32
across its whole reduction and round once, as the GPU kernels do.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .kernels.tiles import check_masked_linear


class PackedTiles(NamedTuple):
    by_row: list  # (r0, r1, columns int64, W[r0:r1, columns]) for each output block with a live tile
    by_col: list  # (c0, c1, rows int64, W[rows, c0:c1]) for each input block with a live tile
    key: tuple  # what it was packed from (see _key)


def _key(weight: torch.Tensor, occupancy: torch.Tensor) -> tuple:
    return (weight._version, occupancy._version, weight.data_ptr(), occupancy.data_ptr(), weight.dtype,
            tuple(weight.shape))


def _spans(blocks: torch.Tensor, side: int, limit: int) -> torch.Tensor:
    """The element indices covered by these blocks of ``side`` (clipped at ``limit``), in order."""
    idx = (blocks[:, None] * side + torch.arange(side)).flatten()
    return idx[idx < limit]


@torch.no_grad()
def pack_tiles(weight: torch.Tensor, occupancy: torch.Tensor, block: tuple[int, int]) -> PackedTiles:
    """The weight's live tiles (occupancy nonzero), packed by output block and by input block."""
    (bn, bk), (n, k) = block, weight.shape
    live = (occupancy != 0).cpu()
    w = weight.detach()
    by_row, by_col = [], []
    for r in live.any(1).nonzero().flatten().tolist():
        cols = _spans(live[r].nonzero().flatten(), bk, k)
        r0, r1 = r * bn, min((r + 1) * bn, n)
        by_row.append((r0, r1, cols, w[r0:r1].index_select(1, cols)))
    for c in live.any(0).nonzero().flatten().tolist():
        rows = _spans(live[:, c].nonzero().flatten(), bn, n)
        c0, c1 = c * bk, min((c + 1) * bk, k)
        by_col.append((c0, c1, rows, w[:, c0:c1].index_select(0, rows)))
    return PackedTiles(by_row, by_col, _key(weight, occupancy))


def packed_for(cache: dict, weight: torch.Tensor, occupancy: torch.Tensor, block) -> PackedTiles:
    """The packing in ``cache`` (a layer's) if the weight and map are unchanged since, else a new one."""
    packed = cache.get("tiles")
    if packed is None or packed.key != _key(weight, occupancy):
        packed = cache["tiles"] = pack_tiles(weight, occupancy, block)
    return packed


def _block_products(a: torch.Tensor, blocks: list, out_width: int, bias: torch.Tensor | None,
                    transpose: bool) -> torch.Tensor:
    """out[:, o0:o1] = a[:, idx] @ (W.T if transpose else W) for each packed (o0, o1, idx, W); zero (or the
    bias) where no block writes."""
    out = a.new_zeros(a.shape[0], out_width) if bias is None else bias.expand(a.shape[0], out_width).clone()
    for o0, o1, idx, w in blocks:
        out[:, o0:o1].addmm_(a.index_select(1, idx), w.t() if transpose else w)
    return out


class LiveTileLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, packed: PackedTiles, dw_live_only):
        n, k = weight.shape
        x2d = x.reshape(-1, k)
        y = _block_products(x2d, packed.by_row, n, bias, transpose=True)
        ctx.save_for_backward(x2d)
        ctx.packed, ctx.meta = packed, (x.shape, n, k, dw_live_only)
        return y.reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, dy):
        (x2d,) = ctx.saved_tensors
        x_shape, n, k, dw_live_only = ctx.meta
        dy = dy.reshape(-1, n)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _block_products(dy, ctx.packed.by_col, k, None, transpose=False).reshape(x_shape)
        if ctx.needs_input_grad[1]:
            dw = _live_tile_grad(dy, x2d, ctx.packed, (n, k)) if dw_live_only else dy.t() @ x2d
        if ctx.needs_input_grad[2]:
            db = dy.sum(dim=0, dtype=torch.promote_types(dy.dtype, torch.float32)).to(dy.dtype)
        return dx, dw, db, None, None


def _live_tile_grad(dy, x2d, packed: PackedTiles, shape) -> torch.Tensor:
    """dW on the live tiles (dy[:, r].T @ x[:, columns of r]), zeros elsewhere."""
    dw = dy.new_zeros(shape)
    for r0, r1, cols, _ in packed.by_row:
        dw[r0:r1].index_copy_(1, cols, dy[:, r0:r1].t() @ x2d.index_select(1, cols))
    return dw


def live_tile_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, occupancy: torch.Tensor,
                     block, dw_live_only: bool = False, cache: dict | None = None) -> torch.Tensor:
    """masked_linear on CPU tensors: ``F.linear(x, weight, bias)`` with the tiles ``occupancy`` marks dead taken
    as zero and never read. ``cache``: a dict the caller keeps (SparseLinear does) to reuse the packing across
    calls until the weight changes. Under autocast, the inputs are cast to its dtype, as F.linear would."""
    autocast = torch.is_autocast_enabled("cpu")
    if autocast:
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    block = check_masked_linear(x, weight, bias, occupancy, block)
    packed = packed_for({} if cache is None or autocast else cache, weight, occupancy, block)
    with torch.autocast("cpu", enabled=False) if autocast else contextlib.nullcontext():
        return LiveTileLinear.apply(x, weight, bias, packed, bool(dw_live_only))
