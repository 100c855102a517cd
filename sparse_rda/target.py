"""``target_sparsity=``: RDA and gRDA reach a requested sparsity without hand-tuning ``lam`` or ``c``.

Both thresholds are linear in one scalar: RDA zeroes an element when ``|T| <= lam * B`` (a tile in block mode
when ``||T_tile|| <= lam * B_tile * sqrt(tile size)``), gRDA when ``|acc| <= l1``, and ``l1`` is ``c`` times a
sum that does not depend on ``c``. So after a step the scale that would zero exactly a fraction ``s`` of a
group's penalized elements is a quantile of ``|T| / B`` (of ``|acc| / (l1 / c)``). Every few steps the
controller sets ``lam`` (``c``, rescaling the accumulated ``l1`` with it, as if that ``c`` had been used from
the start) to the quantile for the scheduled sparsity

    s(t) = target * (1 - (1 - t / (RAMP_END * total_steps))^3)   (then target until the end),

Zhu & Gupta's cubic ramp: sparsity grows fast while the weights move a lot and settles before the end, so the
last quarter of training is fine-tuning at the target. The weights keep following RDA / gRDA: a zeroed weight
goes on accumulating in ``T`` (``acc``) and comes back if its gradients say so; only the penalty strength is
steered. One host sync per control step (the quantile), none in between.
"""

from __future__ import annotations

import math

import torch

RAMP_END = 0.75  # fraction of training after which the target holds
CONTROL_POINTS = 200  # about this many control steps over a training run (each costs a quantile)


def scheduled_sparsity(step: int, total_steps: int, target: float) -> float:
    """The sparsity the controller asks for after ``step`` steps (the cubic ramp above)."""
    progress = min(step / max(RAMP_END * total_steps, 1.0), 1.0)
    return target * (1.0 - (1.0 - progress) ** 3)


def control_interval(total_steps: int) -> int:
    return max(1, total_steps // CONTROL_POINTS)


def is_control_step(step: int, total_steps: int) -> bool:
    """Whether to re-steer after this step: every ``control_interval`` steps and after the last ramp step."""
    return step % control_interval(total_steps) == 0 or step == math.ceil(RAMP_END * total_steps)


def scale_for_sparsity(ratios: torch.Tensor, sizes: torch.Tensor | None, sparsity: float) -> float:
    """The threshold scale that zeroes a ``sparsity`` fraction of the elements, where a unit (an element, or a
    tile of ``sizes`` elements) is zero when its ratio <= the scale: the ratio of the first unit, in increasing
    order, at which the units so far cover the fraction. When nothing is to be zeroed, a positive scale below
    every positive ratio (units already at 0 stay zero whatever the scale)."""
    ratios = ratios.flatten().float()
    if sizes is None:
        k = round(sparsity * ratios.numel())
        return _below_all(ratios) if k == 0 else float(torch.kthvalue(ratios, k).values)
    sorted_ratios, order = torch.sort(ratios)
    covered = torch.cumsum(sizes.flatten().to(torch.float64)[order], 0)
    needed = round(sparsity * float(covered[-1]))
    if needed == 0:
        return _below_all(ratios)
    # units are zeroed whole: stop at the count nearest to the fraction, above or below it
    first = min(int(torch.searchsorted(covered, torch.tensor([needed], dtype=torch.float64, device=covered.device))),
                ratios.numel() - 1)
    if first > 0 and needed - float(covered[first - 1]) < float(covered[first]) - needed:
        first -= 1
    return float(sorted_ratios[first])


def _below_all(ratios: torch.Tensor) -> float:
    positive = ratios[ratios > 0]
    return 0.5 * float(positive.min()) if positive.numel() and math.isfinite(float(positive.min())) else 0.0


def zero_ratio(magnitude: torch.Tensor, unit_threshold: torch.Tensor) -> torch.Tensor:
    """magnitude / unit_threshold: the threshold scale from which a unit is zero (inf where it never is: an
    unpenalized unit, or a non-finite one, which counts as nonzero and stays out of the quantile's way)."""
    ratio = magnitude / unit_threshold
    return torch.where((unit_threshold > 0) & ~torch.isnan(ratio), ratio, torch.full_like(ratio, math.inf))
