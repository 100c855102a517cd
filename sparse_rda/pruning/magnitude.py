"""Magnitude pruning on a schedule: one-shot, gradual (GMP) and cyclical.

All three keep the largest |w|, per tensor (``scope="layer"``, the default: every tensor ends at the same sparsity)
or under one global threshold (``scope="global"``), within an N:M ``pattern`` when given (pruning/select.py: each
group's N largest |w| are pruned last, so GMP's ramp ends on the pattern). Schedule positions are fractions of
``total_steps``.
"""

from __future__ import annotations

import torch

from .base import Pruner, check_fraction, check_positive, check_scope, steps_at
from .schedules import CubicRamp, fit_ramp
from .select import magnitude_masks


class MagnitudePruner(Pruner):
    """One-shot magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"): train dense, prune the
    smallest |w| once to the final sparsity, fine-tune with the mask fixed.

    Defaults: ``prune_at=0.5`` (the first half of the budget trains dense, the second fine-tunes), ``scope="layer"``.
    ``prune_at=0`` prunes the initial weights at construction."""

    name = "magnitude"

    def __init__(self, model, sparsity, total_steps, *, prune_at: float = 0.5, scope: str = "layer",
                 prunable=None, pattern=None):
        prune_at = check_fraction("prune_at", prune_at)
        self.scope = check_scope(scope)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        self.prune_step = steps_at(prune_at, self.total_steps)
        self.update(0, None)

    def update(self, step, optimizer):
        if step == self.prune_step:
            self.set_masks(magnitude_masks(self.params, 1 - self.target, self.scope, pattern=self.pattern), optimizer)


def ramp_steps(total_steps: int, begin: float, end: float, interval: int | None) -> tuple[int, int, int]:
    """(start, stop, interval) in steps for a schedule between fractions ``begin`` < ``end`` of training;
    ``interval`` defaults to 1% of training (at least 1 step)."""
    begin, end = check_fraction("begin", begin), check_fraction("end", end)
    if end <= begin:
        raise ValueError(f"end must be after begin; got begin={begin}, end={end}")
    interval = max(1, total_steps // 100) if interval is None else check_positive("interval", interval, integer=True)
    start = steps_at(begin, total_steps)
    return start, max(start + 1, min(total_steps, steps_at(end, total_steps))), interval


class GMP(Pruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): every ``interval`` steps between
    ``begin`` and ``end`` prune to ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``; pruned weights stay pruned;
    training continues at the final sparsity after the ramp.

    Defaults: ramp over 10%..75% of the budget (the paper's ramp also starts after some dense training and leaves
    time to recover at the end), ``interval`` = 1% of the budget (100 prune points), ``initial_sparsity=0``,
    ``scope="layer"`` (the paper prunes each layer to s_t). ``interval`` is in steps; the ramp ends at the last
    multiple of it that fits before ``end``."""

    name = "gmp"

    def __init__(self, model, sparsity, total_steps, *, begin: float = 0.1, end: float = 0.75,
                 interval: int | None = None, initial_sparsity: float = 0.0, scope: str = "layer", prunable=None,
                 pattern=None):
        initial = check_fraction("initial_sparsity", initial_sparsity, allow_one=False)
        self.scope = check_scope(scope)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        start, stop, interval = ramp_steps(self.total_steps, begin, end, interval)
        self.ramp = fit_ramp(start, stop, interval, initial, self.target)
        self.update(0, None)

    def update(self, step, optimizer):
        target = self.ramp.target(step)
        if target is not None:
            self.set_masks(magnitude_masks(self.params, 1 - target, self.scope, current=self.masks, pattern=self.pattern),
                           optimizer)


class CyclicalPruner(Pruner):
    """Cyclical pruning (Srinivas et al. 2022, arXiv 2202.01290): the GMP ramp repeated over ``cycles`` cycles.

    Each cycle starts again at a low sparsity (``initial_sparsity`` for the first, ``restart_sparsity`` for the
    others, default the same) and ramps to the final one by magnitude pruning. At a cycle's start the weights
    pruned in the previous one are unmasked: they restart from 0 and train with the rest, so a weight pruned
    wrongly in one cycle can grow and survive the next cycle's prunes. Pruned weights and their optimizer state
    are zeros, as in GMP; after the last cycle the mask is fixed.

    Not a dense shadow: a first version kept training the pruned weights' dense values (the forward pass saw
    zeros) and revived them by magnitude. Values the loss does not see drift with their gradient, to many times a
    kept weight's size between prune points, and LeNet-300-100 / LeNet-5 on Fashion-MNIST diverged when they
    came back (10% accuracy at 90-99%, SGD lr 0.1, bench/accuracy.py); without momentum on them, LeNet-5 still did.

    Defaults: ``cycles=3`` (fewer when the budget has under 2 steps per cycle); the cycles share 10%..75% of the
    budget equally (as GMP's single ramp, leaving the last 25% to train at the final sparsity); ``interval`` = 1%
    of the budget; ``scope="layer"``. Each cycle's last prune point is at least one step before the next cycle
    starts, so every cycle reaches the final sparsity."""

    name = "cyclical"

    def __init__(self, model, sparsity, total_steps, *, cycles: int | None = None, begin: float = 0.1,
                 end: float = 0.75, interval: int | None = None, initial_sparsity: float = 0.0,
                 restart_sparsity: float | None = None, scope: str = "layer", prunable=None, pattern=None):
        if cycles is not None:
            cycles = check_positive("cycles", cycles, integer=True)
        initial = check_fraction("initial_sparsity", initial_sparsity, allow_one=False)
        restart = initial if restart_sparsity is None else check_fraction(
            "restart_sparsity", restart_sparsity, allow_one=False)
        self.scope = check_scope(scope)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        start, stop, interval = ramp_steps(self.total_steps, begin, end, interval)
        if cycles is None:  # 3, or as many as fit in a very short budget (2 steps per cycle)
            cycles = min(3, max(1, (stop - start) // 2))
        elif stop - start < 2 * cycles:
            raise ValueError(f"cycles: {cycles} cycles need at least {2 * cycles} steps between begin and end, "
                             f"there are {stop - start} (total_steps={self.total_steps})")
        length = (stop - start) // cycles
        self.ramps = [fit_ramp(start + c * length, start + (c + 1) * length - 1, interval,
                               initial if c == 0 else restart, self.target) for c in range(cycles)]
        self.update(0, None)

    def sparsity_at(self, step: int) -> float | None:
        """The sparsity to prune to at ``step``, or None when no cycle prunes then."""
        for ramp in self.ramps:
            target = ramp.target(step)
            if target is not None:
                return target
        return None

    @torch.no_grad()
    def update(self, step, optimizer):
        target = self.sparsity_at(step)
        if target is not None:  # pruned weights are 0, below every kept one: a lower target unmasks some of them
            self.set_masks(magnitude_masks(self.params, 1 - target, self.scope, pattern=self.pattern), optimizer)
