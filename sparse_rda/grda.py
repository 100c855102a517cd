"""gRDA: generalized regularized dual averaging for directional pruning (Chao et al. 2020)."""

from __future__ import annotations

import warnings

import torch

from . import dispatch, reference
from .optimizer import SparseOptimizer
from .validation import check_number


class GRDA(SparseOptimizer):
    r"""gRDA (docs/ALGORITHMS.md section 2): an l1 threshold that grows with the accumulated step size.

    Per tensor: a float32 accumulator ``acc`` (initialised to the weights), a step count ``n`` (steps in which
    the tensor had a gradient) and the threshold ``l1`` (a host float)::

        acc = acc - lr * grad
        l1  = l1 + c * lr^(mu + 1/2) * (n^mu - (n - 1)^mu)
        w   = sign(acc) * max(|acc| - l1, 0)

    A learning-rate change slows the threshold growth; it does not reset it. ``c = 0`` is plain SGD.
    Every tensor is thresholded (as in the authors' code) unless its param group sets ``penalize=False``.

    Args:
        lr: step size (as for plain SGD).
        c: threshold scale; the paper recommends 0 < c < 0.005.
        mu: threshold growth exponent in (0.5, 1]; the paper recommends 0.501, 0.51 or 0.55.
        backend: "auto", "torch" (the reference), or a kernel backend (see ``sparse_rda.backends()``).
    """

    def __init__(self, params, lr: float = 0.01, c: float = 0.0, mu: float = 0.7, backend: str = "auto"):
        super().__init__(params, dict(lr=lr, c=c, mu=mu, backend=backend))

    def _check_hyper(self, group: dict) -> None:
        check_number("lr", group["lr"])
        check_number("c", group["c"])
        check_number("mu", group["mu"], low_open=True)
        if not isinstance(group.get("penalize", True), bool):
            raise TypeError(f"penalize must be a bool, got {group['penalize']!r}")

    def _warn_hyper(self, group: dict) -> None:
        if not 0.5 < group["mu"] <= 1.0:
            warnings.warn(f"mu={group['mu']} is outside the paper's range (0.5, 1]", stacklevel=4)

    def _group_step(self, group: dict, backend: str, params: list[torch.Tensor], grad_scale) -> torch.Tensor | None:
        lr, c, mu = float(group["lr"]), float(group["c"]), float(group["mu"])
        thresholds = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(step=0, l1=0.0, acc=p.detach().to(torch.float32, copy=True))
            state["step"] += 1
            if self._is_penalized(group, p):
                state["l1"] += reference.grda_threshold_increment(c, lr, mu, state["step"])
            thresholds.append(state["l1"])
        return dispatch.implementation(backend).grda_step(
            params, [p.grad for p in params], [self.state[p]["acc"] for p in params], lr=lr, thresholds=thresholds,
            grad_scale=grad_scale,
        )
