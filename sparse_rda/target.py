"""``target_sparsity=``: RDA and gRDA reach a requested sparsity without hand-tuning ``lam`` or ``c``.

Both thresholds are linear in one scalar, the threshold scale: RDA zeroes an element when ``|T| <= lam * B`` (a
tile in block mode when ``||T_tile|| <= lam * B_tile * sqrt(tile size)``), gRDA when ``|acc| <= l1``, and ``l1``
is ``c`` times a sum that does not depend on ``c`` (changing ``c`` rescales the accumulated ``l1`` with it, as if
that ``c`` had been used from the start). So after a step each unit (element or tile) has a ratio ``|T| / B``
(``|acc| / (l1 / c)``) and is zero exactly when its ratio <= the scale: the scale that zeroes a fraction ``s``
of the group's penalized elements is a quantile of the ratios. The schedule is Zhu & Gupta's cubic ramp

    s(t) = target * (1 - (1 - t / (RAMP_END * total_steps))^3)   (then target until the end),

so sparsity grows fast while the weights move a lot and the last quarter of training is fine-tuning at the
target. A control step comes every ``interval`` steps (at most ``control_interval = total_steps //
CONTROL_POINTS``; below), after the last ramp step, after step ``total_steps``, and at once when the lr has moved
more than LR_JUMP times since the last one. On a control step, after the step:

1. **Snap**: the scale becomes the quantile ``q`` of ``s(t)`` and this step's weights are thresholded again with
   it (``w = S(T, q B)``, gRDA ``S(acc, l1)``, block mode's tile maps with them): as if the step had used ``q``.
   Every control step, the last one included, ends on the schedule (to the nearest tile in block mode).
2. **Hold**: until the next control step the scale is ``held^(1 - gain) * q^gain``, a fraction ``gain`` of the
   way from the scale held so far to ``q``, in log (at the first control step ``q`` itself: the constructor's
   ``lam`` / ``c`` is only a starting guess). RDA: gain = HOLD_GAIN; gRDA: 1 (hold ``q``; below).
3. **Interval**: halved when the held scale had let the sparsity drift more than SHORTEN_AT (1 point) from the
   schedule since the last control step (measured on this step's ratios before the snap), doubled back up to
   ``control_interval`` when less than LENGTHEN_AT (half a point).

Why not hold ``q`` in RDA. ``q`` is exact for the step it is computed on, and far off a few steps later: the
weights keep moving at a fixed scale, over a few times RDA's momentum and reweighting time (~10 steps at the
defaults). Live weights just above a raised threshold are small, so their reweighting factor grows as their
average magnitude decays, and they follow the zeroed ones; a lowered threshold lets the zeroed weights whose
gradients beat it come back. Holding ``q`` (the rule before) made the sparsity overshoot each time and cycle: on
LeNet-300-100 / Fashion-MNIST at a constant lr, with 46 steps between control steps, between 78% and 98.7% zeros
for a 90% target, ``lam`` jumping 30x from one control step to the next, and 79.5% at the end. The held scale
finds the scale at which the sparsity stays put: where it is too high the sparsity drifts up between control
steps, so the next ``q`` is below it, and it comes down; at the right scale ``q`` equals it on average (HOLD_GAIN
0.15: 0.08 tracked too slowly on that run, 0.3 moved with the noise of the batches; plain l1 RDA,
``reweight=False``, is as steady with it). gRDA's ``l1`` does not depend on the weights, so its last quantile is
the best guess there and it holds ``q`` (with 0.15 it lagged the ramp: twice the control steps, no closer).
The snap takes out what the held scale has not caught up with yet (the ramp, the noise of the batches) at every
control step, and the shorter intervals limit how far the sparsity runs off in between when the weights change
their pace (a warm restart: from lr ~0 to its peak, RDA needs a 6-8x higher ``lam`` within some 20 steps).
Between control steps the sparsity still moves with the batches around the held scale's level (on LeNet-300-100
at a constant lr: up to 3.6 points at single steps, 0.64 point RMS; up to 4 right after a warm restart).

Cost per control step: one quantile (a ``kthvalue``; a sort in block mode) and one count over the group's
penalized elements, one thresholding pass over them and a few host syncs; no work in between. The intervals
adapt, so a run takes more control steps than CONTROL_POINTS: ~550 on 20 epochs of LeNet-300-100 at a constant
lr (9,380 steps), 4-8% of its CPU training time (bench/results/target_sparsity-cpu.md). The controller's state is
the scale (``lam`` / ``c``, with gRDA's ``l1``) and the group's ``target_interval`` and ``target_lr`` (read back
with a fallback when a checkpoint holds something else there), so it survives ``state_dict()`` /
``load_state_dict()`` and a resumed run continues it exactly. The weights keep following RDA / gRDA: a zeroed
weight goes on accumulating in ``T`` (``acc``) and comes back if its gradients say so; only the penalty strength
is steered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

RAMP_END = 0.75  # fraction of training after which the target holds
CONTROL_POINTS = 200  # about this many control steps over a training run (each costs a quantile)
HOLD_GAIN = 0.15  # the fraction of the way (in log) from the held scale to the quantile taken per control step
SHORTEN_AT, LENGTHEN_AT = 0.01, 0.005  # drift from the schedule (a fraction of the elements) that halves / doubles
# the steps to the next control step
LR_JUMP = 2.0  # an lr change by more than this factor since the last control step calls one at once
ROUND_UP = 1.0 + 2.0**-21  # the snap's scale is the quantile times this: the unit at the quantile (ratio == scale)
# is zeroed also where lam * B rounds below |T|


def scheduled_sparsity(step: int, total_steps: int, target: float, floor: float = 0.0) -> float:
    """The sparsity the controller asks for after ``step`` steps (the cubic ramp above), from ``floor``: what the
    group zeroes at any scale (an N:M pattern's 1 - N/M), so the ramp is over the sparsity beyond it."""
    progress = min(step / max(RAMP_END * total_steps, 1.0), 1.0)
    return floor + (target - floor) * (1.0 - (1.0 - progress) ** 3)


def control_interval(total_steps: int) -> int:
    return max(1, total_steps // CONTROL_POINTS)


def is_control_step(step: int, total_steps: int, interval: int) -> bool:
    """Whether to re-steer after this step: every ``interval`` steps, after the last ramp step and after the last
    step."""
    return step % interval == 0 or step == math.ceil(RAMP_END * total_steps) or step == total_steps


def current_interval(saved, total_steps: int) -> int:
    """The group's steps between control steps: its ``target_interval`` when that is an int in
    [1, control_interval] (the controller sets it, but it may come from a checkpoint), else control_interval."""
    longest = control_interval(total_steps)
    if isinstance(saved, int) and not isinstance(saved, bool) and 1 <= saved <= longest:
        return saved
    return longest


def next_interval(interval: int, drift: float, total_steps: int) -> int:
    """Halved when the held scale had let the sparsity drift more than SHORTEN_AT from the schedule since the last
    control step, doubled (up to control_interval) when less than LENGTHEN_AT."""
    if drift > SHORTEN_AT:
        return max(1, interval // 2)
    if drift < LENGTHEN_AT:
        return min(control_interval(total_steps), interval * 2)
    return interval


def lr_jumped(lr: float, last_lr) -> bool:
    """Whether the lr moved by more than LR_JUMP times (either way) since the last control step: a warm restart or
    a step decay changes how the weights move at once, so the controller looks at once."""
    if not isinstance(last_lr, float) or not last_lr > 0 or not lr > 0:
        return False
    return lr > LR_JUMP * last_lr or last_lr > LR_JUMP * lr


def held_scale(held: float, quantile: float, first: bool, gain: float = HOLD_GAIN) -> float:
    """The scale to hold until the next control step: ``held^(1 - gain) * quantile^gain``; the quantile itself at
    the first control step or where either is not positive (no log)."""
    if first or not (held > 0 and quantile > 0):
        return quantile
    return math.exp((1.0 - gain) * math.log(held) + gain * math.log(quantile))


# A ratio is a float32 >= 0 (or inf): its 31 low bits order as integers, so the quantile is found digit by digit
# from histograms that add up over ranks (a sharded group's units live on several), exactly, in three rounds.
RADIX_ROUNDS = ((20, 11), (10, 10), (0, 10))  # (shift, bits) of each round's digit, from the top


class Units:
    """A group's penalized units (elements, or tiles with their sizes) in parts: per part its ratios (float32),
    the units' sizes (None: one element each) and ``reduce(tensor, op)``, which sums (or maxes, mins) a tensor
    of per-part totals over the part's shards in place (sparse_rda/sharded.py; nothing in one process)."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor | None, Callable]]):
        self.parts = [(r.flatten().float().contiguous(), None if z is None else z.flatten().double(), reduce)
                      for r, z, reduce in parts]
        self.tiled = any(z is not None for _, z, _ in self.parts)

    @classmethod
    def local(cls, ratios: torch.Tensor, sizes: torch.Tensor | None = None) -> Units:
        return cls([(ratios, sizes, lambda tensor, op: tensor)])

    def _sum(self, local_rows) -> torch.Tensor:
        """The float64 sum over parts and their shards of ``local_rows(ratios, sizes)`` (a 1-D tensor)."""
        total = None
        for ratios, sizes, reduce in self.parts:
            row = reduce(local_rows(ratios, sizes).double(), "sum")
            total = row if total is None else total + row.to(total.device)
        return total.cpu()

    def _extreme(self, local_value, op: str) -> float:
        values = [float(reduce(local_value(ratios).reshape(1), op)) for ratios, _, reduce in self.parts]
        return max(values) if op == "max" else min(values)

    def quantile_and_fraction(self, sparsity: float, held: float) -> tuple[float, float]:
        """(the scale that zeroes a ``sparsity`` fraction of the elements, the fraction ``held`` zeroes); a unit is
        zero when its ratio <= the scale. The scale is the ratio of the first unit, in increasing order, at which
        the units so far cover the fraction; tiles are zeroed whole, so it is the ratio below that one where that
        count is nearer. When nothing is to be zeroed, a positive scale below every positive ratio (units at 0
        stay zero whatever the scale)."""
        prefix, below, needed, fraction = 0, 0.0, None, 0.0
        for shift, bits in RADIX_ROUNDS:
            def digits(ratios, sizes, shift=shift, bits=bits, prefix=prefix, first=needed is None):
                """This round's histogram of the units under ``prefix``; the first round's also counts what
                ``held`` zeroes (one collective for both)."""
                keys = ratios.view(torch.int32)
                chosen = (keys >> (shift + bits)) == prefix
                weights = None if sizes is None else sizes[chosen]
                hist = torch.bincount((keys[chosen] >> shift) & ((1 << bits) - 1), weights, minlength=1 << bits)
                if not first:
                    return hist
                at_most_held = (ratios <= held).double() if sizes is None else sizes * (ratios <= held)
                return torch.cat([hist.double(), at_most_held.sum().reshape(1)])

            hist = self._sum(digits)
            if needed is None:  # the first round: every unit is in it
                hist, covered_by_held = hist[:-1], float(hist[-1])
                total = float(hist.sum())
                fraction = covered_by_held / total if total else 0.0
                needed = round(sparsity * total)
                if needed == 0:
                    return self._below_all(), fraction
            cumulative = below + torch.cumsum(hist, 0)
            digit = min(int(torch.searchsorted(cumulative, torch.tensor([float(needed)], dtype=torch.float64))),
                        len(hist) - 1)
            below = float(cumulative[digit - 1]) if digit > 0 else below
            prefix = (prefix << bits) | digit
        at_most = float(cumulative[digit])
        scale = float(torch.tensor([prefix], dtype=torch.int32).view(torch.float32))
        if self.tiled and below > 0 and needed - below < at_most - needed:
            scale = self._extreme(lambda r: torch.where(r < scale, r, -1.0).max(), "max")
        return scale, fraction

    def _below_all(self) -> float:
        smallest = self._extreme(lambda r: torch.where(r > 0, r, math.inf).min(), "min")
        return 0.5 * smallest if math.isfinite(smallest) else 0.0


def scale_for_sparsity(ratios: torch.Tensor, sizes: torch.Tensor | None, sparsity: float) -> float:
    """Units.quantile_and_fraction's scale for units all in this process."""
    return Units.local(ratios, sizes).quantile_and_fraction(sparsity, 0.0)[0]


def sparsity_at(ratios: torch.Tensor, sizes: torch.Tensor | None, scale: float) -> float:
    """The fraction of the elements that ``scale`` zeroes (units with ratio <= scale, tiles counting their
    sizes)."""
    return Units.local(ratios, sizes).quantile_and_fraction(0.0, scale)[1]


def zero_ratio(magnitude: torch.Tensor, unit_threshold: torch.Tensor) -> torch.Tensor:
    """magnitude / unit_threshold: the threshold scale from which a unit is zero (inf where it never is: an
    unpenalized unit, or a non-finite one, which counts as nonzero and stays out of the quantile's way)."""
    ratio = magnitude / unit_threshold
    return torch.where((unit_threshold > 0) & ~torch.isnan(ratio), ratio, torch.full_like(ratio, math.inf))
