"""The mask API every pruning method shares: :class:`Pruner`.

A pruner holds one bool mask per prunable parameter (True = keep), keyed by the parameter's name in
``model.named_parameters()``. Applying the masks zeroes the pruned weights and, in the optimizer, every state tensor
of the weight's shape at the same positions (SGD's ``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``, ...), so a
pruned weight does not carry momentum into the next step. The weights themselves stay dense tensors with zeros, so
gradients at pruned positions still exist (RigL grows from them, cyclical pruning trains them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn

from ..groups import penalized_names
from ..nn import SparseLinear, tile_occupancy
from ..validation import check_choice, check_pattern

SCOPES = ("layer", "global")


# ----------------------------------------------------------------------------------------------------------
# Input checks: ValueError naming the parameter, raised before a pruner touches anything.


def check_fraction(name: str, value, *, allow_one: bool = True) -> float:
    """A real number in [0, 1] (or [0, 1) when ``allow_one`` is False)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number in [0, 1{']' if allow_one else ')'}; got {value!r}")
    if not (0.0 <= value <= 1.0) or (value == 1.0 and not allow_one):
        raise ValueError(f"{name} must be in [0, 1{']' if allow_one else ')'}; got {value!r}")
    return float(value)


def check_positive(name: str, value, *, integer: bool = False) -> float | int:
    """A positive finite number (a positive int with ``integer``)."""
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    return int(value) if integer else float(value)


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_scope(scope) -> str:
    check_choice("scope", scope, SCOPES)
    return scope


def steps_at(fraction: float, total_steps: int) -> int:
    """The optimizer-step count at ``fraction`` of training."""
    return int(math.floor(fraction * total_steps + 0.5))


# ----------------------------------------------------------------------------------------------------------


def prunable_parameters(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    """The parameters a pruner masks, by name, in ``model.named_parameters()`` order.

    Default: what ``sparse_rda.param_groups`` penalizes by default (the trainable weights of Linear, Conv,
    attention and RNN layers; not embeddings or norms). ``names`` picks them explicitly."""
    named = dict(model.named_parameters())
    if names is None:
        wanted = penalized_names(model)
        chosen = [n for n, p in named.items() if n in wanted and p.requires_grad]
    else:
        if isinstance(names, str):
            raise ValueError(f"prunable must be a list of parameter names, not the string {names!r}")
        chosen = list(dict.fromkeys(names))
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(f"prunable: no parameter named {unknown[0]!r} in the model "
                             f"(named_parameters has {sorted(named)})")
        bad = [n for n in chosen if not named[n].is_floating_point()]
        if bad:
            raise ValueError(f"prunable: parameter {bad[0]!r} is not floating point")
    if not chosen:
        raise ValueError("prunable: the model has no parameters to prune "
                         "(default: the Linear, Conv, attention and RNN weights)")
    return {n: named[n] for n in chosen}


class Pruner:
    """Masks for a model's prunable weights, driven by the training-loop protocol of :mod:`sparse_rda.pruning`.

    This base class keeps its masks fixed (all True until :meth:`set_masks` changes them), so it doubles as the
    plain mask API: ``pruner.set_masks({name: keep}, optimizer)`` zeroes the weights and optimizer state where
    ``keep`` is False, and every ``after_step`` keeps them zero. Methods subclass it and change the masks on a
    schedule (:meth:`update`, called with the number of optimizer steps done: 0 at construction, then 1, 2, ...).

    Args:
        model: the network; its parameters are found by name.
        sparsity: fraction of the prunable weights that are zero at the end of training, in [0, 1).
        total_steps: number of optimizer steps the run will take (schedules are laid out over it).
        prunable: names of the parameters to mask; default the Linear, Conv, attention and RNN weights (see
            :func:`prunable_parameters`).
        pattern: an N:M pattern ("2:4" or (2, 4)) the final masks keep to (the methods that take one: all but RigL
            and SET, whose drop / grow exchange single connections anywhere in a layer): at most
            N kept weights in each group of M consecutive ones along a row (sparsity >= 1 - N/M; beyond it, the
            largest scores within the pattern). See :mod:`sparse_rda.pruning.select`.
    """

    name = "fixed"

    def __init__(self, model: nn.Module, sparsity: float, total_steps: int, *, prunable=None, pattern=None):
        self.target = check_fraction("sparsity", sparsity, allow_one=False)
        self.total_steps = check_positive("total_steps", total_steps, integer=True)
        self.pattern = check_pattern(pattern)
        if self.pattern is not None:
            n, m = self.pattern
            if self.target < 1 - n / m:
                raise ValueError(f"sparsity={sparsity} is below what pattern {n}:{m} prunes by itself (1 - N/M = "
                                 f"{1 - n / m:g})")
        self.model = model
        self.params = prunable_parameters(model, prunable)
        self.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.step = 0  # optimizer steps done (after_step calls)
        self._pruned_any = False  # skip the per-step zeroing while every mask is all True

    # -- the training-loop protocol ------------------------------------------------------------------------

    def penalty(self) -> torch.Tensor | float:
        """A term to add to the loss (HALO's); 0.0 for methods without one."""
        return 0.0

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Between ``loss.backward()`` and ``optimizer.step()``: the dense gradients are in ``p.grad``."""

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.step()``: advance the schedule, then zero the pruned weights and their state."""
        self.step += 1
        self.update(self.step, optimizer)
        self.apply_masks(optimizer)

    def lr_step(self, step: int) -> int:
        """The step index an lr schedule should use for loop step ``step`` (identity; IMP replays it)."""
        return step

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After the last step: a method's final prune (HALO); nothing for the others."""

    def sparsity(self) -> float:
        """Fraction of zeros over the prunable weights (the weights themselves, not the masks)."""
        zeros = sum(int((p.detach() == 0).sum()) for p in self.params.values())
        return zeros / sum(p.numel() for p in self.params.values())

    # -- masks ---------------------------------------------------------------------------------------------

    def update(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        """The method's schedule at ``step`` optimizer steps done (``optimizer`` is None at construction)."""

    def density(self) -> float:
        """Fraction of the prunable weights the masks keep."""
        return sum(int(m.sum()) for m in self.masks.values()) / sum(m.numel() for m in self.masks.values())

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None,
                  zero_state: bool = True) -> None:
        """Replace the masks of the named parameters (bool, True = keep), zero what they prune (and its optimizer
        state, unless ``zero_state`` is False), and refresh the tile maps of SparseLinear layers holding them."""
        for name, keep in masks.items():
            if name not in self.masks:
                raise ValueError(f"masks: {name!r} is not one of this pruner's parameters")
            if keep.shape != self.masks[name].shape:
                raise ValueError(f"masks: {name!r} needs shape {tuple(self.masks[name].shape)}, "
                                 f"got {tuple(keep.shape)}")
        for name, keep in masks.items():
            self.masks[name] = keep.to(device=self.params[name].device, dtype=torch.bool)
        self._pruned_any = not all(bool(m.all()) for m in self.masks.values())
        self._zero_pruned(masks, optimizer if zero_state else None)
        self.refresh_layers(masks)

    @torch.no_grad()
    def apply_masks(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero every pruned weight and its optimizer state (the masks are unchanged)."""
        if self._pruned_any:
            self._zero_pruned(self.masks, optimizer)

    @torch.no_grad()
    def _zero_pruned(self, names: Iterable[str], optimizer: torch.optim.Optimizer | None) -> None:
        for name in names:
            p, pruned = self.params[name], ~self.masks[name]
            p.masked_fill_(pruned, 0)
            for value in optimizer_state(optimizer, p):
                value.masked_fill_(pruned, 0)

    @torch.no_grad()
    def refresh_layers(self, names: Iterable[str] | None = None) -> None:
        """Point the occupancy map of each SparseLinear holding a masked weight at the mask's live tiles, so its
        matmul skips the tiles the mask empties. The map covers every kept position even where the weight is 0
        (RigL grows weights at 0), so a ``dw_live_only`` layer still trains them."""
        names = set(self.masks if names is None else names)
        by_tensor = {id(p): n for n, p in self.params.items() if n in names}
        for module in self.model.modules():
            name = by_tensor.get(id(module.weight)) if isinstance(module, SparseLinear) else None
            if name is not None:
                mask = self.masks[name]
                module.set_mask(mask)  # zeroes the pruned weights (already zero) and sizes the map
                module.occupancy |= tile_occupancy(mask, module.block).to(module.occupancy.device)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Masks, step count and whatever the method needs to resume exactly (tensors are copies)."""
        return {"method": self.name, "step": self.step,
                "masks": {n: m.clone() for n, m in self.masks.items()}, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. Load the model's own state dict first (SparseLinear maps are then
        re-pointed at the masks)."""
        if state.get("method") != self.name:
            raise ValueError(f"state: saved by method {state.get('method')!r}, loading into {self.name!r}")
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ValueError(f"state: masks for {sorted(masks)}, this pruner has {sorted(self.masks)}")
        for name, keep in masks.items():
            if keep.shape != self.masks[name].shape:
                raise ValueError(f"state: mask {name!r} has shape {tuple(keep.shape)}, "
                                 f"the parameter {tuple(self.masks[name].shape)}")
        self.load_extra_state(state)
        self.step = int(state["step"])
        self.masks = {n: masks[n].to(device=p.device, dtype=torch.bool).clone() for n, p in self.params.items()}
        self._pruned_any = not all(bool(m.all()) for m in self.masks.values())
        self.refresh_layers()

    def extra_state(self) -> dict:
        """A method's own resumable state (schedule counters, saved tensors)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def _copy_to_params(self, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Clones of saved tensors on the devices of this pruner's parameters."""
        return {n: saved[n].to(device=self.params[n].device).clone() for n in self.params}


def optimizer_state(optimizer: torch.optim.Optimizer | None, p: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's state tensors that are elementwise companions of ``p`` (same shape, floating point)."""
    if optimizer is None:
        return []
    state = optimizer.state.get(p, {})
    return [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape and v.is_floating_point()]
