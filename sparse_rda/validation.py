"""Checks on hyper-parameters and tensors. Each raises a clear error naming the parameter, and runs before
any tensor is touched, so a bad step never half-applies."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

from .plan import GRANULARITIES, MAX_NM_GROUP
from .sharded import is_sharded, local


def check_number(name: str, value, *, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> None:
    """value must be a finite real number in [low, high] (or (low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def check_hyper_value(name: str, value, capturable: bool, **bounds) -> None:
    """A number in range, or a one-element floating tensor (as torch's optimizers take ``lr``). Outside capturable
    mode the step reads a tensor's value on the host, so it is range-checked like a number; in capturable mode it
    is not read back (that would wait on the device), so its range is the caller's responsibility."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"{name} must be a one-element floating tensor, got {value.dtype} of shape "
                            f"{tuple(value.shape)}")
        if capturable:
            return
        value = float(value)
    check_number(name, value, **bounds)


def check_optional_time(name: str, value) -> None:
    """A time scale: None or 0 (meaning none) or a positive finite number."""
    if value is None:
        return
    check_number(name, value)


def check_choice(name: str, value, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _positive_ints(values) -> bool:
    return all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in values)


def check_granularity(value) -> None:
    """One of plan.GRANULARITIES ("element", "kernel", "channel"), ("block", rows, cols) with positive integer
    tile sizes (the one rule for RDA's tiles; the masked matmul's own is kernels/tiles.py), or ("nm", N, M) with
    integers 1 <= N < M <= plan.MAX_NM_GROUP."""
    if isinstance(value, (tuple, list)) and len(value) == 3 and value[0] == "nm":
        if not (_positive_ints(value[1:]) and value[1] < value[2] <= MAX_NM_GROUP):
            raise ValueError(f"granularity ('nm', N, M) keeps at most N nonzeros in each group of M weights and takes "
                             f"integers 1 <= N < M <= {MAX_NM_GROUP}; got {value!r}")
        return
    if isinstance(value, (tuple, list)):
        if not (len(value) == 3 and value[0] == "block" and _positive_ints(value[1:])):
            raise ValueError(f"granularity must be ('block', rows, cols) with positive integer sizes, or ('nm', N, M); "
                             f"got {value!r}")
        return
    check_choice("granularity", value, GRANULARITIES)


def check_nm_target(granularity, target_sparsity) -> None:
    """target_sparsity with ("nm", N, M): at least the pattern's own 1 - N/M (sparsity beyond it is steered inside
    the pattern; below it no lam gets there)."""
    if target_sparsity is None or not (isinstance(granularity, (tuple, list)) and granularity[0] == "nm"):
        return
    floor = 1.0 - granularity[1] / granularity[2]
    if isinstance(target_sparsity, numbers.Real) and target_sparsity < floor:
        raise ValueError(f"target_sparsity={target_sparsity} is below what granularity {tuple(granularity)!r} zeroes by "
                         f"itself (1 - N/M = {floor:g}): ask for at least {floor:g}, or use a sparser pattern")


def check_pattern(pattern) -> tuple[int, int] | None:
    """None, or an N:M pattern given as "N:M" or (N, M) with integers 1 <= N < M <= 32, as (N, M)."""
    if pattern is None:
        return None
    parts = pattern.split(":") if isinstance(pattern, str) else pattern
    try:
        n, m = (int(x) if isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)) else None
                for x in parts)
    except (TypeError, ValueError):
        n = m = None
    if n is None or m is None or not 1 <= n < m <= MAX_NM_GROUP:
        raise ValueError(f"pattern must be 'N:M' or (N, M) with integers 1 <= N < M <= {MAX_NM_GROUP}; "
                         f"got {pattern!r}")
    return n, m


def check_target(target_sparsity, total_steps, capturable: bool) -> None:
    """target_sparsity: None, or a fraction in [0, 1) with total_steps a positive int (the ramp's length);
    steered on the host, so not in capturable mode."""
    if target_sparsity is None:
        return
    check_number("target_sparsity", target_sparsity, high=1.0)
    if target_sparsity >= 1.0:
        raise ValueError(f"target_sparsity must be below 1, got {target_sparsity}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int when target_sparsity is set, got {total_steps!r}")
    if capturable:
        raise ValueError("target_sparsity is steered on the host: it cannot be combined with capturable=True")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def is_expanded(t: torch.Tensor) -> bool:
    """Whether elements share memory through a stride-0 dimension (an ``expand``ed view): a step writing each
    element would write some twice."""
    return any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape))


def check_sharded(p, capturable: bool) -> None:
    """A DTensor parameter: sharded (``Shard``) or replicated along each mesh dimension, stepped eagerly (the
    collectives of sparse_rda/sharded.py run outside torch.compile and CUDA graphs)."""
    from torch.distributed.tensor import Replicate, Shard

    where = f"params: a DTensor parameter (shape {tuple(p.shape)}, placements {p.placements})"
    if not all(isinstance(placement, (Shard, Replicate)) for placement in p.placements):
        raise ValueError(f"{where} must be Shard or Replicate along each mesh dimension (a Partial parameter has "
                         "no values of its own to step)")
    if capturable:
        raise ValueError(f"{where}: capturable=True is not supported with DTensor parameters (the step's "
                         "collectives are not captured)")
    if torch.compiler.is_compiling():
        raise NotImplementedError(f"{where}: a step traced by torch.compile does not take DTensor parameters yet; "
                                  "step them eagerly (compile the model, not optimizer.step)")


def check_nm_sharding(p) -> None:
    """A DTensor in N:M mode: its groups run along each row, so each rank must hold whole rows (Shard(0), as
    FSDP2 shards, or Replicate); a split along another dim would cut groups."""
    from torch.distributed.tensor import Shard

    if any(isinstance(placement, Shard) and placement.dim != 0 for placement in p.placements):
        raise NotImplementedError(f"params: granularity=('nm', N, M) takes DTensors sharded along dim 0 only (its "
                                  f"groups run along the rows; shape {tuple(p.shape)}, placements {p.placements})")


def check_params(params: list[torch.Tensor], capturable: bool = False) -> None:
    """Parameters of a group: real floating tensors, all on one device (DTensors: see check_sharded)."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"params: a param group must live on one device, got {sorted(map(str, devices))}")
    for p in params:
        if is_sharded(p):
            check_sharded(p, capturable)
        if p.layout != torch.strided:
            raise TypeError(f"params: parameters must be dense tensors (got layout {p.layout}, shape {tuple(p.shape)})")
        if is_expanded(local(p)):
            raise ValueError(f"params: a parameter of shape {tuple(p.shape)} is an expanded view (stride 0): its "
                             "elements share memory, and the step writes each one")
        if p.is_complex():
            raise TypeError(f"params: complex parameters are not supported (got {p.dtype}, shape {tuple(p.shape)})")
        if not p.is_floating_point():
            raise TypeError(f"params: parameters must be floating point (got {p.dtype}, shape {tuple(p.shape)})")


def check_grad(p: torch.Tensor) -> None:
    """A gradient we can apply: dense, real, on the parameter's device."""
    g = p.grad
    if g.is_sparse or g.layout != torch.strided:
        raise RuntimeError(f"grad: sparse gradients are not supported (layout {g.layout}, shape {tuple(p.shape)})")
    if g.is_complex():
        raise TypeError(f"grad: complex gradients are not supported (shape {tuple(p.shape)})")
    if g.device != p.device:
        raise ValueError(f"grad: gradient on {g.device} for a parameter on {p.device}")
    if g.shape != p.shape:
        raise ValueError(f"grad: gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}")
    if not g.is_floating_point():
        raise TypeError(f"grad: gradient of dtype {g.dtype} (shape {tuple(p.shape)}); it must be floating")


def check_state(where: str, state: dict, layout: dict, scalar_keys: tuple[str, ...], device=None,
                param=None) -> None:
    """A parameter's state holds what the step reads and writes: each tensor of ``layout`` (key -> (shape, dtype))
    with that shape and dtype, and the scalar entries (one-element tensors; in a checkpoint also real numbers).
    Else an error naming ``where`` and the key. With ``device`` (state about to be stepped), the tensors of
    ``layout`` must be on it; a checkpoint's are moved there by the loader (so none may be a meta tensor)."""
    for key, value in state.items():
        if device is None and isinstance(value, torch.Tensor) and value.is_meta:
            raise ValueError(f"{where}: state[{key!r}] is a meta tensor: it has no values to load")
    for key in scalar_keys:
        value = state.get(key)
        if isinstance(value, torch.Tensor):
            # (a meta counter only beside a meta parameter: a model on the meta device steps without values)
            ok = value.numel() == 1 and not value.is_complex() and (
                not value.is_meta or (device is not None and device.type == "meta"))
        else:
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            ok = device is None and number and math.isfinite(value)
        if not ok:
            found = "missing" if key not in state else f"{type(value).__name__} {value!r}"[:80]
            raise ValueError(f"{where}: state[{key!r}] must be a one-element real tensor, got {found} "
                             f"(state keys: {sorted(state)})")
    for key, (shape, dtype) in layout.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where}: state[{key!r}] is missing or not a tensor (state keys: {sorted(state)})")
        if value.layout != torch.strided:
            raise ValueError(f"{where}: state[{key!r}] has layout {value.layout}; the step needs a dense tensor")
        if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise ValueError(f"{where}: state[{key!r}] is {value.dtype} of shape {tuple(value.shape)}; the step "
                             f"needs {dtype} of shape {tuple(shape)}")
        if device is not None and value.device != device:
            raise ValueError(f"{where}: state[{key!r}] is on {value.device}; the parameter is on {device}")
        if is_expanded(local(value)):
            raise ValueError(f"{where}: state[{key!r}] is an expanded view (stride 0): the step writes each element")
        if param is not None and (is_sharded(param) or is_sharded(value)):
            # (block mode's tile map is whole on every rank: replicated over the parameter's mesh)
            check_sharded_like(f"{where}: state[{key!r}]", value, param, replicated=key == "occupancy")


def check_sharded_like(where: str, value: torch.Tensor, param: torch.Tensor, replicated: bool = False) -> None:
    """State of a DTensor parameter is a DTensor on its mesh with its placements (``replicated``: Replicate on
    every mesh dimension), and a plain parameter's is plain: the step pairs each rank's shard of the state with
    its shard of the parameter."""
    def layout(t):
        return f"a DTensor on {t.device_mesh} with placements {t.placements}" if is_sharded(t) else "not a DTensor"

    from torch.distributed.tensor import Replicate

    wanted = (Replicate(),) * param.device_mesh.ndim if replicated and is_sharded(param) else getattr(
        param, "placements", None)
    same = (is_sharded(value) and is_sharded(param) and value.device_mesh == param.device_mesh
            and tuple(value.placements) == tuple(wanted))
    if not same:
        raise ValueError(f"{where} is {layout(value)}; the parameter is {layout(param)} (a checkpoint saved at "
                         "another world size or sharding loads through torch.distributed.checkpoint's "
                         "set_optimizer_state_dict, which reshards it)")


def same_granularity(a, b) -> bool:
    """Granularities equal as values: ("block", 8, 8) == ["block", 8, 8] (a checkpoint through JSON)."""
    def norm(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return norm(a) == norm(b)


def check_device_scalars(group: dict, keys: tuple[str, ...], device: torch.device) -> None:
    """Capturable mode: tensor hyper-parameters live on the params' device (a copy from elsewhere would be a
    transfer the graph cannot capture)."""
    for key in keys:
        value = group.get(key)
        if isinstance(value, torch.Tensor) and value.device != device:
            raise ValueError(f"{key}: a capturable group's {key} tensor must be on the params' device {device}, "
                             f"got {value.device}")
