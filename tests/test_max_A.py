"""The contract's rda_max_A and a step given max_A (sparse_rda/step.py), on every backend: the maxes are the ones
the step takes itself, bit for bit, and a step given other maxes reweights with them. (A sharded tensor's step
is given the max over all ranks: sparse_rda/sharded.py.)"""

import math

import pytest
import torch

from helpers import backend_devices, contract_inputs, rda_contract_call, row_scaled_grads

HYPER = dict(lr=0.7, lam=2e-2, beta=0.9, beta_b=0.8, averaging=0.3, weight_decay=1e-3, max_factor=50.0,
             reweight=True, maximize=False)
CASES = {  # granularity -> (shapes, penalized)
    "element": ([(17, 23), (5,), (3, 4, 3, 3)], [True, False, True]),
    "kernel": ([(6, 5, 3, 3), (7, 2)], [True, True]),
    "channel": ([(6, 5, 3, 3), (9,)], [True, False]),
    ("block", 4, 8): ([(13, 21), (8, 16)], [True, True]),
}


def expected_max(params, A, granularity, penalized):
    """max over finite values of beta_b A + (1 - beta_b) a, per tensor, in float64 (0 when unpenalized)."""
    from sparse_rda import plan, reference

    maxes = []
    for p, A_i, pen in zip(params, A, penalized):
        tensor_plan = plan.tensor_plan(p.shape, granularity, pen)
        if not pen:
            maxes.append(0.0)
            continue
        A_i = reference._tile_values(A_i, tensor_plan) if tensor_plan.tiled else A_i
        a = reference.magnitude(p.float(), tensor_plan)
        new = HYPER["beta_b"] * A_i.double() + (1 - HYPER["beta_b"]) * a.double()
        maxes.append(float(torch.where(torch.isfinite(new), new, 0.0).max()))
    return torch.tensor(maxes, dtype=torch.float64)


def inputs(granularity, device, nonfinite=False):
    shapes, penalized = CASES[granularity]
    w, T, B, A, v, maps = contract_inputs(shapes, granularity, device, fresh=False)
    if nonfinite:  # one NaN and one inf A: the max is over the finite values
        A[0].view(-1)[3] = math.nan
        A[0].view(-1)[-1] = math.inf
    grads = [g.to(device) for g in row_scaled_grads(w, torch.Generator().manual_seed(1))]
    return dict(params=w, grads=grads, T=T, B=B, A=A, v=v, occupancy=maps), penalized


def call(backend, tensors, granularity, penalized, **extra):
    return rda_contract_call(backend, tensors["params"], tensors["grads"], tensors["T"], tensors["B"], tensors["A"],
                             tensors["v"], occupancy=tensors["occupancy"], penalized=penalized,
                             granularity=granularity, **HYPER, **extra)


def identical(xs, ys) -> bool:
    """Bit for bit, NaN where NaN."""
    return all(x.dtype == y.dtype and torch.equal(torch.isnan(x), torch.isnan(y))
               and torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0)) for x, y in zip(xs, ys))


def copied(tensors):
    return {k: None if v is None else [x.clone() for x in v] for k, v in tensors.items()}


@pytest.mark.parametrize("granularity", list(CASES), ids=str)
@pytest.mark.parametrize("backend_device", backend_devices())
def test_max_A_is_the_steps_own(backend_device, granularity):
    """rda_max_A writes nothing and returns the max beta_b A + (1 - beta_b) a (finite values; 0 unpenalized); a
    step given those maxes equals a step that finds them itself, bit for bit."""
    backend, device = backend_device
    tensors, penalized = inputs(granularity, device, nonfinite=granularity == "element")
    before = copied(tensors)
    maxes = call(backend, tensors, granularity, penalized, function="rda_max_A")
    assert maxes.dtype == torch.float32 and maxes.device.type == device and maxes.shape == (len(penalized),)
    for key, values in tensors.items():
        assert values is None or identical(values, before[key]), f"{key} was written"
    torch.testing.assert_close(maxes.double().cpu(), expected_max(tensors["params"], tensors["A"], granularity,
                                                                  penalized), rtol=2.4e-7, atol=0)
    given = copied(tensors)
    counts = call(backend, given, granularity, penalized, max_A=maxes)
    own_counts = call(backend, tensors, granularity, penalized)
    for key, values in tensors.items():
        assert values is None or identical(values, given[key]), f"{key}: a step given its own max differs"
    if counts is not None:
        assert torch.equal(counts, own_counts)


@pytest.mark.parametrize("granularity", ["element", "channel", ("block", 4, 8)], ids=str)
@pytest.mark.parametrize("backend_device", backend_devices())
def test_a_given_max_reweights_with_it(backend_device, granularity):
    """Given twice the true maxes (what another rank's larger weights would make them), the step's B is the
    reference's with those maxes."""
    backend, device = backend_device
    tensors, penalized = inputs(granularity, device)
    maxes = 2 * call("torch", copied(tensors), granularity, penalized, function="rda_max_A")
    expected = copied(tensors)
    call("torch", expected, granularity, penalized, max_A=maxes.to(device))
    call(backend, tensors, granularity, penalized, max_A=maxes.to(device))
    for key in ("B", "T", "params"):
        for x, y in zip(tensors[key], expected[key]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    own = copied(tensors)
    call("torch", own, granularity, penalized)
    assert not all(torch.equal(x, y) for x, y in zip(own["B"], expected["B"])), "the given max changed nothing"


@pytest.mark.parametrize("backend_device", backend_devices("triton", "torch"))
def test_a_max_A_of_the_wrong_size_is_refused(backend_device):
    backend, device = backend_device
    if backend == "torch":
        pytest.skip("the reference indexes max_A (an IndexError); the kernels check it")
    tensors, penalized = inputs("element", device)
    before = copied(tensors)
    with pytest.raises(ValueError, match="max_A must hold 3"):
        call(backend, tensors, "element", penalized, max_A=torch.ones(2, device=device))
    for key, values in tensors.items():
        assert values is None or identical(values, before[key])
