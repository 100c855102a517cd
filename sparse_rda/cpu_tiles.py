"""SparseLinear on CPU: the forward and dX over the weight's live tiles only, in composed ATen calls.

Packing (:func:`pack_tiles`, once per weight update: a layer keeps it until the weight's or the map's version
counter moves, and optimizer steps, RDA's kernels included, bump the weight's): each live (BN, BK) tile as its
own contiguous block (a ragged edge tile is smaller), in the compute dtype: the weight's, or fp32 for 16-bit
weights, so that a sum over tiles rounds once, as the GPU kernels accumulate.

- forward: for each live tile (r, c), ``y[:, r].addmm_(x[:, c], tile.T)``, on strided column slices (no gather:
  BLAS reads a slice through its leading dimension);
- dX: ``dx[:, c].addmm_(dy[:, r], tile)``;
- dW: dense ``dy.T @ x`` by default (RDA's dual average needs every gradient, as on the GPU); with
  ``dw_live_only`` each live tile's ``dy[:, r].T @ x[:, c]`` and zeros elsewhere.

Work scales with the live tiles: at 10% live, a tenth of the dense FLOPs, in GEMMs of [M, BK] x [BK, BN], plus a
Python call per live tile (a few microseconds) and one zero-filled output.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .kernels.tiles import check_masked_linear


class PackedTiles(NamedTuple):
    spans: list  # (r0, r1, c0, c1) of each live tile: rows r0:r1 and columns c0:c1 of the weight
    tiles: list  # the weight there, contiguous, in the compute dtype
    key: tuple  # what it was packed from (see _key)


def _key(weight: torch.Tensor, occupancy: torch.Tensor) -> tuple:
    return (weight._version, occupancy._version, weight.data_ptr(), occupancy.data_ptr(), weight.dtype,
            tuple(weight.shape))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def pack_tiles(weight: torch.Tensor, occupancy: torch.Tensor, block: tuple[int, int]) -> PackedTiles:
    """The weight's live tiles (occupancy nonzero), row-major."""
    (bn, bk), (n, k) = block, weight.shape
    w = weight.detach().to(compute_dtype(weight.dtype))
    spans = [(r * bn, min((r + 1) * bn, n), c * bk, min((c + 1) * bk, k))
             for r, c in (occupancy != 0).nonzero().tolist()]
    return PackedTiles(spans, [w[r0:r1, c0:c1].contiguous() for r0, r1, c0, c1 in spans], _key(weight, occupancy))


def packed_for(cache: dict, weight: torch.Tensor, occupancy: torch.Tensor, block) -> PackedTiles:
    """The packing in ``cache`` (a layer's) if the weight and map are unchanged since, else a new one."""
    packed = cache.get("tiles")
    if packed is None or packed.key != _key(weight, occupancy):
        packed = cache["tiles"] = pack_tiles(weight, occupancy, block)
    return packed


class LiveTileLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, packed: PackedTiles, dw_live_only):
        n, k = weight.shape
        x2d = x.reshape(-1, k)
        xc = x2d.to(compute_dtype(x.dtype))
        y = xc.new_zeros(xc.shape[0], n) if bias is None else bias.to(xc.dtype).expand(xc.shape[0], n).clone()
        for (r0, r1, c0, c1), tile in zip(packed.spans, packed.tiles):
            y[:, r0:r1].addmm_(xc[:, c0:c1], tile.t())
        ctx.save_for_backward(x2d)
        ctx.packed, ctx.meta = packed, (x.shape, n, k, dw_live_only)
        return y.to(x.dtype).reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, dy):
        (x2d,) = ctx.saved_tensors
        x_shape, n, k, dw_live_only = ctx.meta
        dy = dy.reshape(-1, n)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dyc = dy.to(compute_dtype(dy.dtype))
            dx = dyc.new_zeros(dy.shape[0], k)
            for (r0, r1, c0, c1), tile in zip(ctx.packed.spans, ctx.packed.tiles):
                dx[:, c0:c1].addmm_(dyc[:, r0:r1], tile)
            dx = dx.to(dy.dtype).reshape(x_shape)
        if ctx.needs_input_grad[1]:
            dw = _live_tile_grad(dy, x2d, ctx.packed, (n, k)) if dw_live_only else dy.t() @ x2d
        if ctx.needs_input_grad[2]:
            db = dy.sum(dim=0, dtype=compute_dtype(dy.dtype)).to(dy.dtype)
        return dx, dw, db, None, None


def _live_tile_grad(dy, x2d, packed: PackedTiles, shape) -> torch.Tensor:
    """dW on the live tiles (dy[:, r].T @ x[:, c]), zeros elsewhere."""
    dw = dy.new_zeros(shape)
    for r0, r1, c0, c1 in packed.spans:
        dw[r0:r1, c0:c1] = dy[:, r0:r1].t() @ x2d[:, c0:c1]
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
