"""gRDA: generalized regularized dual averaging for directional pruning (Chao et al. 2020)."""

from __future__ import annotations

import warnings

import torch

from . import reference, sharded, step, target
from .optimizer import SparseOptimizer
from .scalars import grda_scalars
from .validation import check_hyper_value, check_number


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
        lr: step size (as for plain SGD); a float or a one-element tensor, read on the host outside capturable mode.
        c: threshold scale; the paper recommends 0 < c < 0.005.
        mu: threshold growth exponent in (0.5, 1]; the paper recommends 0.501, 0.51 or 0.55.
        backend: "auto" (the native kernels where built, else Triton on CUDA and the reference on CPU; see
            sparse_rda/dispatch.py), "torch" (the reference), or a kernel backend (``sparse_rda.backends()``).
        capturable: the step waits on nothing from the host, for CUDA graphs (kernel backends only): ``lr`` may be a
            one-element device tensor, and step counts and thresholds are float64 device scalars updated on the
            device (so they match the host path to float64 rounding, not bit for bit).
        target_sparsity: reach this fraction of zeros over the group's penalized tensors by ``total_steps``
            without tuning ``c``: ``c`` (> 0) becomes the starting value of a controller that, at most every
            ``total_steps // 200`` steps, snaps the weights onto a cubic ramp to the target, reached at 75% of
            training and held to the end, and re-sets ``c`` (rescaling the accumulated ``l1`` with it)
            (sparse_rda/target.py). A few host syncs per control step.
        total_steps: the training length in steps; required with ``target_sparsity``.
    """

    def __init__(self, params, lr: float = 0.01, c: float = 0.0, mu: float = 0.7, backend: str = "auto",
                 capturable: bool = False, target_sparsity: float | None = None, total_steps: int | None = None):
        super().__init__(params, dict(lr=lr, c=c, mu=mu, backend=backend, capturable=capturable,
                                      target_sparsity=target_sparsity, total_steps=total_steps))

    _HOST_SCALARS = ("step", "l1")
    _HOLD_GAIN = 1.0  # l1 does not depend on the weights: the last quantile is the best scale to hold (target.py)

    _CORE_OPTIONS = ("lr", "c", "mu")

    def _check_hyper(self, group: dict) -> None:
        check_hyper_value("lr", group["lr"], self._capturable(group))
        check_number("c", group["c"])
        check_number("mu", group["mu"], low_open=True)
        if group.get("target_sparsity") is not None and group["c"] <= 0:
            raise ValueError(f"c must be > 0 with target_sparsity (the controller rescales it), got {group['c']}")

    def _warn_hyper(self, group: dict) -> None:
        if not 0.5 < group["mu"] <= 1.0:
            warnings.warn(f"mu={group['mu']} is outside the paper's range (0.5, 1]", stacklevel=4)

    def _state_layout(self, group: dict, p: torch.Tensor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"acc": (tuple(p.shape), torch.float32)}

    def _group_step(self, group: dict, backend, params: list[torch.Tensor], grad_scale, found_inf):
        for p in params:
            if not self.state[p]:
                self.state[p].update(self._initial_state(p, self._capturable(group)))
        scalars = grda_scalars(group, grad_scale, found_inf, self._on_device(group), params[0].device)
        plans, buckets = self._step_plan(group, params)
        counters = self._scalar_rows(params, ("step", "l1"))
        advanced = self._advance_thresholds(group, plans, counters, scalars, found_inf)
        local = sharded.local_lister(params)  # (DTensors: each rank steps its own shards; nothing global but nnz)
        tensors = step.GrdaTensors(local(params), local([p.grad for p in params]),
                                   local([self.state[p]["acc"] for p in params]), thresholds=advanced[:, 1].float())
        counts = step.run(backend.grda_step, tensors, buckets, scalars)
        counters.copy_(advanced)  # after the update: a refused call leaves the counters as they were
        return counts

    @staticmethod
    def _initial_state(p: torch.Tensor, capturable: bool) -> dict:
        """acc = w; the step count n and the threshold l1 as float64 scalars, on the device in capturable mode and
        on the host otherwise: tensors, not Python numbers, so that torch.compile traces their updates instead of
        specializing on their values."""
        device = p.device if capturable else torch.device("cpu")
        return dict(step=torch.zeros((), dtype=torch.float64, device=device),
                    l1=torch.zeros((), dtype=torch.float64, device=device),
                    acc=p.detach().to(torch.float32, copy=True))

    def _advance_thresholds(self, group, plans, counters, scalars, found_inf) -> torch.Tensor:
        """The group's (step, l1) rows one step on: n + 1 and, for penalized tensors, l1 + c lr^(mu+1/2)
        (n^mu - (n-1)^mu), as a few ops on a copy of ``counters``. c is used as it is (a number that changes,
        under target_sparsity, stays symbolic under torch.compile; float() would specialize it)."""
        counters = counters.clone()
        n = counters[:, 0]
        self._count_steps(n, found_inf)
        lr = scalars.lr if scalars.lr_device is None else scalars.lr_device.double()
        growth = reference.grda_threshold_increment(group["c"], lr, float(group["mu"]), n)
        if not all(plan.penalized for plan in plans):
            growth = growth * step.constant(tuple(float(plan.penalized) for plan in plans), torch.float64, n.device)
        if found_inf is not None:
            growth = growth * (1 - found_inf).double().to(n.device)  # (host counters in a traced step)
        counters[:, 1].add_(growth)
        return counters

    def _zero_ratios(self, group: dict, p: torch.Tensor):
        """An element is zero when |acc| <= l1 = c * (l1 / c)."""
        state = self.state[p]
        unit = (state["l1"] / group["c"]).to(device=p.device, dtype=torch.float32)
        acc = sharded.local(state["acc"])
        return target.zero_ratio(acc.abs(), unit.expand_as(acc)), None

    def _set_threshold_scale(self, group: dict, penalized: list[torch.Tensor], scale: float) -> None:
        """c := scale, and every accumulated l1 with it (l1 is linear in c). In place: the l1 entries may be views
        of the rows a step updates together (_scalar_rows), which must see the new values."""
        if scale <= 0:  # only when every accumulator is 0: nothing to steer
            return
        for p in penalized:
            self.state[p]["l1"].mul_(scale / group["c"])
        group["c"] = scale

    def _threshold_scale(self, group: dict) -> float:
        return float(group["c"])

    def _apply_threshold(self, group: dict, penalized: list[torch.Tensor]) -> None:
        """w = S(acc, l1)."""
        for p in penalized:
            state = self.state[p]
            acc = sharded.local(state["acc"])
            sharded.local(p).copy_(reference.soft_threshold(acc, state["l1"].to(acc.device, torch.float32)))
