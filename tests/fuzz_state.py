"""Random bad state through load_state_dict and step, on every CPU backend (run by tests/test_fuzz_state.py in a
subprocess, so that a crash in a native kernel fails that test instead of killing the test run).

Each example builds an optimizer, steps it, damages one thing (a state entry of a checkpoint, a state entry in
``opt.state``, or a grad: wrong shape, dtype, device, layout, a missing key, a non-tensor, NaN/inf, an expanded
view, a transposed view), and loads and steps. The outcome must be a clean step, or a ValueError / TypeError /
RuntimeError with every param, grad and state value as before the failed call.

    python tests/fuzz_state.py --examples 300 [--seed N]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import sparse_rda  # noqa: E402
from test_bad_input import assert_untouched, snapshot  # noqa: E402

BACKENDS = [b for b in ("torch", "cpu", "triton") if b in sparse_rda.backends()]
SHAPES = [(5, 7), (3, 2, 3, 3), (4,)]
KEYS = ["T", "B", "A", "v", "acc", "occupancy", "step", "l1", "extra"]
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError)


def damaged(value, how: str, data):
    """``value`` (the entry, maybe missing: None) made bad in the way ``how``; ``MISSING`` to delete it."""
    like = value if isinstance(value, torch.Tensor) else torch.zeros(5, 7)
    if how == "shape":
        return torch.zeros(data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)), dtype=like.dtype)
    if how == "dtype":
        return like.to(data.draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                                  torch.bool, torch.complex64])))
    if how == "meta":
        return torch.empty_like(like, device="meta")
    if how == "sparse":
        return like.to_sparse() if like.dim() >= 1 else like
    if how == "missing":
        return MISSING
    if how == "not a tensor":
        return data.draw(st.sampled_from([None, "0.5", [0.0], 3, 2.5, True, float("nan")]))
    if how in ("nan", "inf"):
        bad = like.clone().float() if like.is_floating_point() else like.clone()
        if bad.is_floating_point() and bad.numel():
            bad.view(-1)[data.draw(st.integers(0, bad.numel() - 1))] = math.nan if how == "nan" else -math.inf
        return bad
    if how == "expanded":
        return like.flatten()[:1].expand(like.shape) if like.numel() else like
    if how == "transposed":  # same shape and values, not contiguous: a valid state
        return like.t().contiguous().t() if like.dim() == 2 else like
    raise ValueError(how)


MISSING = object()
HOWS = ["shape", "dtype", "meta", "sparse", "missing", "not a tensor", "nan", "inf", "expanded", "transposed"]


def build(opt_name, granularity, backend):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in SHAPES]
    if opt_name == "RDA":
        opt = sparse_rda.RDA(params, lr=0.1, lam=1e-2, granularity=granularity, backend=backend)
    else:
        opt = sparse_rda.GRDA(params, lr=0.1, c=1e-2, mu=0.55, backend=backend)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return opt, params


@st.composite
def cases(draw):
    opt_name = draw(st.sampled_from(["RDA", "GRDA"]))
    granularity = draw(st.sampled_from(["element", "kernel", ("block", 2, 4)])) if opt_name == "RDA" else "element"
    return dict(opt_name=opt_name, granularity=granularity, backend=draw(st.sampled_from(BACKENDS)),
                route=draw(st.sampled_from(["checkpoint", "opt.state", "grad"])),
                index=draw(st.integers(0, len(SHAPES) - 1)), key=draw(st.sampled_from(KEYS)),
                how=draw(st.sampled_from(HOWS)))


def damage(case, opt, params, data):
    """Applies the case's damage; returns the state dict to load (checkpoint route) or None."""
    p = params[case["index"]]
    if case["route"] == "checkpoint":
        saved = copy.deepcopy(opt.state_dict())
        state = saved["state"][case["index"]]
        bad = damaged(state.get(case["key"]), case["how"], data)
        state.pop(case["key"], None) if bad is MISSING else state.__setitem__(case["key"], bad)
        return saved
    if case["route"] == "opt.state":
        bad = damaged(opt.state[p].get(case["key"]), case["how"], data)
        opt.state[p].pop(case["key"], None) if bad is MISSING else opt.state[p].__setitem__(case["key"], bad)
        return None
    bad = damaged(p.grad, case["how"], data)
    if bad is MISSING:
        p.grad = None
    else:
        p.grad.data = bad  # .data skips autograd's own checks, as a careless caller can
    return None


def check_one(case, data) -> str:
    opt, params = build(case["opt_name"], case["granularity"], case["backend"])
    try:
        saved = damage(case, opt, params, data)
    except Exception:  # torch itself refuses this damage (e.g. a grad of another layout through .data)
        return "torch refused the damage"
    call = "load_state_dict"
    snap = snapshot(opt, params)
    try:
        if saved is not None:
            opt.load_state_dict(saved)
            snap = snapshot(opt, params)  # loaded: the step must now run cleanly or fail cleanly
        call = "step"
        opt.step()
    except CLEAR_ERRORS as err:
        assert str(err), f"{case}: {type(err).__name__} without a message"
        assert_untouched(opt, params, snap)
        return f"refused at {call}"
    except Exception as err:
        raise AssertionError(f"{case}: unclear error at {call}: {type(err).__name__}: {err}") from err
    return "stepped"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="explore other examples (default: derandomized)")
    args = parser.parse_args(argv)
    outcomes: dict[str, int] = {}

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=args.seed is None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=cases(), data=st.data())
    def fuzz(case, data):
        outcome = check_one(case, data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    if args.seed is not None:
        fuzz = __import__("hypothesis").seed(args.seed)(fuzz)
    fuzz()
    print("outcomes:", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
