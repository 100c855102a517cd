"""The native ops check their own arguments (csrc/check_args.h): a bad call from Python raises an error naming
the argument and index, before any tensor changes; it never reads or writes outside a tensor. The max ops
(rda_max_A, rda_block_max_A) check the steps' arguments the same way, and the steps a given max_A."""

import copy

import pytest
import torch

from sparse_rda import native

pytestmark = [pytest.mark.skipif(not native.has_kernels("cpu"), reason="native extension not built"),
              pytest.mark.triton_free]  # native CPU ops only

SHAPES = [(8, 16), (5,), (16, 32)]
HYPER = [0.5, 1e-3, 0.9, 0.8, 0.3, 1e-4, 500.0]  # lr, lam, beta, beta_b, averaging, weight_decay, max_factor
FLAGS = (True, False)  # reweight, maximize


def rda_lists():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    T = [p.clone() for p in params]
    B, A, v = ([torch.rand(s, generator=gen) for s in SHAPES] for _ in range(3))
    return dict(params=params, grads=grads, T=T, B=B, A=A, v=v, group_means=[None, None, None],
                factors=[1.0, 0.0, 1.0], hyper=HYPER)


def call_rda(a, device_hyper=None, found_inf=None, max_A=None):
    return torch.ops.sparse_rda.rda_step_(a["params"], a["grads"], a["T"], a["B"], a["A"], a["v"], a["group_means"],
                                          a["factors"], a["hyper"], *FLAGS, None, device_hyper, found_inf, max_A)


def call_rda_max_A(a, device_hyper=None, found_inf=None):
    return torch.ops.sparse_rda.rda_max_A(a["params"], a["grads"], a["T"], a["B"], a["A"], a["v"], a["group_means"],
                                          a["factors"], a["hyper"], *FLAGS, None, device_hyper, found_inf)


def refused(call, args, match, **extra):
    """The call raises naming `match`, and every tensor it was given keeps its values."""
    before = copy.deepcopy(args)
    with pytest.raises(RuntimeError, match=match):
        call(args, **extra)
    for key, value in before.items():
        if isinstance(value, list) and value and torch.is_tensor(value[0]):
            for got, want in zip(args[key], value):
                assert torch.equal(got, want), f"{key} changed by a refused call"


def with_item(a, key, index, value):
    a[key] = list(a[key])
    a[key][index] = value
    return a


RDA_CASES = {
    "T of another size": (lambda a: with_item(a, "T", 2, torch.zeros(2, 2)), r"T\[2\] has 4 elements"),
    "grad of another size": (lambda a: with_item(a, "grads", 0, torch.ones(2, 2)), r"grads\[0\] has 4 elements"),
    "state in float64": (lambda a: with_item(a, "B", 1, torch.zeros(5, dtype=torch.float64)),
                         r"B\[1\] must be float32"),
    "a state list too short": (lambda a: {**a, "v": a["v"][:2]}, "v has 2 tensors for 3 params"),
    "grads too short": (lambda a: {**a, "grads": a["grads"][:1]}, "grads has 1 tensors for 3 params"),
    "factors too short": (lambda a: {**a, "factors": [1.0]}, "factors has 1 values for 3 params"),
    "group means not a divisor": (lambda a: with_item(a, "group_means", 2, torch.zeros(3)),
                                  r"group_means\[2\] has 3 values, which does not divide"),
    "group means too few": (lambda a: {**a, "group_means": [None]}, "group_means has 1 entries for 3 params"),
    "hyper too short": (lambda a: {**a, "hyper": HYPER[:6]}, "hyper must hold 7 values"),
    "expanded state": (lambda a: with_item(a, "A", 1, torch.zeros(1).expand(5)), r"A\[1\] has elements that share"),
    "expanded param": (lambda a: with_item(a, "params", 1, torch.zeros(1).expand(5)), r"params\[1\] has elements"),
    "integer param": (lambda a: with_item(a, "params", 1, torch.zeros(5, dtype=torch.int32)), r"params\[1\] has dtype"),
}


@pytest.mark.parametrize("case", list(RDA_CASES))
def test_rda_step_refuses(case):
    make_bad, match = RDA_CASES[case]
    refused(call_rda, make_bad(rda_lists()), match)


def test_a_good_call_still_steps():
    a = rda_lists()
    before = [p.clone() for p in a["params"]]
    nnz = call_rda(a)
    assert nnz.shape == (3,) and not torch.equal(a["params"][0], before[0])


def block_lists(block=(8, 8)):
    a = rda_lists()
    shapes = [(8, 16), (16, 32)]
    a = {k: [v[0], v[2]] for k, v in a.items() if k not in ("group_means", "factors", "hyper")}
    a["occupancy"] = [torch.zeros(-(-r // block[0]), -(-c // block[1]), dtype=torch.bool) for r, c in shapes]
    a["block"] = list(block)
    return a


def call_block(a, device_hyper=None, found_inf=None, max_A=None):
    return torch.ops.sparse_rda.rda_block_step_(a["params"], a["grads"], a["T"], a["B"], a["A"], a["v"],
                                                a["occupancy"], a["block"], HYPER, *FLAGS, None, device_hyper,
                                                found_inf, max_A)


def call_block_max_A(a, device_hyper=None, found_inf=None):
    return torch.ops.sparse_rda.rda_block_max_A(a["params"], a["grads"], a["T"], a["B"], a["A"], a["v"],
                                                a["occupancy"], a["block"], HYPER, *FLAGS, None, device_hyper,
                                                found_inf)


@pytest.mark.parametrize("make_bad, match", [
    (lambda a: with_item(a, "occupancy", 1, torch.zeros(2, 2, dtype=torch.bool)),
     r"occupancy\[1\] must be a bool map of 8"),
    (lambda a: with_item(a, "occupancy", 0, torch.zeros(1, 2)), r"occupancy\[0\] must be a bool map"),
    (lambda a: {**a, "block": [0, 8]}, "block must be two positive tile sides"),
    (lambda a: {**a, "occupancy": a["occupancy"][:1]}, "occupancy has 1 tensors for 2 params"),
    (lambda a: with_item(a, "T", 0, torch.zeros(3)), r"T\[0\] has 3 elements"),
], ids=["map of the wrong size", "map not bool", "zero tile side", "maps too few", "T of another size"])
def test_block_step_refuses(make_bad, match):
    refused(call_block, make_bad(block_lists()), match)


def test_block_step_refuses_a_1d_param():
    a = block_lists()
    for key in ("params", "grads", "T", "B", "A", "v"):
        a[key][0] = a[key][0].flatten()
    refused(call_block, a, r"params\[0\]: block granularity needs 2-D weights")


def nm_lists():
    a = rda_lists()
    a = {k: [v[0], v[2]] for k, v in a.items() if k not in ("group_means", "factors", "hyper")}  # the 2-D ones
    a["nm"], a["hyper"] = [2, 4], HYPER
    return a


def call_nm(a, device_hyper=None, found_inf=None, max_A=None):
    return torch.ops.sparse_rda.rda_nm_step_(a["params"], a["grads"], a["T"], a["B"], a["A"], a["v"], a["nm"],
                                             a["hyper"], *FLAGS, None, device_hyper, found_inf, max_A)


def flattened(a, index):
    """params[index] and its grad and state made 1-D (element mode's tensors, not N:M's)."""
    for key in ("params", "grads", "T", "B", "A", "v"):
        a[key] = list(a[key])
        a[key][index] = a[key][index].flatten()
    return a


NM_RANGE = r"nm must be \[N, M\] with 1 <= N < M <= 32, got "
NM_CASES = {
    "N = 0": (lambda a: {**a, "nm": [0, 4]}, NM_RANGE + r"\[0, 4\]"),
    "N = M": (lambda a: {**a, "nm": [4, 4]}, NM_RANGE + r"\[4, 4\]"),
    "N > M": (lambda a: {**a, "nm": [5, 4]}, NM_RANGE + r"\[5, 4\]"),
    "negative N": (lambda a: {**a, "nm": [-1, 4]}, NM_RANGE + r"\[-1, 4\]"),
    "M over 32": (lambda a: {**a, "nm": [2, 33]}, NM_RANGE + r"\[2, 33\]"),
    "one value": (lambda a: {**a, "nm": [2]}, NM_RANGE + r"\[2\]"),
    "three values": (lambda a: {**a, "nm": [2, 4, 8]}, NM_RANGE + r"\[2, 4, 8\]"),
    "a 1-D param": (lambda a: flattened(a, 1), r"params\[1\]: N:M granularity needs weights of 2\+ dims, got shape"),
    "T too short": (lambda a: {**a, "T": a["T"][:1]}, "T has 1 tensors for 2 params"),
    "grads too short": (lambda a: {**a, "grads": a["grads"][:1]}, "grads has 1 tensors for 2 params"),
    "T of another size": (lambda a: with_item(a, "T", 1, torch.zeros(2, 2)), r"T\[1\] has 4 elements"),
    "state in float64": (lambda a: with_item(a, "B", 1, torch.zeros(16, 32, dtype=torch.float64)),
                         r"B\[1\] must be float32"),
    "integer grad": (lambda a: with_item(a, "grads", 0, torch.zeros(8, 16, dtype=torch.int32)),
                     r"grads\[0\] must be floating"),
    "integer param": (lambda a: with_item(a, "params", 1, torch.zeros(16, 32, dtype=torch.int32)),
                      r"params\[1\] has dtype"),
    "expanded state": (lambda a: with_item(a, "A", 1, torch.zeros(1, 1).expand(16, 32)),
                       r"A\[1\] has elements that share"),
    "hyper too short": (lambda a: {**a, "hyper": HYPER[:6]}, "hyper must hold 7 values"),
}


@pytest.mark.parametrize("case", list(NM_CASES))
def test_nm_step_refuses(case):
    make_bad, match = NM_CASES[case]
    refused(call_nm, make_bad(nm_lists()), f"rda_nm_step_: {match}")


def test_a_good_nm_call_still_steps():
    a = nm_lists()
    before = [p.clone() for p in a["params"]]
    nnz = call_nm(a)
    assert nnz.tolist() == [int((p != 0).sum()) for p in a["params"]] and not torch.equal(a["params"][0], before[0])
    assert all(int((p.reshape(-1, 4) != 0).sum(1).max()) <= 2 for p in a["params"])


def grda_lists():
    a = rda_lists()
    return dict(params=a["params"], grads=a["grads"], acc=a["T"], thresholds=torch.tensor([0.1, 0.0, 0.1]))


def call_grda(a, lr_device=None):
    return torch.ops.sparse_rda.grda_step_(a["params"], a["grads"], a["acc"], a["thresholds"], 0.1, lr_device, None,
                                           None)


@pytest.mark.parametrize("make_bad, match", [
    (lambda a: with_item(a, "acc", 0, torch.zeros(3)), r"acc\[0\] has 3 elements"),
    (lambda a: {**a, "thresholds": torch.tensor([0.1])}, "thresholds has 1 values for 3 params"),
    (lambda a: with_item(a, "grads", 2, torch.zeros(16, 31)), r"grads\[2\] has 496 elements"),
    (lambda a: {**a, "thresholds": torch.tensor([1, 0, 1])}, "thresholds must be floating, got Long"),
], ids=["acc of another size", "thresholds too few", "grad of another size", "integer thresholds"])
def test_grda_step_refuses(make_bad, match):
    refused(call_grda, make_bad(grda_lists()), match)


def test_grda_step_refuses_an_empty_device_lr():
    refused(call_grda, grda_lists(), "lr_device must hold at least 1 values", lr_device=torch.zeros(0))


# The step ops as (call, lists), for the checks they share
STEPS = {"rda_step_": (call_rda, rda_lists), "rda_block_step_": (call_block, block_lists),
         "rda_nm_step_": (call_nm, nm_lists)}

# The device form's arguments, the same on every RDA op: 8 values (rda_math.h), floating, and
# found_inf only beside it
DEVICE_FORM_CASES = {
    "the four values of the first release": (dict(device_hyper=torch.tensor([0.5, 0.3, 0.9, 0.8])),
                                   r"device_hyper must hold at least 8 values \[lr, averaging, beta, beta_b, lam, "
                                   r"1 - averaging, 1 - beta, 1 - beta_b\], got 4"),
    "one value": (dict(device_hyper=torch.tensor([0.5])), "device_hyper must hold at least 8 values"),
    "integer values": (dict(device_hyper=torch.tensor([1, 0, 1, 1, 0, 1, 0, 0], dtype=torch.int32)),
                       "device_hyper must be floating, got Int"),
    "found_inf without device_hyper": (dict(found_inf=torch.zeros(())), "found_inf is only read with device_hyper"),
    "empty found_inf": (dict(device_hyper=torch.tensor([0.5, 0.3, 0.9, 0.8, 1e-3, 0.7, 0.1, 0.2]),
                             found_inf=torch.zeros(0)),
                        "found_inf must hold at least 1 values"),
}


@pytest.mark.parametrize("case", list(DEVICE_FORM_CASES))
@pytest.mark.parametrize("op", list(STEPS))
def test_device_form_is_checked(op, case):
    extra, match = DEVICE_FORM_CASES[case]
    call, lists = STEPS[op]
    refused(call, lists(), f"{op}: {match}", **extra)


@pytest.mark.parametrize("op", list(STEPS))
def test_a_good_device_form_call_still_steps(op):
    call, lists = STEPS[op]
    a = lists()
    before = [p.clone() for p in a["params"]]
    nnz = call(a, device_hyper=torch.tensor([0.5, 0.3, 0.9, 0.8, 1e-3, 0.7, 0.1, 0.2]), found_inf=torch.zeros(()))
    assert nnz.shape == (len(before),) and not torch.equal(a["params"][0], before[0])


# A given max_A (the steps' last argument): one floating value per param, on the params' device
MAX_A_CASES = {
    "too few": (lambda n: torch.ones(n - 1), r"max_A has {m} values for {n} params"),
    "too many": (lambda n: torch.ones(n + 1), r"max_A has {m} values for {n} params"),
    "integer": (lambda n: torch.ones(n, dtype=torch.int32), "max_A must be floating, got Int"),
    "bool": (lambda n: torch.ones(n, dtype=torch.bool), "max_A must be floating, got Bool"),
    "on the meta device": (lambda n: torch.ones(n, device="meta"), "max_A is on meta, params on cpu"),
}
if native.has_kernels("cuda") and torch.cuda.is_available():  # the CUDA op gets the call, and refuses it
    MAX_A_CASES["on a GPU"] = (lambda n: torch.ones(n, device="cuda"), "max_A is on cuda:0, params on cpu")


@pytest.mark.parametrize("case", list(MAX_A_CASES))
@pytest.mark.parametrize("op", list(STEPS))
def test_a_given_max_A_is_checked(op, case):
    call, lists = STEPS[op]
    a = lists()
    make, match = MAX_A_CASES[case]
    max_A = make(len(a["params"]))
    refused(call, a, f"{op}: " + match.format(m=max_A.numel(), n=len(a["params"])), max_A=max_A)


@pytest.mark.parametrize("op", list(STEPS))
def test_a_good_max_A_in_any_floating_dtype_shape_or_layout_steps_alike(op):
    call, lists = STEPS[op]
    n = len(lists()["params"])
    values = torch.tensor([1.5, 0.0, 2.0])[:n]
    results = []
    for max_A in (values, values.double().reshape(n, 1), torch.stack([values, 7 * values], 1)[:, 0]):
        a = lists()
        call(a, max_A=max_A)
        results.append(a)
    for a in results[1:]:
        for key in ("params", "B"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], results[0][key])), key


# The max ops take the steps' arguments and check them the same way, naming themselves
@pytest.mark.parametrize("case", ["T of another size", "factors too short", "group means not a divisor",
                                  "hyper too short", "integer param"])
def test_rda_max_A_refuses(case):
    make_bad, match = RDA_CASES[case]
    refused(call_rda_max_A, make_bad(rda_lists()), f"rda_max_A: {match}")


@pytest.mark.parametrize("make_bad, match", [
    (lambda a: with_item(a, "occupancy", 1, torch.zeros(2, 2, dtype=torch.bool)),
     r"occupancy\[1\] must be a bool map of 8"),
    (lambda a: {**a, "block": [0, 8]}, "block must be two positive tile sides"),
    (lambda a: with_item(a, "A", 0, torch.zeros(3)), r"A\[0\] has 3 elements"),
], ids=["map of the wrong size", "zero tile side", "A of another size"])
def test_rda_block_max_A_refuses(make_bad, match):
    refused(call_block_max_A, make_bad(block_lists()), f"rda_block_max_A: {match}")


@pytest.mark.parametrize("case", list(DEVICE_FORM_CASES))
@pytest.mark.parametrize("op", ["rda_max_A", "rda_block_max_A"])
def test_the_max_ops_device_form_is_checked(op, case):
    extra, match = DEVICE_FORM_CASES[case]
    call, lists = (call_rda_max_A, rda_lists) if op == "rda_max_A" else (call_block_max_A, block_lists)
    refused(call, lists(), f"{op}: {match}", **extra)


@pytest.mark.parametrize("op", ["rda_max_A", "rda_block_max_A"])
def test_a_good_max_op_call_writes_nothing(op):
    call, lists = (call_rda_max_A, rda_lists) if op == "rda_max_A" else (call_block_max_A, block_lists)
    a = lists()
    before = copy.deepcopy(a)
    max_A = call(a)
    assert max_A.dtype == torch.float32 and max_A.shape == (len(a["params"]),) and bool((max_A > 0).any())
    for key, value in before.items():
        if isinstance(value, list) and value and torch.is_tensor(value[0]):
            assert all(torch.equal(x, y) for x, y in zip(a[key], value)), f"{key} written by the max op"
    skipped = call(a, device_hyper=torch.tensor([0.5, 0.3, 0.9, 0.8, 1e-3, 0.7, 0.1, 0.2]), found_inf=torch.ones(()))
    assert torch.equal(skipped, torch.zeros_like(max_A)), "a skipped step has no max"
