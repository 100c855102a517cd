"""Sparsity schedules of the pruning methods, as functions of the number of optimizer steps done (``step``).

- :func:`cubic_sparsity` / :class:`CubicRamp`: Zhu & Gupta's gradual pruning ramp (GMP; one cycle of cyclical).
- :func:`rigl_drop_fraction`: RigL's cosine-decayed drop fraction.
- :func:`imp_rounds`, :func:`imp_boundaries`: how iterative magnitude pruning splits the budget into rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cubic_sparsity(step: int, start: int, length: int, initial: float, final: float) -> float:
    """Zhu & Gupta 2017, eq. (1): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3`` for ``t`` in
    [t0, t0 + n dt] (``start`` = t0, ``length`` = n dt); ``s_i`` before, ``s_f`` after."""
    progress = min(max((step - start) / length, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class CubicRamp:
    """Prune to :func:`cubic_sparsity` at ``start + j * interval`` for j = 0..count (the last point reaches
    ``final``)."""

    start: int
    interval: int
    count: int
    initial: float
    final: float

    @property
    def end(self) -> int:
        return self.start + self.count * self.interval

    def target(self, step: int) -> float | None:
        """The sparsity to prune to at ``step``, or None when ``step`` is not one of the ramp's points."""
        offset = step - self.start
        if offset < 0 or offset > self.count * self.interval or offset % self.interval:
            return None
        return cubic_sparsity(step, self.start, self.count * self.interval, self.initial, self.final)


def fit_ramp(start: int, stop: int, interval: int, initial: float, final: float) -> CubicRamp:
    """The ramp from ``start`` with points every ``interval`` steps whose last point is at or before ``stop``
    (at least one step after ``start``, so it always reaches ``final``)."""
    interval = max(1, min(interval, stop - start))
    count = max(1, (stop - start) // interval)
    return CubicRamp(start, interval, count, initial, final)


def rigl_drop_fraction(step: int, end: int, initial: float = 0.3) -> float:
    """Evci et al. 2020, eq. (1): ``f(t) = initial / 2 * (1 + cos(pi t / T_end))``."""
    return initial / 2 * (1 + math.cos(math.pi * step / end))


def imp_rounds(sparsity: float, per_round: float = 0.2, max_rounds: int = 10) -> int:
    """Prune rounds for iterative magnitude pruning: as many as pruning ``per_round`` of the remaining weights each
    time needs (Frankle & Carbin prune 20% per round), at most ``max_rounds`` so each round still trains long
    enough in a fixed budget, at least 1."""
    if sparsity <= 0:
        return 1
    return max(1, min(math.ceil(math.log(1 - sparsity) / math.log(1 - per_round) - 1e-9), max_rounds))


def imp_round_rate(sparsity: float, rounds: int) -> float:
    """Fraction of the remaining weights each of ``rounds`` prunes: ``1 - (1 - s)^(1/R)``."""
    return 1 - (1 - sparsity) ** (1 / rounds)


def imp_boundaries(total_steps: int, rounds: int) -> list[int]:
    """Step counts ``b_0 = 0 < b_1 <= ... <= b_R <= b_{R+1} = total``: ``rounds`` prunes split training into
    ``rounds + 1`` nearly equal stretches, the last one trained at the final sparsity. Prune ``j`` happens when
    ``b_j`` steps are done."""
    inner = [min(total_steps, max(1, int(math.floor(j * total_steps / (rounds + 1) + 0.5))))
             for j in range(1, rounds + 1)]
    return [0, *inner, total_steps]
