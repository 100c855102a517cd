"""The authors' schedules for RDA: the step size and (1 - averaging) shrink by the same factor f_k.

    lr_k        = lr_0 * f_k
    averaging_k = 1 - (1 - averaging_0) * f_k

``CosineRDA``: f_k = (1 + cos(pi k / K)) / 2, so from averaging_0 = 0 the averaging is (1 - cos(pi k / K)) / 2.
``StepRDA``: f_k = gamma ** (number of milestones <= k), gamma = 1/2 in the paper.

Both are ``torch.optim.lr_scheduler.LRScheduler`` subclasses: call ``step()`` once per optimizer step (or epoch,
matching the units of ``total_steps`` / ``milestones``); ``state_dict()`` holds the position, so a resumed run
continues the schedule where it was.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from .validation import check_number


class _RDASchedule(LRScheduler):
    def __init__(self, optimizer, last_epoch: int = -1):
        for group in optimizer.param_groups:
            if "averaging" not in group:
                raise ValueError("optimizer: RDA schedules need param groups with an 'averaging' option (use RDA)")
            group.setdefault("initial_averaging", float(group["averaging"]))
        self.base_averagings = [group["initial_averaging"] for group in optimizer.param_groups]
        super().__init__(optimizer, last_epoch)

    def factor(self, k: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]

    def step(self, epoch=None) -> None:
        super().step(epoch)
        self._apply_averaging()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position and set lr and averaging to it, whether the optimizer was loaded before or after."""
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            _assign(group, "lr", lr)
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]
        self._apply_averaging()

    def _apply_averaging(self) -> None:
        f = self.factor(self.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_averagings):
            _assign(group, "averaging", 1.0 - (1.0 - float(base)) * f)


def _assign(group: dict, key: str, value: float) -> None:
    """Set a hyper-parameter; a device tensor (capturable mode) is updated in place, as CUDA graphs need."""
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


class CosineRDA(_RDASchedule):
    """Cosine schedule over ``total_steps``: lr from lr_0 to 0, averaging from averaging_0 to 1."""

    def __init__(self, optimizer, total_steps: int, last_epoch: int = -1):
        check_number("total_steps", total_steps, low=0.0, low_open=True)
        self.total_steps = int(total_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, k: int) -> float:
        k = min(max(k, 0), self.total_steps)
        return 0.5 * (1.0 + math.cos(math.pi * k / self.total_steps))


class StepRDA(_RDASchedule):
    """At each milestone, multiply lr and (1 - averaging) by ``gamma`` (the paper: 1/2, every 40 epochs from 60)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.5, last_epoch: int = -1):
        self.milestones = sorted(int(m) for m in milestones)
        check_number("gamma", gamma, high=1.0, low_open=True)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, k: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, k)
