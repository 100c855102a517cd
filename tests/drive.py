"""Run an optimizer and the spec oracle side by side on the same gradients."""

from __future__ import annotations

import torch

from helpers import make_params  # noqa: F401  (the tests driving the spec take their params from here)
from spec import grda_spec_step, rda_spec_step

RDA_GROUP_KEYS = ("lr", "lam", "momentum_time", "reweight_time", "max_factor", "reweight", "averaging",
                  "weight_decay", "granularity", "sparsify_1d", "maximize")


def clones(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def sync_spec(opt, params, spec_params, spec_states):
    """Give the spec the optimizer's current weights and state, so the next step starts from the same inputs.
    Returns those inputs per tensor (fp32 weights as "w", and the state tensors), for error scales."""
    inputs = []
    for p, q, st in zip(params, spec_params, spec_states):
        q.data.copy_(p.data)
        st.clear()  # (an empty state tells the spec to initialise it)
        # the spec works in Python numbers: scalar counters (gRDA's step and l1 are float64 tensors) become floats
        st.update({k: (v.clone() if v.dim() else v.item()) if isinstance(v, torch.Tensor) else v
                   for k, v in opt.state[p].items()})
        inputs.append({"w": p.detach().float().clone(), **{k: v for k, v in st.items() if isinstance(v, torch.Tensor)}})
    return inputs


def run_side_by_side(opt_cls, params, steps, *, group_kwargs=None, before_step=None, check=None, skip=(),
                     backend="torch"):
    """Steps the optimizer over `params` and the spec over copies of them with identical gradients.

    Each step starts both from the same weights and state (the optimizer's), and check(opt, spec_params,
    spec_states, inputs) then compares that one step: every one of `steps` steps is checked at full precision, and
    fp32 rounding differences do not compound through the threshold's discontinuity.
    before_step(k, opt) may change hyper-parameters (schedules, lr changes); the spec reads them from the
    optimizer's group. Tensors whose index is in `skip` get no gradient on odd steps.
    Returns (opt, spec_params, spec_states)."""
    opt = opt_cls(params, backend=backend, **(group_kwargs or {}))
    spec_params = clones(params)
    spec_states = [{} for _ in params]
    for k in range(steps):
        if before_step:
            before_step(k, opt)
        inputs = sync_spec(opt, params, spec_params, spec_states)
        group = opt.param_groups[0]
        for i, (p, q) in enumerate(zip(params, spec_params)):
            if i in skip and k % 2:
                p.grad = None
                continue
            g = torch.randn(p.shape).to(p.dtype)
            p.grad = g.clone()
            if opt_cls.__name__ == "RDA":
                rda_spec_step(q, g, spec_states[i], penalize=group.get("penalize", True),
                              **{key: group[key] for key in RDA_GROUP_KEYS})
            else:
                grda_spec_step(q, g, spec_states[i], lr=group["lr"], c=group["c"], mu=group["mu"],
                               penalize=group.get("penalize", True))
        opt.step()
        if check:
            check(opt, spec_params, spec_states, inputs)
    return opt, spec_params, spec_states
