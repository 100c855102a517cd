"""The pure-PyTorch reference: the one executable definition of the RDA and gRDA updates.

Every line follows docs/ALGORITHMS.md (sections 1 and 2) in its order. All math is float32 whatever the
parameter dtype; scalars that depend only on hyper-parameters are computed on the host as Python floats, so
a step never waits on the device. Each step works on one param group at a time and batches its tensors with
``torch._foreach_*`` where the math is the same for every tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ELEMENT, KERNEL, CHANNEL = "element", "kernel", "channel"
GRANULARITIES = (ELEMENT, KERNEL, CHANNEL)


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


def effective_granularity(shape: torch.Size, granularity: str) -> str:
    """Structured modes apply to 4-D conv weights (out, in, kh, kw); every other tensor is element-wise."""
    return granularity if granularity in (KERNEL, CHANNEL) and len(shape) == 4 else ELEMENT


def group_size(shape: torch.Size, granularity: str) -> int:
    """How many weights share one penalty weight: 1, kh*kw (kernel) or in*kh*kw (channel)."""
    mode = effective_granularity(shape, granularity)
    if mode == KERNEL:
        return shape[2] * shape[3]
    if mode == CHANNEL:
        return shape[1] * shape[2] * shape[3]
    return 1


def magnitude(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """a: |w| per element, or the mean |w| of each kernel / output filter broadcast over it."""
    a = w.abs()
    mode = effective_granularity(w.shape, granularity)
    if mode == KERNEL:
        return a.mean(dim=(2, 3), keepdim=True).expand_as(w)
    if mode == CHANNEL:
        return a.mean(dim=(1, 2, 3), keepdim=True).expand_as(w)
    return a


def reweight_factor(A: torch.Tensor, max_A: torch.Tensor, max_factor: float) -> torch.Tensor:
    """om = M / (1 + (M - 1) A / max A), in [1, M]; om = M everywhere when max A == 0 (not NaN)."""
    ratio = A / max_A
    om = max_factor / (1.0 + (max_factor - 1.0) * ratio)
    return torch.where(max_A > 0, om, torch.full_like(om, max_factor))


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """S_t(x) = sign(x) * max(|x| - t, 0)."""
    return torch.sign(x) * torch.clamp_min(x.abs() - threshold, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Steps over a param group


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
    granularity: str,
    maximize: bool,
    grad_scale: torch.Tensor | None = None,
) -> None:
    """One RDA step (ALGORITHMS.md section 1) over tensors that all have state; updates params and state in place.

    ``penalized[i]`` False means om = 0 for that tensor: its B stays 0 and its weight is the plain iterate T.
    """
    w = as_float32(params)
    g = unscaled_grads(grads, grad_scale)
    if maximize:
        g = torch._foreach_neg(g)
    if weight_decay:
        g = torch._foreach_add(g, w, alpha=weight_decay)  # a new list: p.grad is never written

    idx = [i for i, pen in enumerate(penalized) if pen]
    if idx:
        A_p, B_p = [A[i] for i in idx], [B[i] for i in idx]
        a = [magnitude(w[i], granularity) for i in idx]
        torch._foreach_mul_(A_p, beta_b)
        torch._foreach_add_(A_p, a, alpha=1.0 - beta_b)
        factors = [math.sqrt(group_size(w[i].shape, granularity)) for i in idx]
        torch._foreach_mul_(B_p, averaging)
        if reweight:
            max_A = torch._foreach_max(A_p)  # this step's A, whole tensor
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

    new_w = [soft_threshold(T[i], lam * B[i]) if penalized[i] else T[i] for i in range(len(T))]
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
