"""The pure-PyTorch reference: the one executable definition of the RDA and gRDA updates.

Every line follows docs/ALGORITHMS.md (sections 1 to 3) in its order. All math is float32 whatever the
parameter dtype; scalars that depend only on hyper-parameters are computed on the host as Python floats, so
a step never waits on the device. Each step works on one param group at a time and batches its tensors with
``torch._foreach_*`` where the math is the same for every tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ELEMENT, KERNEL, CHANNEL, BLOCK = "element", "kernel", "channel", "block"
GRANULARITIES = (ELEMENT, KERNEL, CHANNEL)  # and ("block", rows, cols) for tiles of 2-D weights


# ----------------------------------------------------------------------------------------------------------
# Host-side scalars


def decay(lr: float, time_scale: float | None) -> float:
    """exp(-lr / time_scale): the per-step decay of an average with that time scale; 0 when there is none."""
    if not time_scale:
        return 0.0
    return math.exp(-lr / time_scale)


def grda_threshold_increment(c: float, lr: float, mu: float, step: int) -> float:
    """gRDA's threshold growth at this tensor's step n (1-based), at the current lr:
    c * lr^(mu + 1/2) * (n^mu - (n - 1)^mu)."""
    return c * lr ** (mu + 0.5) * (step**mu - (step - 1) ** mu)


# ----------------------------------------------------------------------------------------------------------
# Per-tensor pieces


def block_shape(granularity) -> tuple[int, int] | None:
    """(rows, cols) of the tiles for granularity ("block", rows, cols), else None."""
    if isinstance(granularity, (tuple, list)) and len(granularity) == 3 and granularity[0] == BLOCK:
        return int(granularity[1]), int(granularity[2])
    return None


def effective_granularity(shape: torch.Size, granularity) -> str:
    """Structured modes apply to 4-D conv weights (out, in, kh, kw), block mode to 2-D weights; every other
    tensor is element-wise."""
    if block_shape(granularity) is not None:
        return BLOCK if len(shape) == 2 else ELEMENT
    return granularity if granularity in (KERNEL, CHANNEL) and len(shape) == 4 else ELEMENT


def group_size(shape: torch.Size, granularity) -> int:
    """How many weights share one penalty weight in the elementwise prox: 1, kh*kw (kernel) or in*kh*kw
    (channel). Block mode's tiles use the group prox instead, with sqrt(tile size) there: 1 here."""
    mode = effective_granularity(shape, granularity)
    if mode == KERNEL:
        return shape[2] * shape[3]
    if mode == CHANNEL:
        return shape[1] * shape[2] * shape[3]
    return 1


def tile_grid(shape, block: tuple[int, int]) -> tuple[int, int]:
    """How many (rows x cols) tiles cover a 2-D shape: [ceil(N / rows), ceil(K / cols)]."""
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def tile_sums(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of each (rows x cols) tile of a 2-D tensor, [ceil(N / rows), ceil(K / cols)]; ragged edge tiles sum
    what they have."""
    rows, cols = block
    n_rows, n_cols = tile_grid(x.shape, block)
    padded = torch.nn.functional.pad(x, (0, n_cols * cols - x.shape[1], 0, n_rows * rows - x.shape[0]))
    return padded.reshape(n_rows, rows, n_cols, cols).sum(dim=(1, 3))


def tile_counts(shape: torch.Size, block: tuple[int, int], device) -> torch.Tensor:
    """Number of elements in each tile (smaller at the ragged edges)."""
    return tile_sums(torch.ones(shape, dtype=torch.float32, device=device), block)


def tile_broadcast(per_tile: torch.Tensor, shape: torch.Size, block: tuple[int, int]) -> torch.Tensor:
    """Each tile's value on each of its elements."""
    rows, cols = block
    return per_tile.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)[: shape[0], : shape[1]]


def magnitude(w: torch.Tensor, granularity) -> torch.Tensor:
    """a: |w| per element, the mean |w| of each kernel / output filter, or the RMS of each tile, broadcast."""
    a = w.abs()
    mode = effective_granularity(w.shape, granularity)
    if mode == BLOCK:
        block = block_shape(granularity)
        rms = torch.sqrt(tile_sums(w * w, block) / tile_counts(w.shape, block, w.device))
        return tile_broadcast(rms, w.shape, block)
    if mode == KERNEL:
        return a.mean(dim=(2, 3), keepdim=True).expand_as(w)
    if mode == CHANNEL:
        return a.mean(dim=(1, 2, 3), keepdim=True).expand_as(w)
    return a


def finite_max(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per tensor, the max of its finite values (0 when none is): the reweighting's max A ignores NaN and inf, so
    one bad element cannot switch the reweighting off for its whole tensor (ALGORITHMS.md, non-finite values)."""
    return torch._foreach_max([torch.where(torch.isfinite(t), t, 0.0) for t in tensors])


def reweight_factor(A: torch.Tensor, max_A: torch.Tensor, max_factor: float) -> torch.Tensor:
    """om = M / (1 + (M - 1) A / max A), in [1, M]; om = M everywhere when max A == 0 (not NaN); om = 0 where A is
    not finite (that element's magnitude is unknown: it goes unpenalized, as with SGD)."""
    ratio = A / max_A
    om = max_factor / (1.0 + (max_factor - 1.0) * ratio)
    om = torch.where(max_A > 0, om, torch.full_like(om, max_factor))
    return torch.where(torch.isfinite(A), om, torch.zeros_like(om))


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """S_t(x) = sign(x) * max(|x| - t, 0)."""
    return torch.sign(x) * torch.clamp_min(x.abs() - threshold, 0.0)


def group_soft_threshold(T: torch.Tensor, threshold: torch.Tensor, block: tuple[int, int]):
    """The group prox on tiles: T_tile * max(0, 1 - t_tile sqrt(tile size) / ||T_tile||_2), with the tile's
    threshold t_tile (constant over the tile). Whole tiles become exactly zero. Returns (w, occupancy) with
    occupancy [tiles] True where the tile kept nonzeros."""
    norms = torch.sqrt(tile_sums(T * T, block))
    rows, cols = block
    t_tile = threshold[::rows, ::cols]
    shrink = torch.clamp_min(1.0 - t_tile * torch.sqrt(tile_counts(T.shape, block, T.device)) / norms, 0.0)
    shrink = torch.where(norms > 0, shrink, torch.zeros_like(shrink))  # an all-zero tile stays zero, not NaN
    shrink = torch.where(torch.isfinite(norms), shrink, torch.ones_like(shrink))  # a NaN/inf tile is not shrunk
    return T * tile_broadcast(shrink, T.shape, block), shrink > 0


# ----------------------------------------------------------------------------------------------------------
# Steps over a param group


def rda_prox(T: torch.Tensor, threshold: torch.Tensor, granularity):
    """RDA's prox of a penalized tensor: (w, occupancy) = the group prox on tiles in block mode, else
    (S_threshold(T), None)."""
    if effective_granularity(T.shape, granularity) == BLOCK:
        return group_soft_threshold(T, threshold, block_shape(granularity))
    return soft_threshold(T, threshold), None


def as_float32(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """float32 views of the tensors: the tensor itself when it is fp32, an fp32 copy otherwise."""
    return [t.detach().float() for t in tensors]


def unscaled_grads(grads: Sequence[torch.Tensor], grad_scale: torch.Tensor | None) -> list[torch.Tensor]:
    """float32 gradients, divided by a GradScaler's scale as GradScaler.unscale_ does (times the fp32 inverse)."""
    g = as_float32(grads)
    if grad_scale is None:
        return g
    return torch._foreach_mul(g, grad_scale.double().reciprocal().float())


def rda_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    T: Sequence[torch.Tensor],
    B: Sequence[torch.Tensor],
    A: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    *,
    penalized: Sequence[bool],
    lr: float,
    lam: float,
    beta: float,
    beta_b: float,
    averaging: float,
    weight_decay: float,
    max_factor: float,
    reweight: bool,
    granularity,
    maximize: bool,
    grad_scale: torch.Tensor | None = None,
    occupancy: Sequence[torch.Tensor | None] | None = None,
) -> None:
    """One RDA step (ALGORITHMS.md sections 1 and 3) over tensors that all have state; updates params and state
    in place.

    ``penalized[i]`` False means om = 0 for that tensor: its B stays 0 and its weight is the plain iterate T.
    In block mode, ``occupancy[i]`` (a bool [tile rows, tile cols] tensor, for penalized 2-D weights) receives
    which tiles kept nonzeros.
    """
    w = as_float32(params)
    g = unscaled_grads(grads, grad_scale)
    if maximize:
        g = torch._foreach_neg(g)
    # a new list: p.grad is never written. Added also with weight_decay 0, as the kernels do: a non-finite weight
    # makes its own v non-finite (0 * inf is NaN)
    g = torch._foreach_add(g, w, alpha=weight_decay)

    idx = [i for i, pen in enumerate(penalized) if pen]
    if idx:
        A_p, B_p = [A[i] for i in idx], [B[i] for i in idx]
        for i in idx:
            if effective_granularity(w[i].shape, granularity) == BLOCK:
                # a tile's A and B are those of its first element (the kernels keep one value per tile and
                # write it to every element): the same thing whatever a loaded state holds elsewhere in the tile
                block = block_shape(granularity)
                for state in (A[i], B[i]):
                    state.copy_(tile_broadcast(state[:: block[0], :: block[1]], state.shape, block))
        a = [magnitude(w[i], granularity) for i in idx]
        torch._foreach_mul_(A_p, beta_b)
        torch._foreach_add_(A_p, a, alpha=1.0 - beta_b)
        factors = [math.sqrt(group_size(w[i].shape, granularity)) for i in idx]
        torch._foreach_mul_(B_p, averaging)
        if reweight:
            max_A = finite_max(A_p)  # this step's A, whole tensor
            om = [reweight_factor(A_i, m, max_factor) for A_i, m in zip(A_p, max_A)]
            torch._foreach_mul_(om, factors)
            torch._foreach_add_(B_p, om, alpha=lr)
        else:
            torch._foreach_add_(B_p, [lr * f for f in factors])

    torch._foreach_mul_(T, averaging)
    torch._foreach_add_(T, w, alpha=1.0 - averaging)
    torch._foreach_mul_(v, beta)
    torch._foreach_add_(v, g, alpha=1.0 - beta)
    torch._foreach_add_(T, v, alpha=-lr)

    new_w = []
    for i in range(len(T)):
        if not penalized[i]:
            new_w.append(T[i])
            continue
        w_i, live = rda_prox(T[i], lam * B[i], granularity)
        new_w.append(w_i)
        if live is not None and occupancy is not None and occupancy[i] is not None:
            occupancy[i].copy_(live)
    torch._foreach_copy_(list(params), new_w)


def grda_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    acc: Sequence[torch.Tensor],
    *,
    lr: float,
    thresholds: Sequence[float],
    grad_scale: torch.Tensor | None = None,
) -> None:
    """One gRDA step (ALGORITHMS.md section 2): acc -= lr * grad; w = S_{l1}(acc), l1 per tensor."""
    torch._foreach_add_(acc, unscaled_grads(grads, grad_scale), alpha=-lr)
    new_w = [soft_threshold(acc_i, l1) for acc_i, l1 in zip(acc, thresholds)]
    torch._foreach_copy_(list(params), new_w)
