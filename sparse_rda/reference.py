"""The pure-PyTorch reference: the one executable definition of the RDA and gRDA updates.

Every line follows docs/ALGORITHMS.md (sections 1 to 3) in its order. All math is float32 whatever the
parameter dtype; scalars that depend only on hyper-parameters are computed on the host as Python floats, so
a step never waits on the device, or in the scalars' device form (a step traced by torch.compile) come as 0-d
tensors the same lines take. Each step works on one param group at a time and batches its tensors with
``torch._foreach_*`` where the math is the same for every tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .plan import BLOCK, CHANNEL, KERNEL, TensorPlan, tile_grid
from .scalars import GrdaScalars, RdaScalars, decay  # noqa: F401  (decay: the reference's scalars, re-exported)
from .step import GrdaTensors, RdaTensors


# ----------------------------------------------------------------------------------------------------------
# Host-side scalars


def grda_threshold_increment(c, lr, mu: float, step):
    """gRDA's threshold growth at this tensor's step n (1-based), at the current lr:
    c * lr^(mu + 1/2) * (n^mu - (n - 1)^mu)."""
    return c * lr ** (mu + 0.5) * (step**mu - (step - 1) ** mu)


# ----------------------------------------------------------------------------------------------------------
# Per-tensor pieces (a tensor's plan, sparse_rda/plan.py, says which apply)


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


def magnitude(w: torch.Tensor, plan: TensorPlan) -> torch.Tensor:
    """a: |w| per element, the mean |w| of each kernel / output filter, or the RMS of each tile, broadcast."""
    a = w.abs()
    if plan.mode == BLOCK:
        rms = torch.sqrt(tile_sums(w * w, plan.block) / tile_counts(w.shape, plan.block, w.device))
        return tile_broadcast(rms, w.shape, plan.block)
    if plan.mode == KERNEL:
        return a.mean(dim=(2, 3), keepdim=True).expand_as(w)
    if plan.mode == CHANNEL:
        return a.mean(dim=(1, 2, 3), keepdim=True).expand_as(w)
    return a


def finite_max(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per tensor, the max of its finite values (0 when none is): the reweighting's max A ignores NaN and inf, so
    one bad element cannot switch the reweighting off for its whole tensor (ALGORITHMS.md, non-finite values)."""
    finite = [torch.where(torch.isfinite(t), t, 0.0) for t in tensors]
    if torch.compiler.is_compiling():  # dynamo has no rule for _foreach_max (a graph break); the same values
        return [torch.amax(t) for t in finite]
    if any(t.numel() == 0 for t in finite):  # a rank's empty shard of a DTensor: no values, 0 (as the kernels)
        return [torch.amax(t) if t.numel() else t.new_zeros(()) for t in finite]
    return torch._foreach_max(finite)


def add_scaled_(ys: list[torch.Tensor], xs: list[torch.Tensor], scale) -> None:
    """ys += scale * xs, scale a float or a 0-d tensor (foreach's ``alpha`` takes numbers only)."""
    if isinstance(scale, torch.Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(xs, scale))
    else:
        torch._foreach_add_(ys, xs, alpha=scale)


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
    rows, cols = block
    shrink = group_shrink(torch.sqrt(tile_sums(T * T, block)), threshold[::rows, ::cols],
                          tile_counts(T.shape, block, T.device))
    return T * tile_broadcast(shrink, T.shape, block), shrink > 0


def group_shrink(norms: torch.Tensor, t_tile: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per tile, max(0, 1 - t_tile sqrt(count) / ||T_tile||): 0 for an all-zero tile (not NaN), 1 for a NaN/inf
    one (not shrunk)."""
    shrink = torch.clamp_min(1.0 - t_tile * torch.sqrt(counts) / norms, 0.0)
    shrink = torch.where(norms > 0, shrink, torch.zeros_like(shrink))
    return torch.where(torch.isfinite(norms), shrink, torch.ones_like(shrink))


# ----------------------------------------------------------------------------------------------------------
# Steps over a bucket of a param group (the backend contract, sparse_rda/step.py)


def nm_keep(x: torch.Tensor, nm: tuple[int, int], row: int) -> torch.Tensor:
    """In each group of M consecutive elements along a row of x (x viewed as rows of ``row`` elements; a row's last
    group is shorter when M does not divide it), True on the N largest values of (N, M) = ``nm``: ties go to the
    lower index, NaN ranks above everything (as +inf does)."""
    n, m = nm
    if x.numel() == 0:
        return torch.ones_like(x, dtype=torch.bool)
    rows = x.reshape(-1, row)
    groups = -(-row // m)
    keys = torch.where(torch.isnan(rows), torch.inf, rows)
    keys = torch.nn.functional.pad(keys, (0, groups * m - row), value=-torch.inf)  # padding ranks last
    keys = keys.reshape(rows.shape[0], groups, m)
    if m <= NM_COUNT_MAX_M:
        keep = torch.stack([_ranks_above(keys, i, m) < n for i in range(m)], dim=-1)
    else:
        order = torch.sort(keys, dim=-1, descending=True, stable=True).indices[..., :n]  # stable: lower index first
        keep = torch.zeros(keys.shape, dtype=torch.bool, device=x.device).scatter_(-1, order, True)
    return keep.reshape(rows.shape[0], groups * m)[:, :row].reshape(x.shape)


# Up to this M, nm_keep counts each element's betters (M * (M - 1) comparisons of column views, 4-7x faster
# than a stable sort over small groups on a CPU); above it, the sort's M log M wins.
NM_COUNT_MAX_M = 8


def _ranks_above(keys: torch.Tensor, i: int, m: int) -> torch.Tensor:
    """How many elements of each group rank above its i-th: larger, or equal at a lower index (the kernels'
    ranking, rda_math.h)."""
    key = keys[..., i]
    above = torch.zeros(key.shape, dtype=torch.uint8, device=keys.device)
    for j in range(m):
        if j != i:
            above += keys[..., j] >= key if j < i else keys[..., j] > key
    return above


def nm_soft_threshold(T: torch.Tensor, threshold: torch.Tensor, plan: TensorPlan) -> torch.Tensor:
    """The prox of the penalty under the N:M constraint (ALGORITHMS.md section 3b): S_threshold(T), then in each
    group only its N largest |S(T)| kept (an element's gain from being nonzero is (|T| - threshold)_+^2 / 2)."""
    w = soft_threshold(T, threshold)
    return torch.where(nm_keep(w.abs(), plan.nm, plan.row), w, torch.zeros_like(w))


def rda_prox(T: torch.Tensor, threshold: torch.Tensor, plan: TensorPlan):
    """RDA's prox of a penalized tensor: (w, occupancy) = the group prox on tiles in block mode, else
    (S_threshold(T), None), kept to N nonzeros in each group of M in N:M mode."""
    if plan.tiled:
        return group_soft_threshold(T, threshold, plan.block)
    if plan.constrained:
        return nm_soft_threshold(T, threshold, plan), None
    return soft_threshold(T, threshold), None


def as_float32(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """float32 views of the tensors: the tensor itself when it is fp32, an fp32 copy otherwise."""
    return [t.detach().float() for t in tensors]


def unscaled_grads(grads: Sequence[torch.Tensor], inv_scale: torch.Tensor | None) -> list[torch.Tensor]:
    """float32 gradients, times a GradScaler's 1 / scale as GradScaler.unscale_ does."""
    g = as_float32(grads)
    return g if inv_scale is None else torch._foreach_mul(g, inv_scale)


def _tile_values(state: torch.Tensor, plan: TensorPlan) -> torch.Tensor:
    """A tiled tensor's A or B as the step reads it: each tile's first element on the whole tile (the kernels
    keep one value per tile and write it to every element), whatever a loaded state holds elsewhere in it."""
    rows, cols = plan.block
    return tile_broadcast(state[::rows, ::cols], state.shape, plan.block)


def _magnitudes(w: list[torch.Tensor], group_means: list, plans, idx: list[int]) -> list[torch.Tensor]:
    """a of the penalized tensors ``idx``: the front end's per-group means where it gave them (a sharded tensor's
    are over every rank's part of the group), else computed here."""
    a = []
    for i in idx:
        means = group_means[i] if plans[i].grouped else None
        a.append(magnitude(w[i], plans[i]) if means is None
                 else means.repeat_interleave(w[i].numel() // means.numel()).reshape(w[i].shape))
    return a


def _next_A(A_p: list[torch.Tensor], a: list[torch.Tensor], s: RdaScalars, out: bool) -> list[torch.Tensor]:
    """A = beta_b A + (1 - beta_b) a, in place (out=False) or as new tensors: the same ops either way, so
    rda_max_A's values are the step's to the bit."""
    changing = s.changing()
    beta_b, one_minus_beta_b = changing[3], changing[7]
    if out:
        A_p = torch._foreach_mul(A_p, beta_b)
    else:
        torch._foreach_mul_(A_p, beta_b)
    add_scaled_(A_p, a, one_minus_beta_b)
    return A_p


def rda_max_A(tensors: RdaTensors, bucket, s: RdaScalars) -> torch.Tensor:
    """The backend contract's rda_max_A: each tensor's max of finite values of this step's A (0 when
    unpenalized), float32 [n]; nothing is written."""
    params, _, _, _, A, _, _, group_means, _ = tensors
    plans = bucket.plans
    idx = [i for i, plan in enumerate(plans) if plan.penalized]
    maxes = torch.zeros(len(plans), dtype=torch.float32, device=params[0].device)
    if idx:
        A_p = [_tile_values(A[i], plans[i]) if plans[i].tiled else A[i] for i in idx]
        new_A = _next_A(A_p, _magnitudes(as_float32(params), group_means, plans, idx), s, out=True)
        maxes[idx] = torch.stack(finite_max(new_A))
    return maxes


def step_grads(grads: Sequence[torch.Tensor], w: list[torch.Tensor], s: RdaScalars) -> list[torch.Tensor]:
    """g = grad / scale (negated to maximize) + weight_decay w, float32, as new tensors: p.grad is never written.
    The w term is added also with weight_decay 0, as the kernels do: a non-finite weight makes its own v
    non-finite (0 * inf is NaN)."""
    g = unscaled_grads(grads, s.inv_scale)
    if s.maximize:
        g = torch._foreach_neg(g)
    return torch._foreach_add(g, w, alpha=s.weight_decay)


def dual_average_(T: list[torch.Tensor], v: list[torch.Tensor], w: list[torch.Tensor], g: list[torch.Tensor],
                  s: RdaScalars) -> None:
    """T = alpha T + (1 - alpha) w; v = beta v + (1 - beta) g; T -= lr v, in place (every granularity)."""
    lr, averaging, beta, _, _, one_minus_averaging, one_minus_beta, _ = s.changing()
    torch._foreach_mul_(T, averaging)
    add_scaled_(T, w, one_minus_averaging)
    torch._foreach_mul_(v, beta)
    add_scaled_(v, g, one_minus_beta)
    add_scaled_(T, v, -lr)


def rda_step(tensors: RdaTensors, bucket, s: RdaScalars) -> None:
    """One RDA step (ALGORITHMS.md sections 1 and 3) over tensors that all have state; updates params and state
    in place. An unpenalized tensor has om = 0: its B stays 0 and its weight is the plain iterate T. A tiled
    tensor's map (``tensors.occupancy``) receives which tiles kept nonzeros. The reweighting's max A is this
    step's over each tensor, or ``tensors.max_A`` where given."""
    params, grads, T, B, A, v, occupancy, group_means, given_max = tensors
    plans = bucket.plans
    lr, averaging, beta, beta_b, lam, one_minus_averaging, one_minus_beta, one_minus_beta_b = s.changing()
    w = as_float32(params)
    g = step_grads(grads, w, s)

    idx = [i for i, plan in enumerate(plans) if plan.penalized]
    if idx:
        A_p, B_p = [A[i] for i in idx], [B[i] for i in idx]
        for i in idx:
            if plans[i].tiled:
                for state in (A[i], B[i]):
                    state.copy_(_tile_values(state, plans[i]))
        _next_A(A_p, _magnitudes(w, group_means, plans, idx), s, out=False)
        factors = [plans[i].factor for i in idx]
        torch._foreach_mul_(B_p, averaging)
        if s.reweight:
            # this step's A, whole tensor
            max_A = finite_max(A_p) if given_max is None else [given_max[i].float() for i in idx]
            om = [reweight_factor(A_i, m, s.max_factor) for A_i, m in zip(A_p, max_A)]
            torch._foreach_mul_(om, factors)
            add_scaled_(B_p, om, lr)
        else:
            torch._foreach_add_(B_p, [lr * f for f in factors])

    dual_average_(T, v, w, g, s)

    new_w = []
    for i, plan in enumerate(plans):
        if not plan.penalized:
            new_w.append(T[i])
            continue
        w_i, live = rda_prox(T[i], lam * B[i], plan)
        new_w.append(w_i)
        if live is not None and occupancy[i] is not None:
            occupancy[i].copy_(live)
    torch._foreach_copy_(list(params), new_w)


def grda_step(tensors: GrdaTensors, bucket, s: GrdaScalars) -> None:
    """One gRDA step (ALGORITHMS.md section 2): acc -= lr * grad; w = S_{l1}(acc), l1 per tensor."""
    params, grads, acc, thresholds = tensors
    add_scaled_(acc, unscaled_grads(grads, s.inv_scale), -s.lr if s.lr_device is None else -s.lr_device)
    new_w = [soft_threshold(acc_i, l1) for acc_i, l1 in zip(acc, thresholds)]  # l1: 0-d tensors (a Python float
    # costs ~5 us more per op)
    torch._foreach_copy_(list(params), new_w)
