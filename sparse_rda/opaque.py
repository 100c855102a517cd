"""A backend dynamo cannot trace (the Triton one: its launches read raw addresses) as torch ops, for steps traced
by torch.compile: the graph holds one opaque op per bucket, with what it mutates declared, and the op runs the
backend's own function when the graph runs. Eager steps call the backend directly (an op call costs ~15 us).

The ops carry a bucket's plans and the step's scalars in the schema's types; ``wrap`` gives a backend whose two
functions go through them (dispatch.backend returns it while compiling)."""

from __future__ import annotations

from dataclasses import replace

import torch

from .plan import BLOCK, CHANNEL, ELEMENT, KERNEL, NM, Bucket, TensorPlan
from .scalars import GrdaScalars, RdaScalars
from .step import GrdaTensors, RdaTensors

MODES = (ELEMENT, KERNEL, CHANNEL, BLOCK, NM)  # a plan's mode as its index here (schemas have no list of strings)
_STEPS: dict[str, tuple] = {}  # backend name -> its (rda_step, grda_step): the ops look it up when they run


def _bucket(params, grads, modes, penalized, group_sizes, block, nm=(), rows=()) -> Bucket:
    """The bucket the op's arguments describe (its tensors are all the op was given); ``nm``: an N:M bucket's
    (N, M), ``rows``: its plans' row lengths."""
    nm = tuple(nm) or None
    plans = tuple(TensorPlan(MODES[mode], pen, size, tuple(block) if MODES[mode] == BLOCK else None,
                             nm if MODES[mode] == NM else None, row)
                  for mode, pen, size, row in zip(modes, penalized, group_sizes, rows or [0] * len(modes)))
    return Bucket(tuple(range(len(params))), plans, params[0].dtype, grads[0].dtype, tuple(block) or None, nm)


@torch.library.custom_op("sparse_rda::backend_rda_step_", mutates_args=("params", "T", "B", "A", "v", "occupancy"))
def _rda_op(backend: str, params: list[torch.Tensor], grads: list[torch.Tensor], T: list[torch.Tensor],
            B: list[torch.Tensor], A: list[torch.Tensor], v: list[torch.Tensor],
            occupancy: list[torch.Tensor], group_means: list[torch.Tensor | None], max_A: torch.Tensor | None,
            modes: list[int],
            penalized: list[bool], group_sizes: list[int], block: list[int], nm: list[int], rows: list[int],
            hyper: list[float], reweight: bool, maximize: bool, inv_scale: torch.Tensor | None,
            device_hyper: torch.Tensor | None, found_inf: torch.Tensor | None) -> torch.Tensor:
    lr, lam, beta, beta_b, averaging, weight_decay, max_factor = hyper
    scalars = RdaScalars(lr, lam, beta, beta_b, averaging, weight_decay, max_factor, reweight, maximize, inv_scale,
                         device_hyper, found_inf)
    # occupancy: the tiled bucket's maps, else empty (torch's functionalization fails on a mutated list with None)
    tensors = RdaTensors(params, grads, T, B, A, v, occupancy or [None] * len(params), group_means, max_A)
    bucket = _bucket(params, grads, modes, penalized, group_sizes, block, nm, rows)
    return _STEPS[backend][0](tensors, bucket, scalars)


@_rda_op.register_fake
def _(backend, params, *args):
    return params[0].new_empty((len(params),), dtype=torch.int64)


@torch.library.custom_op("sparse_rda::backend_grda_step_", mutates_args=("params", "acc"))
def _grda_op(backend: str, params: list[torch.Tensor], grads: list[torch.Tensor], acc: list[torch.Tensor],
             thresholds: torch.Tensor, lr: float, inv_scale: torch.Tensor | None, lr_device: torch.Tensor | None,
             found_inf: torch.Tensor | None) -> torch.Tensor:
    n = len(params)
    bucket = _bucket(params, grads, [0] * n, [True] * n, [1] * n, [])  # (l1 = 0: unpenalized)
    return _STEPS[backend][1](GrdaTensors(params, grads, acc, thresholds), bucket,
                              GrdaScalars(lr, inv_scale, lr_device, found_inf))


@_grda_op.register_fake
def _(backend, params, *args):
    return params[0].new_empty((len(params),), dtype=torch.int64)


def wrap(backend):
    """``backend`` with its step functions behind the ops (a dispatch.Backend of the same name)."""
    _STEPS[backend.name] = (backend.rda_step, backend.grda_step)
    name = backend.name

    def rda_step(tensors: RdaTensors, bucket: Bucket, s: RdaScalars) -> torch.Tensor:
        plans = bucket.plans
        tensors = tensors._replace(occupancy=list(tensors.occupancy) if bucket.tiled else [])
        return torch.ops.sparse_rda.backend_rda_step_(
            name, *tensors, [MODES.index(plan.mode) for plan in plans], [plan.penalized for plan in plans],
            [plan.group_size for plan in plans], list(bucket.block or ()), list(bucket.nm or ()),
            [plan.row for plan in plans], s.host_values(), s.reweight, s.maximize, s.inv_scale, s.device,
            s.found_inf)

    def grda_step(tensors: GrdaTensors, bucket: Bucket, s: GrdaScalars) -> torch.Tensor:
        return torch.ops.sparse_rda.backend_grda_step_(name, *tensors, s.lr, s.inv_scale, s.lr_device, s.found_inf)

    return replace(backend, rda_step=rda_step, grda_step=grda_step)
