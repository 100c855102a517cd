"""Pruning baselines: mask-based sparse training that works with any torch optimizer (docs/ALGORITHMS.md, section 4).

Every method is a :class:`Pruner`: one bool mask per prunable parameter (by default the
tensors ``sparse_rda.param_groups`` penalizes: Linear, Conv, attention and
RNN weights), keyed by the parameter's name in ``model.named_parameters()``.
Pruned weights are zeros in the dense weight tensors, and their optimizer state (every tensor of the weight's
shape in ``optimizer.state[p]``: SGD's momentum, Adam's moments, ...) is zeroed with them. A weight held by a
:class:`sparse_rda.SparseLinear` gets its tile map pointed at the mask after every mask change, so the masked
matmul skips the tiles the mask empties.

All methods share one training-loop protocol::

    from sparse_rda import pruning

    pruner = pruning.make("gmp", model, sparsity=0.95, total_steps=N)   # any name in pruning.METHODS
    for step in range(N):
        loss = criterion(model(x), y) + pruner.penalty()   # HALO's term; 0.0 for the others
        opt.zero_grad()
        loss.backward()
        pruner.before_step(opt)    # SNIP scores, RigL reads dense grads, cyclical restores dense values
        opt.step()
        pruner.after_step(opt)     # the schedule: update masks, zero pruned weights and their optimizer state
        lr = schedule(pruner.lr_step(step + 1))   # next step's lr; IMP replays the schedule each round
    pruner.finalize(opt)           # HALO's final prune; nothing for the others
    pruner.sparsity()              # fraction of zeros over the prunable weights

Methods (``make`` name: class): ``"magnitude"``: :class:`MagnitudePruner` (one-shot), ``"gmp"``: :class:`GMP`,
``"cyclical"``: :class:`CyclicalPruner`, ``"imp-weight"`` / ``"imp-lr"``: :class:`IMP` with weight or
learning-rate rewinding, ``"rigl"``: :class:`RigL`, ``"set"``: :class:`SET`, ``"snip"``: :class:`SNIP`,
``"halo"``: :class:`HALO`, ``"sr-ste"``: :class:`SRSTE` (N:M from scratch). Each ends training at ``sparsity``
over the prunable weights (to the rounding of one element per tensor for the per-layer methods). Their docstrings
give the paper, the defaults and why.

N:M patterns: every method but RigL and SET takes ``pattern="2:4"`` (or (2, 4)): its masks end inside the
pattern, at most N kept weights in each group of M consecutive ones along a row (``sparsity >= 1 - N/M``), e.g.
``pruning.make("gmp", model, sparsity=0.5, total_steps=N, pattern="2:4")`` for gradual N:M magnitude pruning.

Resuming: save ``pruner.state_dict()`` with the model's and optimizer's; to resume, build the model, optimizer and
pruner as before, then load the model, the optimizer, and last the pruner.

The mask API on its own: ``Pruner(model, sparsity, total_steps)`` holds all-True masks that only
``set_masks({name: keep}, optimizer)`` changes; ``after_step`` keeps the pruned weights at zero.

Also public: :func:`erk_densities` (RigL's layer densities), :func:`magnitude_masks`, :func:`top_k_masks`, and the
schedules in :mod:`sparse_rda.pruning.schedules`.
"""

from __future__ import annotations

from ..validation import check_choice
from . import schedules
from .base import Pruner, prunable_parameters
from .dynamic import SET, RigL
from .halo import HALO, halo_penalty
from .imp import IMP
from .magnitude import GMP, CyclicalPruner, MagnitudePruner
from .select import erk_densities, magnitude_masks, top_k_masks
from .snip import SNIP
from .srste import SRSTE

_FACTORIES = {
    "magnitude": MagnitudePruner,
    "gmp": GMP,
    "cyclical": CyclicalPruner,
    "imp-weight": lambda *args, **kwargs: IMP(*args, rewind="weight", **kwargs),
    "imp-lr": lambda *args, **kwargs: IMP(*args, rewind="lr", **kwargs),
    "rigl": RigL,
    "set": SET,
    "snip": SNIP,
    "halo": HALO,
    "sr-ste": SRSTE,
}
METHODS = tuple(_FACTORIES)


def make(name: str, model, sparsity: float, total_steps: int, **method_kwargs) -> Pruner:
    """The pruner called ``name`` (one of :data:`METHODS`) for ``model``, ending at ``sparsity`` after
    ``total_steps`` optimizer steps; ``method_kwargs`` go to the method's class."""
    check_choice("name", name, METHODS)
    return _FACTORIES[name](model, sparsity, total_steps, **method_kwargs)


__all__ = ["METHODS", "make", "Pruner", "MagnitudePruner", "GMP", "CyclicalPruner", "IMP", "RigL", "SET", "SNIP",
           "HALO", "SRSTE", "erk_densities", "magnitude_masks", "top_k_masks", "halo_penalty", "prunable_parameters",
           "schedules"]
