"""SR-STE: N:M sparse training from scratch with a straight-through estimator and sparse-refined decay."""

from __future__ import annotations

import torch

from .base import Pruner, check_nonnegative
from .select import magnitude_masks


class SRSTE(Pruner):
    """SR-STE (Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", ICLR):
    dense weights ``W`` train through their N:M-pruned copy ``W~ = W * mask(W)``, the mask recomputed from ``|W|``
    at every step (each group's N largest). The forward and backward passes see ``W~``; its gradient passes
    straight through to ``W`` (the identity STE), plus the sparse-refined term that decays the pruned weights::

        W <- optimizer step of W with gradient  dL/dW~ + decay * (1 - mask) * W

    In the training-loop protocol the model holds ``W~`` between steps: :meth:`before_step` adds the decay term to
    the gradients and puts ``W`` back for the optimizer; :meth:`after_step` keeps the new ``W`` and prunes the
    model's copy again with the new mask. The optimizer's state follows the dense ``W`` (it is not zeroed).

    Defaults: ``pattern="2:4"`` (the paper's main setting), ``decay=2e-4`` (the paper's lambda_W). A ``sparsity``
    beyond the pattern's ``1 - N/M`` keeps the largest ``|W|`` inside the pattern, per layer."""

    name = "sr-ste"

    def __init__(self, model, sparsity, total_steps, *, pattern="2:4", decay: float = 2e-4, prunable=None):
        self.decay = check_nonnegative("decay", decay)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        if self.pattern is None:
            raise ValueError("pattern: sr-ste trains an N:M pattern; give one, e.g. pattern='2:4'")
        self.dense = {n: p.detach().clone() for n, p in self.params.items()}
        self._prune(None)

    @torch.no_grad()
    def _prune(self, optimizer) -> None:
        """The model's weights become W~ = W * mask(W) (the optimizer's state is left as it is)."""
        masks = magnitude_masks(self.dense, 1 - self.target, "layer", pattern=self.pattern)
        for name, p in self.params.items():
            p.copy_(self.dense[name])
        self.set_masks(masks, optimizer, zero_state=False)

    @torch.no_grad()
    def before_step(self, optimizer):
        for name, p in self.params.items():
            W = self.dense[name]
            if p.grad is not None and self.decay:
                p.grad.add_(W.masked_fill(self.masks[name], 0), alpha=self.decay)
            p.copy_(W)

    @torch.no_grad()
    def after_step(self, optimizer):
        self.step += 1
        for name, p in self.params.items():
            self.dense[name].copy_(p)
        self._prune(optimizer)

    def extra_state(self):
        return {"dense": {n: w.clone() for n, w in self.dense.items()}}

    def load_extra_state(self, state):
        self.dense = self._copy_to_params(state["dense"])
