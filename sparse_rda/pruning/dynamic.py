"""Dynamic sparse training: RigL and SET start sparse and move weights around at a fixed count per layer."""

from __future__ import annotations

import math

import torch

from ..validation import check_choice
from .base import Pruner, check_fraction, check_positive, optimizer_state, steps_at
from .schedules import rigl_drop_fraction
from .select import apportion, erk_densities, keep_count

DISTRIBUTIONS = ("erk", "uniform")


def drop_and_grow(keep: torch.Tensor, weight: torch.Tensor, grow_score: torch.Tensor, count: int) -> torch.Tensor:
    """One layer's update (Evci et al. 2020, Algorithm 1): drop the ``count`` kept weights of smallest |w|, then grow
    the ``count`` positions of largest ``grow_score`` among those not kept after the drop (a weight just dropped may
    be grown back). Returns the new mask; it keeps as many weights as ``keep``."""
    if count == 0:
        return keep
    flat_keep = keep.flatten()
    drop_score = weight.detach().abs().float().flatten().masked_fill(~flat_keep, math.inf)
    after_drop = flat_keep.clone()
    after_drop[torch.topk(drop_score, count, largest=False, sorted=False).indices] = False
    grow = grow_score.float().flatten().masked_fill(after_drop, -math.inf)
    new = after_drop.clone()
    new[torch.topk(grow, count, sorted=False).indices] = True
    return new.view(keep.shape)


class RigL(Pruner):
    """Rigging the Lottery (Evci et al. 2020, arXiv 1911.11134): sparse from the start, with a random mask at ERK
    layer densities; every ``update_every`` steps until ``end`` of training each layer drops the fraction
    ``f(t) = drop_fraction / 2 * (1 + cos(pi t / T_end))`` of its kept weights with smallest |w| and grows as many
    with largest |dense gradient| (the gradient of the step's batch, read in :meth:`before_step`; the pruned weights
    are zeros, not removed, so it exists). A newly grown weight starts at 0 with zeroed optimizer state; one
    dropped and grown back in the same update keeps its value. The per-layer counts never change.

    Defaults (the paper's): ``update_every=100``, ``end=0.75`` (fraction of training), ``drop_fraction=0.3``,
    ``distribution="erk"`` ("uniform": every layer at the target sparsity), ``seed=0`` for the initial mask.
    The drop count is ``round(f(t) * kept)``. A SparseLinear with ``dw_live_only=True`` has no gradient on its dead
    tiles: RigL then grows only inside live tiles.

    ``rescale_init=True`` (default) multiplies each layer's kept initial weights by 1 / sqrt(its density), so a
    unit's input keeps the variance of the dense initialization (a fan-in correction). Without it, LeNet-5 on
    Fashion-MNIST at 90% (SGD lr 0.1, momentum 0.9) sat at chance for ~200 steps, then diverged (weights of ~150)
    and ended at 25% test accuracy (10% at 98-99%); with it, it trained from the first step (bench/accuracy.py)."""

    name = "rigl"

    def __init__(self, model, sparsity, total_steps, *, update_every: int = 100, end: float = 0.75,
                 drop_fraction: float = 0.3, distribution: str = "erk", seed: int = 0, rescale_init: bool = True,
                 prunable=None):
        self.update_every = check_positive("update_every", update_every, integer=True)
        end = check_fraction("end", end)
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer; got {seed!r}")
        if not isinstance(rescale_init, bool):
            raise ValueError(f"rescale_init must be a bool; got {rescale_init!r}")
        super().__init__(model, sparsity, total_steps, prunable=prunable)
        self.end_step = steps_at(end, self.total_steps)
        self.distribution = distribution
        self.generator = torch.Generator().manual_seed(seed)
        self._grad_scores: dict[str, torch.Tensor] = {}
        self.set_masks(self._initial_masks())
        if rescale_init:
            self._rescale_kept_weights()

    @torch.no_grad()
    def _rescale_kept_weights(self) -> None:
        """Kept initial weights times 1 / sqrt(layer density) (the class docstring says why)."""
        for name, p in self.params.items():
            density = float(self.masks[name].float().mean())
            if density > 0:
                p.mul_(density**-0.5)

    def _initial_masks(self) -> dict[str, torch.Tensor]:
        """Random masks with ERK (or uniform) counts that add up to exactly round((1 - s) * N) kept weights."""
        numels = [p.numel() for p in self.params.values()]
        density = 1 - self.target
        if self.distribution == "erk":
            densities = erk_densities([tuple(p.shape) for p in self.params.values()], density)
        else:
            densities = [density] * len(numels)
        counts = apportion(densities, numels, keep_count(sum(numels), density))
        masks = {}
        for (name, p), count in zip(self.params.items(), counts):
            order = torch.randperm(p.numel(), generator=self.generator)[:count]
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[order] = True
            masks[name] = keep.view(p.shape)
        return masks

    def is_update_step(self, step: int) -> bool:
        return 0 < step < self.end_step and step % self.update_every == 0

    def grow_scores(self) -> dict[str, torch.Tensor]:
        """RigL grows the largest |gradient| (saved by :meth:`before_step`)."""
        return self._grad_scores

    @torch.no_grad()
    def before_step(self, optimizer):
        if not self.is_update_step(self.step + 1):
            return
        for name, p in self.params.items():
            if p.grad is None:
                raise RuntimeError(f"rigl: parameter {name!r} has no gradient in before_step; RigL grows weights "
                                   "by the dense gradient of the step's batch")
            self._grad_scores[name] = p.grad.detach().abs()

    @torch.no_grad()
    def update(self, step, optimizer):
        if not self.is_update_step(step):
            return
        fraction = rigl_drop_fraction(step, self.end_step, self.drop_fraction)
        scores = self.grow_scores()
        masks, grown = {}, {}
        for name, p in self.params.items():
            keep = self.masks[name]
            count = min(int(math.floor(fraction * int(keep.sum()) + 0.5)), int(keep.sum()))
            masks[name] = drop_and_grow(keep, p, scores[name], count)
            grown[name] = masks[name] & ~keep
        self._grad_scores = {}
        for name, new in grown.items():  # new weights start at 0 with no history
            p = self.params[name]
            p.masked_fill_(new, 0)
            for value in optimizer_state(optimizer, p):
                value.masked_fill_(new, 0)
        self.set_masks(masks, optimizer)

    def extra_state(self):
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state):
        self.generator.set_state(state["generator"])


class SET(RigL):
    """Sparse Evolutionary Training (Mocanu et al. 2018), as the RigL paper runs it: RigL's schedule and drop rule,
    but the grown positions are drawn uniformly at random among those not kept (no gradient needed)."""

    name = "set"

    def before_step(self, optimizer):
        pass

    def grow_scores(self):
        return {n: torch.rand(p.shape, generator=self.generator).to(p.device) for n, p in self.params.items()}
