"""HALO: a trainable-scale shrinkage penalty, then one global magnitude prune."""

from __future__ import annotations

import torch

from .base import Pruner, check_nonnegative, check_positive
from .select import magnitude_masks


def halo_penalty(weights: list[torch.Tensor], scales: list[torch.Tensor], xi: float, psi: float,
                 budget: float) -> torch.Tensor:
    """``xi * sum_j |w_j| / lam_j^2 + psi * |sum_j |lam_j| - P|`` (``P`` = ``budget``), differentiable in both the
    weights and the scales."""
    shrink = sum((w.float().abs() / lam.square()).sum() for w, lam in zip(weights, scales))
    total_scale = sum(lam.abs().sum() for lam in scales)
    return xi * shrink + psi * (total_scale - budget).abs()


class HALO(Pruner):
    """Hierarchical Adaptive Lasso (Seto, Wells & Zhang 2021, arXiv 2008.10183), re-implemented from its penalty:

        penalty = xi * sum_j |w_j| / lam_j^2 + psi * | sum_j |lam_j| - P |

    with one trainable scale ``lam_j`` per prunable weight (init 1). A weight with a small scale is shrunk hard; the
    second term keeps the scales' total at ``P``, so the scales compete and the penalty concentrates on the
    weights that matter least. Add :meth:`penalty` to the loss: the model's optimizer then gets its weight gradient,
    and :meth:`after_step` moves the scales by plain SGD (``scale_lr``) on their gradient from the same backward.
    :meth:`finalize` prunes once to the target sparsity by global magnitude; there is no fine-tuning.

    Defaults, for an MNIST-sized MLP (LeNet-300-100: 266k weights of mean |w| ~0.02 at init; SGD lr 0.1 with a
    cosine decay, batch 128, ~10^4 steps):

    - ``budget`` (P) = the number of prunable weights, so the scales start exactly on the constraint;
    - ``xi = 1e-4``: the penalty starts near 0.5 (a fifth of the initial cross-entropy, 2.3) and pulls a weight by
      ``lr * xi / lam^2`` per step: ~0.05 over such a run at lam = 1, more than an initial weight, so only the
      weights the data keeps pushing stay large. On the synthetic LeNet-300-100 problem of
      ``examples/fashion_mnist_demo.py`` (9400 steps, final prune to 98%) it gave 88.4-88.6% test accuracy
      against 84.7% with xi = 0 (at 95%: 87.7-88.1% against 89.1%); 1e-5 was too weak to matter there.
    - ``psi = 1e-4``: well above the scales' pull ``2 xi |w| / lam^3`` (~4e-6 at init), so the total stays at P
      (the mean scale stayed within 0.5% of 1 in those runs);
    - ``scale_lr = 50``: the scales' gradient is tiny (~xi |w|), so their step is large; at 50 they spread to
      ~0.6..4.7 over ~10^4 steps (more steps spread them further). A plain l1 (``scale_lr = 0``) did as well on
      that synthetic problem, which does not tell the two apart: check on real data;
    - ``min_scale = 0.05``: the scales are clipped below at this after each step (a numerical guard, not in the
      formula: the penalty's 1 / lam^2 diverges at 0, and at lam = 0.05 it is already 400 xi).
    """

    name = "halo"

    def __init__(self, model, sparsity, total_steps, *, xi: float = 1e-4, psi: float = 1e-4, scale_lr: float = 50.0,
                 budget: float | None = None, min_scale: float = 0.05, prunable=None, pattern=None):
        self.xi = check_nonnegative("xi", xi)
        self.psi = check_nonnegative("psi", psi)
        self.scale_lr = check_nonnegative("scale_lr", scale_lr)
        self.min_scale = check_positive("min_scale", min_scale)
        if budget is not None:
            budget = check_positive("budget", budget)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        self.budget = float(sum(p.numel() for p in self.params.values())) if budget is None else budget
        self.scales = {n: torch.ones(p.shape, dtype=torch.float32, device=p.device, requires_grad=True)
                       for n, p in self.params.items()}
        self.finalized = False

    def penalty(self) -> torch.Tensor:
        names = list(self.params)
        return halo_penalty([self.params[n] for n in names], [self.scales[n] for n in names], self.xi, self.psi,
                            self.budget)

    @torch.no_grad()
    def after_step(self, optimizer):
        for lam in self.scales.values():
            if lam.grad is not None:
                lam.sub_(lam.grad, alpha=self.scale_lr).clamp_(min=self.min_scale)
                lam.grad = None
        super().after_step(optimizer)

    def finalize(self, optimizer=None):
        if not self.finalized:
            self.set_masks(magnitude_masks(self.params, 1 - self.target, "global", pattern=self.pattern), optimizer)
            self.finalized = True

    def extra_state(self):
        return {"scales": {n: lam.detach().clone() for n, lam in self.scales.items()}, "finalized": self.finalized}

    def load_extra_state(self, state):
        with torch.no_grad():
            for name, lam in self.scales.items():
                lam.copy_(state["scales"][name])
        self.finalized = bool(state["finalized"])
