"""The backend contract: what a step hands each backend, and the loop over a group's buckets.

Every backend (the reference included) implements the same three functions (registered in dispatch.py)::

    rda_step(tensors: RdaTensors, bucket: plan.Bucket, scalars: scalars.RdaScalars) -> Tensor | None
    rda_max_A(tensors: RdaTensors, bucket: plan.Bucket, scalars: scalars.RdaScalars) -> Tensor
    grda_step(tensors: GrdaTensors, bucket: plan.Bucket, scalars: scalars.GrdaScalars) -> Tensor | None

for one bucket's tensors (lists aligned with ``bucket.plans``). The steps update params and state in place and
return each param's nonzero count (int64, on the params' device) when they counted them, else None. rda_max_A
writes nothing: it returns what rda_step's reweighting takes its max over, this step's A, reduced to each
tensor's max of finite values (float32, on the params' device; 0 for an unpenalized tensor). A step given
``tensors.max_A`` uses those maxes instead of its own: a sharded tensor's max is over every rank's shard
(sparse_rda/sharded.py). Backends read per-tensor decisions from the plans and step-wide values from the
scalars, and compute nothing the front end already knew.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .kernels.device_cache import DeviceCache
from .plan import Bucket


class RdaTensors(NamedTuple):
    """Per tensor: the parameter, its gradient, the state (float32), the tile map (tiled tensors, else None)
    and, in the structured modes, the per-group mean |w| of this step's weights (else None). ``max_A``: None,
    or the reweighting's max of A per tensor (float32 [n] on the params' device) for the step to use."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    T: list[torch.Tensor]
    B: list[torch.Tensor]
    A: list[torch.Tensor]
    v: list[torch.Tensor]
    occupancy: list[torch.Tensor | None]
    group_means: list[torch.Tensor | None]
    max_A: torch.Tensor | None = None


class GrdaTensors(NamedTuple):
    """Per tensor: the parameter, its gradient, the accumulator (float32); ``thresholds``: each tensor's l1, a
    float32 vector (on the host, or the device in capturable mode)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    acc: list[torch.Tensor]
    thresholds: torch.Tensor


_CONSTANTS = DeviceCache(1024)  # (values, dtype, device) -> those values as a device tensor


def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tuple of Python numbers as a tensor on ``device``, made once (cached): building it each step copies it
    from the host every step, which a CUDA graph cannot capture (a bucket's indices, gRDA's penalty mask). One a
    captured graph reads is never dropped from the cache (kernels/device_cache.py)."""
    return _CONSTANTS.get((values, dtype, device), lambda: torch.tensor(values, dtype=dtype, device=device))


def _index(indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return constant(indices, torch.int64, device)


def _pick(tensors: NamedTuple, indices: tuple[int, ...], n: int) -> NamedTuple:
    if len(indices) == n:
        return tensors
    return type(tensors)(*(column.index_select(0, _index(indices, column.device)) if torch.is_tensor(column)
                           else None if column is None else [column[i] for i in indices] for column in tensors))


def pick(tensors: NamedTuple, indices) -> NamedTuple:
    """The rows ``indices`` of a group's tensors (lists and per-tensor vectors)."""
    return _pick(tensors, tuple(indices), len(tensors.params))


def run(kernel, tensors: NamedTuple, buckets: tuple[Bucket, ...], scalars) -> torch.Tensor | None:
    """kernel(tensors, bucket, scalars) for each bucket; what it returns per param (nonzero counts, or rda_max_A's
    maxes) in the group's order, or None when the backend does not count."""
    n = len(tensors.params)
    if len(buckets) == 1:
        return kernel(_pick(tensors, buckets[0].indices, n), buckets[0], scalars)
    counts = None
    for bucket in buckets:
        bucket_counts = kernel(_pick(tensors, bucket.indices, n), bucket, scalars)
        if bucket_counts is None:
            continue
        if counts is None:
            counts = torch.zeros(n, dtype=bucket_counts.dtype, device=bucket_counts.device)
        counts.index_copy_(0, _index(bucket.indices, counts.device), bucket_counts)
    return counts


def group_means(param: torch.Tensor, group_size: int, out: torch.Tensor | None) -> torch.Tensor:
    """The mean |w| of each contiguous run of ``group_size`` weights (a structured mode's magnitude), float32,
    written into ``out`` when it fits (a buffer kept per parameter: its address stays the same from step to step,
    as the kernels' cached address tables and CUDA graph replays need)."""
    shape = (param.numel() // group_size,)
    if out is None or out.shape != shape or out.device != param.device:
        out = torch.empty(shape, dtype=torch.float32, device=param.device)
    return torch.mean(param.detach().float().abs().reshape(shape[0], group_size), dim=1, out=out)
