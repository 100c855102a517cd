"""Which weights to keep: top-k masks per layer or over the whole model, within an N:M pattern or not, and ERK
layer densities.

Counts are exact: a mask keeps ``round(density * numel)`` elements (half up), picked by ``torch.topk``, so ties
cannot make a layer denser or sparser than asked.

N:M patterns ("2:4" or (2, 4): at most N kept in each group of M consecutive weights along a row, rows as RDA's
("nm", N, M) granularity has them, docs/ALGORITHMS.md section 3b): each group's N largest scores are the pattern's
candidates, and a mask keeps candidates before any other weight, by score within each class. So a density of N/M or
less keeps candidates only (a mask inside the pattern, sparser where asked), and a gradual schedule (GMP) that passes
through higher densities prunes the non-candidates first and ends on the pattern.
"""

from __future__ import annotations

import math

import torch

from .. import reference
from .base import check_fraction, check_scope


def pattern_candidates(scores: torch.Tensor, pattern: tuple[int, int]) -> torch.Tensor:
    """True on the N largest non-negative scores of each group of M along a row (rows: shape[0] of them, or one
    for a 1-D tensor); a negative score (a weight already pruned) is never a candidate."""
    row = scores[0].numel() if scores.dim() >= 2 else scores.numel()
    return reference.nm_keep(scores, pattern, row) & (scores >= 0)


def prefer_pattern(scores: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores (float64) raised above every other where they are the pattern's candidates: a top-k keeps the
    candidates first, each class in order of its scores."""
    raised = {n: s.detach().double() for n, s in scores.items()}
    offset = 1.0 + 2.0 * max((float(s.abs().max()) for s in raised.values() if s.numel()), default=0.0)
    return {n: torch.where(candidates[n], s + offset, s) for n, s in raised.items()}


def keep_count(numel: int, density: float) -> int:
    """Elements a mask of ``density`` keeps out of ``numel`` (rounded half up)."""
    return min(numel, int(math.floor(density * numel + 0.5)))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape with True at exactly its ``k`` largest entries."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return keep.view(scores.shape)


def top_k_masks(scores: dict[str, torch.Tensor], density: float, scope: str,
                pattern: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Keep the largest scores: ``density`` of each tensor (scope "layer") or of all of them together under one
    threshold (scope "global"); with an N:M ``pattern``, the pattern's candidates first (module docstring)."""
    if pattern is not None:
        candidates = {n: pattern_candidates(s, pattern) for n, s in scores.items()}
        counts = {n: int(c.sum()) for n, c in candidates.items()}
        if scope == "layer" and all(counts[n] == keep_count(s.numel(), density) for n, s in scores.items()) or (
                scope == "global" and sum(counts.values()) == keep_count(sum(s.numel() for s in scores.values()),
                                                                         density)):
            return candidates  # a density of exactly the candidates (SR-STE's every step): the top-k's own pick
        scores = prefer_pattern(scores, candidates)
    if scope == "layer":
        return {n: top_k_mask(s, keep_count(s.numel(), density)) for n, s in scores.items()}
    device = next(iter(scores.values())).device
    flat = torch.cat([s.detach().flatten().float().to(device) for s in scores.values()])
    keep = top_k_mask(flat, keep_count(flat.numel(), density))
    masks, start = {}, 0
    for n, s in scores.items():
        masks[n] = keep[start:start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
    return masks


def magnitude_masks(weights: dict[str, torch.Tensor], density: float, scope: str = "layer",
                    current: dict[str, torch.Tensor] | None = None,
                    pattern: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Keep the largest |w| (within an N:M ``pattern``: see top_k_masks). With ``current`` masks, pruned weights
    score below every kept one, so a mask that gets sparser never brings a pruned weight back (GMP, IMP)."""
    check_scope(scope)
    scores = {}
    for n, w in weights.items():
        score = w.detach().abs().float()
        scores[n] = score if current is None else score.masked_fill(~current[n], -1.0)
    return top_k_masks(scores, density, scope, pattern)


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Erdos-Renyi-Kernel layer densities (Evci et al. 2020, "Rigging the Lottery", section 3).

    A layer of shape (n_1, ..., n_d) gets density ``eps * (n_1 + ... + n_d) / (n_1 * ... * n_d)``, one ``eps`` for
    all layers chosen so the kept weights add up to ``density`` of all of them. A layer that would get more than 1
    is made dense and ``eps`` is solved again for the rest (raising ``eps`` only pushes more layers over 1, so
    capping every such layer at once is the same as one at a time).

    >>> erk_densities([(4, 4), (8, 8)], 0.25)   # raw 0.5 and 0.25; eps * (0.5 * 16 + 0.25 * 64) = 20
    [0.4166666666666667, 0.20833333333333334]
    """
    density = check_fraction("density", density)
    numels = [math.prod(s) for s in shapes]
    if any(n == 0 for n in numels):
        raise ValueError(f"shapes: every layer needs at least one element; got {shapes}")
    raw = [sum(s) / n for s, n in zip(shapes, numels)]
    dense: set[int] = set()
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        budget = density * sum(numels) - sum(numels[i] for i in dense)
        weighted = sum(raw[i] * numels[i] for i in sparse)
        eps = budget / weighted if weighted > 0 else 0.0
        over = {i for i in sparse if eps * raw[i] > 1.0}
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= over


def apportion(densities: list[float], numels: list[int], total: int) -> list[int]:
    """Integer keep counts near ``density * numel`` per layer that add up to exactly ``total`` (largest
    remainders get the leftover units), never above a layer's size."""
    wanted = [d * n for d, n in zip(densities, numels)]
    counts = [min(n, int(math.floor(w))) for w, n in zip(wanted, numels)]
    order = sorted(range(len(numels)), key=lambda i: wanted[i] - counts[i], reverse=True)
    left = total - sum(counts)
    while left > 0:
        grew = False
        for i in order:
            if left and counts[i] < numels[i]:
                counts[i] += 1
                left -= 1
                grew = True
        if not grew:
            break
    return counts
