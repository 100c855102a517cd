"""Iterative magnitude pruning in a fixed step budget: lottery-ticket weight rewinding and learning-rate rewinding."""

from __future__ import annotations

import torch

from ..validation import check_choice
from .base import Pruner, check_positive, check_scope, optimizer_state
from .schedules import imp_boundaries, imp_round_rate, imp_rounds
from .select import magnitude_masks

REWINDS = ("weight", "lr")


class IMP(Pruner):
    """Iterative magnitude pruning (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"; weight rewinding:
    Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"; learning-rate rewinding:
    Renda et al. 2020, "Comparing Rewinding and Fine-tuning in Neural Network Pruning").

    ``rounds`` prunes split ``total_steps`` into ``rounds + 1`` nearly equal stretches (see
    :func:`~sparse_rda.pruning.schedules.imp_boundaries`). At the end of each of the first ``rounds`` stretches the
    smallest |w| are pruned (globally by default) so that after prune ``j`` the density is ``(1 - s)^(j / R)``,
    i.e. every prune removes ``1 - (1 - s)^(1/R)`` of the remaining weights; the last stretch trains at the final
    sparsity. Then:

    - ``rewind="weight"`` (make name ``"imp-weight"``): every parameter of the model (pruned survivors, biases, ...)
      goes back to its value after ``rewind_step`` steps of the first stretch, the optimizer state of those
      tensors is zeroed (it belongs to the discarded trajectory), and the lr schedule replays from that point;
    - ``rewind="lr"`` (``"imp-lr"``): the weights are kept and the lr schedule replays from its start.

    :meth:`lr_step` gives the replayed position: within each stretch the loop steps are mapped linearly onto the
    whole lr schedule (onto [rewind point, total_steps) for later stretches with weight rewinding), so an lr
    schedule written for ``total_steps`` steps runs once per stretch.

    Defaults: ``rounds = min(ceil(log(1 - s) / log(0.8)), 10)`` (prune ~20% of the remaining weights per round as
    Frankle & Carbin, capped at 10 rounds so each stretch keeps >= 1/11 of the budget; at s >= 0.9 this is 10
    rounds of 20.6% (s = 0.9) to 36.9% (s = 0.99)); ``rewind_step`` = 2% of the first stretch (Frankle et al. 2020
    rewind to an early iteration; 0 is the original lottery ticket, the initial weights); ``scope="global"``.
    """

    def __init__(self, model, sparsity, total_steps, *, rewind: str = "weight", rounds: int | None = None,
                 rewind_step: int | None = None, scope: str = "global", prunable=None, pattern=None):
        check_choice("rewind", rewind, REWINDS)
        if rounds is not None:
            rounds = check_positive("rounds", rounds, integer=True)
        self.scope = check_scope(scope)
        super().__init__(model, sparsity, total_steps, prunable=prunable, pattern=pattern)
        self.rewind = rewind
        self.name = f"imp-{rewind}"
        # a short budget gets fewer default rounds (one step per stretch at least); more prunes than steps
        # would coincide, which is allowed but pointless
        self.rounds = min(imp_rounds(self.target), max(1, self.total_steps - 1)) if rounds is None else rounds
        self.rate = imp_round_rate(self.target, self.rounds)
        self.boundaries = imp_boundaries(self.total_steps, self.rounds)
        first = self.boundaries[1]
        if rewind_step is None:
            rewind_step = int(0.02 * first)
        elif isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or not 0 <= rewind_step < first:
            raise ValueError(f"rewind_step must be an integer step in the first round, [0, {first}); "
                             f"got {rewind_step!r}")
        self.rewind_step = rewind_step if rewind == "weight" else 0
        self.rewind_to: dict[str, torch.Tensor] | None = None  # saved parameters (weight rewinding)
        self.update(0, None)

    def density_after(self, prunes: int) -> float:
        """Density of the masks after ``prunes`` prunes."""
        return (1 - self.target) ** (prunes / self.rounds)

    def round_of(self, step: int) -> int:
        """The stretch (0 .. rounds) that loop step ``step`` (0-based) belongs to."""
        return max(j for j in range(self.rounds + 1) if self.boundaries[j] <= step)

    def lr_step(self, step: int) -> int:
        j = self.round_of(step)
        begin, end = self.boundaries[j], self.boundaries[j + 1]
        # integer form of floor(total * (start + (1 - start) * i / L)), start = r / b_1: no float rounding at ends
        r = self.rewind_step if (self.rewind == "weight" and j > 0) else 0
        first, length, i = self.boundaries[1], max(1, end - begin), step - begin
        return self.total_steps * (r * length + (first - r) * i) // (first * length)

    @torch.no_grad()
    def update(self, step, optimizer):
        if self.rewind == "weight" and step == self.rewind_step:
            self.rewind_to = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if step not in self.boundaries[1:-1]:
            return
        done = sum(1 for b in self.boundaries[1:-1] if b <= step)
        masks = magnitude_masks(self.params, self.density_after(done), self.scope, current=self.masks,
                                pattern=self.pattern)
        if self.rewind == "weight":
            self._rewind(optimizer)
        self.set_masks(masks, optimizer)

    def _rewind(self, optimizer):
        for name, p in self.model.named_parameters():
            p.copy_(self.rewind_to[name])
            for value in optimizer_state(optimizer, p):
                value.zero_()

    def extra_state(self):
        saved = None if self.rewind_to is None else {n: t.clone() for n, t in self.rewind_to.items()}
        return {"rewind_to": saved}

    def load_extra_state(self, state):
        saved = state["rewind_to"]
        devices = {n: p.device for n, p in self.model.named_parameters()}
        self.rewind_to = None if saved is None else {n: t.to(devices[n]).clone() for n, t in saved.items()}
