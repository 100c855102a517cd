"""SNIP: prune once at initialization by connection sensitivity."""

from __future__ import annotations

import torch

from .base import Pruner
from .select import top_k_masks


class SNIP(Pruner):
    """Single-shot Network Pruning (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity"): on the first step's batch (in :meth:`before_step`, before any update), keep the weights with the
    globally largest ``|g * w|`` (the paper normalizes by the sum, which does not change the ranking); the mask is
    then fixed. Options: ``prunable``, ``pattern`` (N:M by saliency)."""

    name = "snip"

    def __init__(self, model, sparsity, total_steps, *, prunable=None, pattern=None):
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        self.scored = False

    @torch.no_grad()
    def before_step(self, optimizer):
        if self.scored:
            return
        scores = {}
        for name, p in self.params.items():
            if p.grad is None:
                raise RuntimeError(f"snip: parameter {name!r} has no gradient in the first before_step; SNIP "
                                   "scores |grad * weight| on the first batch")
            scores[name] = (p.grad.detach().float() * p.detach().float()).abs()
        self.set_masks(top_k_masks(scores, 1 - self.target, "global", self.pattern), optimizer)
        self.scored = True

    def extra_state(self):
        return {"scored": self.scored}

    def load_extra_state(self, state):
        self.scored = bool(state["scored"])
