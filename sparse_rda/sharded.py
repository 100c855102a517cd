"""DTensor parameters (FSDP2's fully_shard, tensor parallelism): each rank steps its local shard with the same
kernels as one process, and the few per-tensor quantities that are global are reduced over the tensor's device
mesh (docs/ALGORITHMS.md section 3c): the reweighting's max A, the nonzero counts, target_sparsity's quantile
and, in block mode, the sums of tiles that straddle a shard boundary.

A reduction runs over the mesh dimensions that shard the tensor (``Shard`` placements); along a ``Replicate``
dimension every rank holds the same values, so nothing is reduced there. Every rank must make the same calls in
the same order (collectives): the optimizer's step does, and so must callers of ``nnz()`` and ``sparsity()``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch


def is_sharded(t) -> bool:
    """A torch.distributed DTensor. None exists before its module is imported, so the check imports nothing
    (that import is slow)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def any_dtensor(tensors: Sequence) -> bool:
    """Whether any of ``tensors`` is a DTensor (no per-tensor check before torch.distributed.tensor is imported)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and any(isinstance(t, dtensor.DTensor) for t in tensors)


def local_lister(tensors: Sequence):
    """The function that lists the local parts of a group's tensors: local_list where a param is a DTensor, a
    plain list copy otherwise (a step of plain tensors pays no per-tensor check)."""
    return local_list if any_dtensor(tensors) else list


def local(t):
    """The rank's own part of a DTensor (a view: writing it writes the DTensor), anything else as it is."""
    return t.to_local() if is_sharded(t) else t


def local_list(tensors: Sequence) -> list:
    return [local(t) for t in tensors]


def reduce_groups(t) -> tuple:
    """The process groups to reduce a per-tensor quantity of ``t`` over: one per mesh dimension that shards it
    (empty for a plain tensor, or one replicated on every dimension)."""
    if not is_sharded(t):
        return ()
    from torch.distributed.tensor import Shard

    return tuple(t.device_mesh.get_group(dim) for dim, placement in enumerate(t.placements)
                 if isinstance(placement, Shard))


def replicated_like(t: torch.Tensor, p) -> torch.Tensor:
    """``t`` (the same on every rank) as a DTensor replicated over ``p``'s mesh: state that is whole on every rank
    (block mode's tile map), which torch.distributed.checkpoint then saves once and loads at any world size."""
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(t, p.device_mesh, [Replicate()] * p.device_mesh.ndim, run_check=False)


def any_sharded(tensors: Sequence) -> bool:
    return any(reduce_groups(t) for t in tensors)


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(values: torch.Tensor, tensors: Sequence, op: str) -> torch.Tensor:
    """Reduces ``values[i]`` (one row per tensor, dim 0) over ``tensors[i]``'s shards, in place: one collective
    per set of process groups among the tensors (FSDP2 and tensor parallelism put all of a model's tensors on
    one mesh: one collective), none for tensors that are not sharded."""
    for groups, idx in by_groups(range(len(tensors)), lambda i: reduce_groups(tensors[i])).items():
        if len(idx) == values.shape[0]:
            reducer(groups)(values, op)
        else:
            values[idx] = reducer(groups)(values[idx], op)
    return values


def by_groups(items, groups_of, keep_unsharded: bool = False) -> dict[tuple, list]:
    """``items`` by the process groups ``groups_of(item)`` reduces them over, in first-seen order (the same on
    every rank, so the collectives line up); items with none are left out unless ``keep_unsharded``."""
    found: dict[tuple, list] = {}
    for item in items:
        groups = groups_of(item)
        if groups or keep_unsharded:
            found.setdefault(groups, []).append(item)
    return found


def reduce_together(groups: tuple, pieces: list[torch.Tensor], op: str) -> list[torch.Tensor]:
    """``pieces`` (one dtype) reduced over ``groups`` in one collective of their concatenation; returned in
    their shapes."""
    buffer = reducer(groups)(torch.cat([piece.flatten() for piece in pieces]), op)
    return [chunk.view(piece.shape) for piece, chunk in zip(pieces, buffer.split([p.numel() for p in pieces]))]


def reducer(groups: tuple):
    """``reduce(tensor, op)``: the tensor all-reduced in place over ``groups`` (from reduce_groups), returned."""
    def reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
        import torch.distributed as dist

        for group in groups:
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, _OPS[op]), group=group)
        return tensor

    return reduce


def count_nonzeros(tensors: Sequence[torch.Tensor], local_counts: dict | None = None) -> list[int]:
    """Each tensor's nonzero count over all its shards: ``local_counts[i]`` where given (a kernel counted them),
    else counted here; one collective for the sharded ones, one host sync per device."""
    local_counts = local_counts or {}
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    counts = [0] * len(tensors)
    for device, idx in by_device.items():
        values = torch.stack([local_counts[i].to(device) if i in local_counts else torch.count_nonzero(local(tensors[i]))
                              for i in idx])
        if any_sharded([tensors[i] for i in idx]):
            all_reduce(values, [tensors[i] for i in idx], "sum")
        for i, c in zip(idx, values.tolist()):
            counts[i] = c
    return counts


def group_means(p: torch.Tensor, group_size: int, out: torch.Tensor | None) -> torch.Tensor:
    """A structured mode's mean |w| of each group of ``group_size`` trailing elements (sparse_rda/step.py's
    group_means) on the rank's shard of ``p``. Sharded along a dimension outside the groups (FSDP2's Shard(0) of a
    conv weight: whole filters per rank), each rank's groups are whole; sharded inside them (channel mode's
    filters under Shard(1)), each rank sums its part of every group and the sums are added over those shards (one
    collective)."""
    from . import step

    inner = _group_dims(tuple(p.shape), group_size)
    splitting = [dim for dim, placement in enumerate(p.placements) if getattr(placement, "dim", -1) >= inner] \
        if is_sharded(p) else []
    mine = local(p)
    if not splitting:
        return step.group_means(mine, group_size, out)
    n_groups = 1
    for size in mine.shape[:inner]:
        n_groups *= size
    sums = mine.detach().float().abs().reshape(n_groups, -1).sum(dim=1)
    import torch.distributed as dist

    for dim in splitting:
        dist.all_reduce(sums, group=p.device_mesh.get_group(dim))
    if out is None or out.shape != sums.shape or out.device != sums.device:
        out = torch.empty_like(sums)
    return torch.div(sums, group_size, out=out)


def _group_dims(shape: tuple[int, ...], group_size: int) -> int:
    """The first of the trailing dimensions whose elements make one group."""
    size = 1
    for dim in range(len(shape) - 1, -1, -1):
        if size == group_size:
            return dim + 1
        size *= shape[dim]
    return 0
