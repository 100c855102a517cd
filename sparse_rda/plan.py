"""What a step does with each tensor, decided once from its group's options: the per-tensor plan.

The front end (optimizer.py) builds a :class:`TensorPlan` per parameter from the group's ``granularity`` and the
optimizer's penalty policy, and splits a group's tensors into :class:`Bucket` s, the unit every backend is called
with (one parameter dtype, one gradient dtype, tiled or not). Backends read plans and buckets; none parses
``granularity`` (docs/DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ELEMENT, KERNEL, CHANNEL, BLOCK, NM = "element", "kernel", "channel", "block", "nm"
GRANULARITIES = (ELEMENT, KERNEL, CHANNEL)  # and ("block", rows, cols) for tiles of 2-D weights, ("nm", N, M)
MAX_NM_GROUP = 32  # the largest M of ("nm", N, M): a group's elements are ranked against each other (M^2 compares)


def block_shape(granularity) -> tuple[int, int] | None:
    """(rows, cols) of the tiles for granularity ("block", rows, cols), else None."""
    if isinstance(granularity, (tuple, list)) and len(granularity) == 3 and granularity[0] == BLOCK:
        return int(granularity[1]), int(granularity[2])
    return None


def nm_pattern(granularity) -> tuple[int, int] | None:
    """(N, M) for granularity ("nm", N, M): at most N nonzeros in each group of M consecutive weights; else None."""
    if isinstance(granularity, (tuple, list)) and len(granularity) == 3 and granularity[0] == NM:
        return int(granularity[1]), int(granularity[2])
    return None


def effective_granularity(shape, granularity) -> str:
    """Structured modes apply to 4-D conv weights (out, in, kh, kw), block mode to 2-D weights, N:M to weights of
    2+ dims (along each row of the flattened (shape[0], rest)); every other tensor is element-wise."""
    if block_shape(granularity) is not None:
        return BLOCK if len(shape) == 2 else ELEMENT
    if nm_pattern(granularity) is not None:
        return NM if len(shape) >= 2 else ELEMENT
    return granularity if granularity in (KERNEL, CHANNEL) and len(shape) == 4 else ELEMENT


def group_size(shape, granularity) -> int:
    """How many weights share one penalty weight in the elementwise prox: 1, kh*kw (kernel) or in*kh*kw
    (channel), each a contiguous run of elements. Block mode's tiles use the group prox instead: 1 here."""
    mode = effective_granularity(shape, granularity)
    if mode == KERNEL:
        return shape[2] * shape[3]
    if mode == CHANNEL:
        return shape[1] * shape[2] * shape[3]
    return 1


def tile_grid(shape, block: tuple[int, int]) -> tuple[int, int]:
    """How many (rows x cols) tiles cover a 2-D shape: [ceil(N / rows), ceil(K / cols)]."""
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


@dataclass(frozen=True)
class TensorPlan:
    """One tensor's step. ``mode``: ELEMENT, KERNEL, CHANNEL, BLOCK or NM (what the penalty does to this tensor;
    an unpenalized tensor is ELEMENT); ``group_size``: weights sharing one penalty weight (KERNEL, CHANNEL);
    ``block``: the tile sides (BLOCK); ``nm``: (N, M) and ``row``: the row length, prod(shape[1:]), whose groups
    of M consecutive weights keep at most N nonzeros each, the last group of a row holding the row's remaining
    ``row % M`` weights when M does not divide it (NM)."""

    mode: str
    penalized: bool
    group_size: int = 1
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None
    row: int = 0

    @property
    def factor(self) -> float:
        """The penalty weight's multiplier, sqrt(group size); 0 for an unpenalized tensor (om = 0: no penalty)."""
        return math.sqrt(self.group_size) if self.penalized else 0.0

    @property
    def tiled(self) -> bool:
        """Block mode: tiles with the group prox and an occupancy map."""
        return self.mode == BLOCK

    @property
    def grouped(self) -> bool:
        """A structured mode: the magnitude is the mean |w| of each group of ``group_size`` weights."""
        return self.group_size > 1

    @property
    def constrained(self) -> bool:
        """N:M mode: the prox keeps the N largest soft-thresholded weights of each group of M."""
        return self.mode == NM


# Plans and buckets are values, cached in plain dicts (dynamo traces a dict lookup; it warns on lru_cache)
_PLANS: dict[tuple, TensorPlan] = {}
_BUCKETS: dict[tuple, tuple[Bucket, ...]] = {}


def _memo(cache: dict, key: tuple, make, limit: int):
    value = cache.get(key)
    if value is None:
        if len(cache) >= limit:
            cache.clear()
        value = cache[key] = make(*key)
    return value


def _plan(shape: tuple[int, ...], granularity, penalized: bool) -> TensorPlan:
    if not penalized:
        return TensorPlan(ELEMENT, False)
    mode = effective_granularity(shape, granularity)
    if mode == NM:
        return TensorPlan(NM, True, nm=nm_pattern(granularity), row=math.prod(shape[1:]))
    return TensorPlan(mode, True, group_size(shape, granularity), block_shape(granularity) if mode == BLOCK else None)


def tensor_plan(shape, granularity, penalized: bool) -> TensorPlan:
    """The plan of a tensor of this shape in a group with this granularity (cached: plans are values)."""
    if isinstance(granularity, list):  # a granularity loaded from JSON
        granularity = tuple(granularity)
    return _memo(_PLANS, (tuple(shape), granularity, penalized), _plan, 4096)


@dataclass(frozen=True)
class Bucket:
    """Tensors of a group that one kernel launch takes: ``indices`` into the group's stepped tensors, their
    ``plans``, one parameter and one gradient dtype, and either all tiled (``block`` set), all N:M with one
    pattern (``nm`` set) or neither."""

    indices: tuple[int, ...]
    plans: tuple[TensorPlan, ...]
    w_dtype: torch.dtype
    g_dtype: torch.dtype
    block: tuple[int, int] | None = None
    nm: tuple[int, int] | None = None

    @property
    def tiled(self) -> bool:
        return self.block is not None

    @property
    def constrained(self) -> bool:
        return self.nm is not None


def buckets(plans: tuple[TensorPlan, ...], dtypes: tuple[tuple[torch.dtype, torch.dtype], ...]) -> tuple[Bucket, ...]:
    """The group's tensors split by (tiles, N:M pattern, parameter dtype, gradient dtype), in first-seen order
    (cached)."""
    return _memo(_BUCKETS, (plans, dtypes), _buckets, 256)


def _buckets(plans, dtypes) -> tuple[Bucket, ...]:
    members: dict[tuple, list[int]] = {}
    for i, (plan, pair) in enumerate(zip(plans, dtypes)):
        members.setdefault((plan.block if plan.tiled else None, plan.nm, *pair), []).append(i)
    return tuple(Bucket(tuple(idx), tuple(plans[i] for i in idx), w, g, block, nm)
                 for (block, nm, w, g), idx in members.items())
