"""Block granularity on DTensor parameters (docs/ALGORITHMS.md sections 3 and 3c).

Under ``Shard(0)`` (FSDP2) or ``Shard(1)`` a rank holds whole rows (columns) of a weight; a tile straddles a shard
boundary when the boundary is not a multiple of the tile's side. A rank steps the tiles wholly its own with the
backend's block kernels, on a view of them (the interior), and its parts of straddling tiles here, with the
reference's pieces: each of their two sums (w^2, for the tile's RMS; the new T^2, for the group prox) is added
over the ranks that hold parts of the tile, one collective per group step of one float per straddling tile, so
every holder computes the tile's values as one process does. A straddling tile's A and B are read from the
holder's first row of it (every element of a tile holds the same values after a step). The tile map is
replicated: after a step the ranks' rows of it are exchanged (one collective, a byte per tile). Shards on
boundaries that are multiples of the tile side (FSDP2 on power-of-two sizes) straddle nothing: no tile sums
travel.

The views below are oriented so that the sharded dimension comes first (``Shard(1)``: transposed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from .sharded import by_groups, local, reduce_together, reducer


@dataclass(frozen=True)
class Layout:
    """Where a rank's shard of a 2-D weight lies among its tiles, along the sharded dimension ``dim``."""

    dim: int
    start: int  # this rank's rows (dim 0) or columns (dim 1): [start, stop) of the weight's
    stop: int
    length: int  # the weight's size along dim
    block: tuple[int, int]  # the tile's sides, oriented: along dim first
    straddling: tuple[int, ...]  # the tiles (indices along dim) that several ranks hold parts of
    groups: tuple  # the process groups their sums are added over

    @property
    def side(self) -> int:
        return self.block[0]

    def edges(self) -> list[tuple[int, int, int]]:
        """(local start, local stop, tile) of this rank's parts of straddling tiles (at most two)."""
        parts = []
        for tile in self.straddling:
            lo, hi = max(tile * self.side, self.start), min((tile + 1) * self.side, self.length, self.stop)
            if lo < hi:
                parts.append((lo - self.start, hi - self.start, tile))
        return parts

    def interior(self) -> tuple[int, int]:
        """The local range of the tiles wholly this rank's (it starts and ends on tile boundaries)."""
        lo, hi = 0, self.stop - self.start
        for a, b, _ in self.edges():
            if a == 0:
                lo = max(lo, b)
            if b == self.stop - self.start:
                hi = min(hi, a)
        return lo, max(lo, hi)

    def tiles(self, lo: int, hi: int) -> tuple[int, int]:
        """The tiles along dim that the local range [lo, hi) touches: [first, end)."""
        return (self.start + lo) // self.side, -(-(self.start + hi) // self.side)

    def tile_rows(self, tile: int) -> int:
        """A tile's size along dim in the whole weight (the last one ragged)."""
        return min(self.side, self.length - tile * self.side)


def check_sharding(p) -> list[tuple[int, int]]:
    """(mesh dimension, tensor dimension) of each Shard placement of a block-mode DTensor: at most one, on dim 0 or
    1, else an error naming the parameter (checked when the group is added, before any state exists)."""
    from torch.distributed.tensor import Shard

    sharding = [(mesh_dim, placement.dim) for mesh_dim, placement in enumerate(p.placements)
                if isinstance(placement, Shard)]
    if len(sharding) > 1 or (sharding and sharding[0][1] not in (0, 1)):
        raise NotImplementedError(f"params: granularity=('block', ...) takes a DTensor sharded along one mesh "
                                  f"dimension, on tensor dim 0 or 1 (shape {tuple(p.shape)}, placements "
                                  f"{p.placements})")
    return sharding


def layout(p, block: tuple[int, int]) -> Layout:
    """The layout of DTensor ``p`` (sharded along at most one mesh dimension, on dim 0 or 1, as DTensor splits:
    torch.chunk's pieces) for ``block`` tiles."""
    sharding = check_sharding(p)
    if not sharding:  # replicated: every rank steps the whole weight
        return Layout(0, 0, p.shape[0], p.shape[0], tuple(block), (), ())
    mesh_dim, dim = sharding[0]
    size, coord = p.device_mesh.size(mesh_dim), p.device_mesh.get_local_rank(mesh_dim)
    length, side = p.shape[dim], block[dim]
    chunk = -(-length // size)
    bounds = [(min(length, i * chunk), min(length, (i + 1) * chunk)) for i in range(size)]
    start, stop = bounds[coord]
    if local(p).shape[dim] != stop - start:
        raise NotImplementedError(f"granularity=('block', ...): a DTensor split other than torch.chunk's (shape "
                                  f"{tuple(p.shape)}, local {tuple(local(p).shape)} on rank {coord} of {size})")
    straddling = tuple(sorted({b // side for b, e in bounds[1:] if 0 < b < length and b < e and b % side}))
    return Layout(dim, start, stop, length, (block[dim], block[1 - dim]), straddling,
                  (p.device_mesh.get_group(mesh_dim),))


def orient(x: torch.Tensor, lay: Layout) -> torch.Tensor:
    """x (a weight-shaped tensor or its tile map) with the sharded dimension first (a view)."""
    return x if lay.dim == 0 else x.t()


def _tile_cols(n: int, side: int) -> torch.Tensor:
    """Each tile's size along the other dimension (the last one ragged), float32."""
    sizes = torch.full((-(-n // side),), float(side))
    sizes[-1] = n - side * (sizes.numel() - 1)
    return sizes


def _row_sums(x: torch.Tensor, side: int) -> torch.Tensor:
    """Sums of a slab of rows over each tile along the other dimension: [tiles]."""
    return reference.tile_sums(x, (x.shape[0], side))[0]


class TiledStep:
    """One group step's tiled DTensor weights. ``params``: the DTensors; ``tensors``: their local RdaTensors
    (occupancy: the whole tile maps, replicated); ``plans``: their plans."""

    def __init__(self, params: list, tensors, plans, s):
        self.layouts = [layout(p, plan.block) for p, plan in zip(params, plans)]
        self.tensors, self.plans, self.s = tensors, plans, s
        self.w = reference.as_float32(tensors.params)
        # every weight's straddling tiles, in one order on every rank (the rows of the sums' buffers)
        self.straddling = [(i, tile) for i, lay in enumerate(self.layouts) for tile in lay.straddling]
        # this rank's parts of them (possibly none while other ranks hold some: it joins their collectives)
        self.parts = [(i, lo, hi, tile) for i, lay in enumerate(self.layouts) for lo, hi, tile in lay.edges()]
        self.edge_A, self.counts = [], []
        if self.straddling:
            w2 = self._added([_row_sums(orient(self.w[i], self.layouts[i])[lo:hi].square(), self._other_side(i))
                              for i, lo, hi, _ in self.parts])
            self.counts = [self._counts(i, tile) for i, _, _, tile in self.parts]
            rms = [torch.sqrt(total / count) for total, count in zip(w2, self.counts)]
            first_A = [orient(tensors.A[i], self.layouts[i])[lo, ::self._other_side(i)] for i, lo, _, _ in self.parts]
            if self.parts:
                self.edge_A = reference._next_A(first_A, rms, s, out=True)

    def _other_side(self, i: int) -> int:
        return self.layouts[i].block[1]

    def _counts(self, i: int, tile: int) -> torch.Tensor:
        lay = self.layouts[i]
        other = orient(self.tensors.params[i], lay).shape[1]
        return lay.tile_rows(tile) * _tile_cols(other, lay.block[1]).to(self.w[i].device)

    def _added(self, sums: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's parts' per-tile sums (aligned with self.parts) added over every holder of each tile: a
        float32 buffer over all straddling tiles of all weights, this rank's parts filled and zeros elsewhere,
        summed by one collective per set of process groups."""
        widths = {(i, tile): -(-orient(self.tensors.params[i], self.layouts[i]).shape[1] // self._other_side(i))
                  for i, tile in self.straddling}
        mine = {(i, tile): total for (i, _, _, tile), total in zip(self.parts, sums)}
        added = {}
        device = self.w[0].device
        for groups, keys in by_groups(self.straddling, lambda key: self.layouts[key[0]].groups).items():
            pieces = [mine[k].float() if k in mine else torch.zeros(widths[k], device=device) for k in keys]
            added.update(zip(keys, reduce_together(groups, pieces, "sum")))
        return [added[(i, tile)] for i, _, _, tile in self.parts]

    def interior(self):
        """The local RdaTensors of the interior tiles: views of the weights and state (the interior starts on a
        tile boundary, so the block kernels tile it as the whole weight is tiled), contiguous tile maps."""
        t = self.tensors
        views = {key: [] for key in ("params", "grads", "T", "B", "A", "v", "occupancy")}
        self.map_views = []
        for i, lay in enumerate(self.layouts):
            lo, hi = lay.interior()
            for key in ("params", "grads", "T", "B", "A", "v"):
                x = getattr(t, key)[i]
                views[key].append(x[lo:hi] if lay.dim == 0 else x[:, lo:hi])
            first, end = lay.tiles(lo, hi) if hi > lo else (0, 0)
            whole = t.occupancy[i]
            part = whole[first:end] if lay.dim == 0 else whole[:, first:end]
            self.map_views.append(part)
            views["occupancy"].append(part.contiguous())
        return t._replace(**views, max_A=None)

    def local_max(self, interior_max: torch.Tensor) -> torch.Tensor:
        """The backend's maxes over the interiors with the edge tiles' A taken in."""
        maxes = interior_max.clone()
        for (i, _, _, _), A_new in zip(self.parts, self.edge_A):
            finite = torch.where(torch.isfinite(A_new), A_new, 0.0)
            if finite.numel():
                maxes[i] = torch.maximum(maxes[i], finite.max().to(maxes.dtype))
        return maxes

    def finish(self, interior, counts: torch.Tensor | None, max_A: torch.Tensor) -> torch.Tensor:
        """After the interior step: the interiors' maps back where copies were stepped, the edge parts stepped,
        the tile maps exchanged; returns the weights' local nonzero counts."""
        for view, stepped in zip(self.map_views, interior.occupancy):
            if stepped is not view:  # (a contiguous copy of a column range, Shard(1))
                view.copy_(stepped)
        counts = counts.clone() if counts is not None else torch.stack(
            [torch.count_nonzero(x) for x in interior.params])
        if self.straddling:
            self._step_edges(max_A, counts)
        exchange_maps(self.layouts, self.tensors.occupancy)
        return counts

    def _step_edges(self, max_A: torch.Tensor, counts: torch.Tensor) -> None:
        """This rank's parts of straddling tiles: the reference's element update, the tile's sums over its
        holders, the group prox and the tile's bit (a rank without parts joins the sums' collective)."""
        if not self.parts:
            self._added([])
            return
        t, s = self.tensors, self.s
        lr, averaging, _, _, lam, _, _, _ = s.changing()
        segs = [(i, self.layouts[i], lo, hi) for i, lo, hi, _ in self.parts]
        w_e = [orient(self.w[i], lay)[lo:hi] for i, lay, lo, hi in segs]
        g_e = reference.step_grads([orient(t.grads[i], lay)[lo:hi] for i, lay, lo, hi in segs], w_e, s)
        T_e = [orient(t.T[i], lay)[lo:hi] for i, lay, lo, hi in segs]
        v_e = [orient(t.v[i], lay)[lo:hi] for i, lay, lo, hi in segs]
        first_B = [orient(t.B[i], lay)[lo, ::lay.block[1]].clone() for i, lay, lo, hi in segs]
        if s.reweight:
            om = [reference.reweight_factor(A, max_A[i].float(), s.max_factor) * self.plans[i].factor
                  for (i, _, _, _), A in zip(segs, self.edge_A)]
        else:
            om = [torch.full_like(A, self.plans[i].factor) for (i, _, _, _), A in zip(segs, self.edge_A)]
        torch._foreach_mul_(first_B, averaging)
        reference.add_scaled_(first_B, om, lr)
        reference.dual_average_(T_e, v_e, w_e, g_e, s)
        T2 = self._added([_row_sums(T.square(), lay.block[1]) for T, (_, lay, _, _) in zip(T_e, segs)])
        for (i, lay, lo, hi), T, A, B, total, count in zip(segs, T_e, self.edge_A, first_B, T2, self.counts):
            shrink = reference.group_shrink(torch.sqrt(total), lam * B, count)
            other, side = T.shape[1], lay.block[1]

            def on_rows(per_tile, rows=hi - lo, other=other, side=side):
                return per_tile.repeat_interleave(side)[:other].expand(rows, other)

            orient(t.A[i], lay)[lo:hi] = on_rows(A)
            orient(t.B[i], lay)[lo:hi] = on_rows(B)
            new_w = T * on_rows(shrink)
            orient(t.params[i], lay)[lo:hi] = new_w.to(t.params[i].dtype)
            tile = (lay.start + lo) // lay.side
            orient(t.occupancy[i], lay)[tile] = shrink > 0
            counts[i] += torch.count_nonzero(orient(t.params[i], lay)[lo:hi])


def initial_map(p, block: tuple[int, int]) -> torch.Tensor:
    """The tile map of a DTensor weight now (which tiles hold a nonzero), whole, the same on every rank: each rank
    marks the tiles its shard touches, and one collective takes the max over the ranks."""
    lay = layout(p, block)
    w = orient(local(p).detach(), lay)
    rows, cols = lay.block
    n_tiles = -(-lay.length // rows)
    shift = lay.start % rows  # rows of this rank's first tile on ranks before it
    padded = torch.nn.functional.pad((w != 0).float(), (0, 0, shift, 0))
    mine = reference.tile_sums(padded, lay.block) > 0 if w.shape[0] else None
    whole = torch.zeros((n_tiles, -(-w.shape[1] // cols)), dtype=torch.uint8, device=w.device)
    if mine is not None:
        first = lay.start // rows
        whole[first:first + mine.shape[0]] = mine.to(torch.uint8)
    if lay.groups:
        reducer(lay.groups)(whole, "max")
    return orient(whole.bool(), lay).contiguous()


def tile_view(p, T: torch.Tensor, B: torch.Tensor, block: tuple[int, int]):
    """The tiles a rank's shard of DTensor ``p`` touches, for target_sparsity's control steps: (layout, norms of T
    per tile with straddling tiles' sums added over their holders (one collective), B per tile (its first local
    row's), each tile's size in the whole weight, and the size to count it by: 0 for a straddling tile another rank
    owns (the holder of its first row counts it), so that the ranks' histograms add up to one process's). Each is
    [this rank's tiles along dim, tiles along the other]; T, B the local state."""
    lay = layout(p, block)
    T_o, B_o = orient(T, lay), orient(B, lay)
    side, other_side = lay.block
    first, end = lay.tiles(0, lay.stop - lay.start) if lay.stop > lay.start else (0, 0)
    padded = torch.nn.functional.pad(T_o.square(), (0, 0, lay.start - first * side, 0))
    sums = reference.tile_sums(padded, lay.block) if T_o.shape[0] else T_o.new_zeros((0, -(-T_o.shape[1] // other_side)))
    if lay.straddling:
        width = sums.shape[1]
        buffer = torch.zeros((len(lay.straddling), width), device=T.device)
        for row, tile in enumerate(lay.straddling):
            if first <= tile < end:
                buffer[row] = sums[tile - first]
        reducer(lay.groups)(buffer, "sum")
        for row, tile in enumerate(lay.straddling):
            if first <= tile < end:
                sums[tile - first] = buffer[row]
    tiles = range(first, end)
    first_rows = [max(tile * side, lay.start) - lay.start for tile in tiles]
    B_tile = B_o[first_rows, ::other_side] if first_rows else B_o[:0, ::other_side]
    cols = _tile_cols(T_o.shape[1], other_side).to(T.device)
    counts = torch.stack([lay.tile_rows(tile) * cols for tile in tiles]) if first_rows else cols.new_zeros(
        (0, cols.numel()))
    owned = torch.tensor([lay.start <= tile * side for tile in tiles], device=T.device, dtype=torch.float32)
    return lay, torch.sqrt(sums), B_tile, counts, counts * owned[:, None]


def spread(per_tile: torch.Tensor, lay: Layout, shape) -> torch.Tensor:
    """Each local tile's value on each of its local elements (oriented ``shape``)."""
    rows = (torch.arange(shape[0], device=per_tile.device) + lay.start) // lay.side - lay.start // lay.side
    return per_tile[rows].repeat_interleave(lay.block[1], dim=1)[:, :shape[1]]


def apply_threshold(p, T: torch.Tensor, B: torch.Tensor, occupancy: torch.Tensor, lam: float, block) -> None:
    """target_sparsity's snap on a rank's shard of a tiled DTensor weight: w = the group prox of T with threshold
    lam B (straddling tiles' norms over every holder), the tile map's rows with it, then the maps exchanged."""
    lay, norms, B_tile, counts, _ = tile_view(p, T, B, block)
    shrink = reference.group_shrink(norms, lam * B_tile, counts)
    w = orient(local(p), lay)
    w.copy_(orient(T, lay) * spread(shrink, lay, w.shape))
    first = lay.start // lay.side
    orient(occupancy, lay)[first:first + shrink.shape[0]] = shrink > 0
    exchange_maps([lay], [occupancy])


def exchange_maps(layouts: list[Layout], maps: list[torch.Tensor]) -> None:
    """Each rank's rows of the (replicated) tile maps to every rank: a buffer of all maps, this rank's tile rows
    filled and zeros elsewhere, maxed over the ranks (holders of a straddling tile agree on its bit)."""
    for groups, idx in by_groups(range(len(layouts)), lambda i: layouts[i].groups).items():
        pieces = []
        for i in idx:
            lay, whole = layouts[i], orient(maps[i], layouts[i])
            mine = torch.zeros_like(whole, dtype=torch.uint8)
            first, end = lay.tiles(0, lay.stop - lay.start) if lay.stop > lay.start else (0, 0)
            mine[first:end] = whole[first:end]
            pieces.append(mine)
        for i, reduced in zip(idx, reduce_together(groups, pieces, "max")):
            orient(maps[i], layouts[i]).copy_(reduced.bool())
