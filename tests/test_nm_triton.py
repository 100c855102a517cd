"""N:M granularity in the Triton kernels (kernels/rda_nm_step.py) against the reference, on CPU through the
interpreter, and on GPU when present: the element update plus the top N of each group of M along a row, ragged
rows, ties and NaN, the counts, the device form and a given max_A."""

import math

import pytest
import torch

import sparse_rda
from sparse_rda import dispatch, plan
from helpers import (assert_at_most_n_per_group, assert_nm_weights_match, assert_state_close, assert_weights_match,
                     beside_the_reference, check_device_form_matches_host, check_device_form_skip_writes_nothing,
                     contract_inputs, make_params, nm_groups, rda_contract_call, rda_error_scales, row_scaled_grads,
                     same_bits, step_and_compare, step_both)

pytestmark = pytest.mark.skipif(
    "triton" not in sparse_rda.backends() or not (dispatch.triton_interpreted() or torch.cuda.is_available()),
    reason="needs triton with a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-5  # docs/ALGORITHMS.md section 5: fused kernel vs the fp32 reference

# odd shapes: rows M does or does not divide, a 1-element weight, a conv weight, a 1-D tensor (element mode, its own
# bucket), one weight spanning several chunks (see small_chunks)
SHAPES = [(7, 5), (13,), (33, 17), (1, 1), (4, 3, 3, 3), (16, 24), (130, 72)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """2048-lane chunks, as in tests/test_triton_step.py: the (130, 72) weight spans several programs, whose counts
    combine, and ragged rows start chunks mid-row."""
    from sparse_rda.kernels import tensor_table

    monkeypatch.setattr(tensor_table, "CHUNK", 2048)


def transposed(rows, cols, dtype):
    """A parameter that is a transposed view (not contiguous): the kernels step a contiguous copy."""
    return torch.nn.Parameter((torch.randn(rows, cols) * 0.5).to(device=DEVICE, dtype=dtype).t())


def stored_nonzeros(w: torch.Tensor) -> int:
    """(w != 0).sum(), as the kernels count it. The interpreter keeps bf16 values as their uint16 bits and
    compares those, so there a -0.0 weight (a soft threshold's zero of a negative T) counts as nonzero; on a GPU
    the compare is a float one."""
    if w.dtype == torch.bfloat16 and w.device.type == "cpu":
        return int(torch.count_nonzero(w.detach().view(torch.int16)))
    return int(torch.count_nonzero(w))


def compare_low_precision(fused, ref, inputs):
    """compare_rda for bf16 / fp16 weights: the (float32) state within RTOL, the weights within their rounding
    (N:M weights agreeing where the group's choice is clear at that precision). compare_rda's weight checks hold
    float32 weights to RTOL; and the interpreter rounds float32 to bf16 toward zero (the GPU to nearest)."""
    group = ref.param_groups[0]
    for i, (p, q, before) in enumerate(zip(fused.param_groups[0]["params"], group["params"], inputs)):
        mine, theirs = fused.state[p], ref.state[q]
        T_scale, v_scale = rda_error_scales(group, before, q.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert_state_close(mine[key], theirs[key], RTOL, f"tensor {i} {key}", scale)
        tensor_plan, threshold = ref._plan(group, q), group["lam"] * theirs["B"]
        rounding = torch.finfo(p.dtype).eps
        if tensor_plan.constrained:
            assert_nm_weights_match(p.data, q.data, theirs["T"], threshold, tensor_plan, rounding, f"tensor {i} w",
                                    T_scale)
        else:
            assert_weights_match(p.data, q.data, theirs["T"], threshold, rounding, f"tensor {i} w", T_scale)


def run_nm(granularity, shapes, steps, dtype=torch.float32, extra=(), **options):
    """``steps`` teacher-forced steps of Triton and the reference (compare_rda: state within RTOL, N:M weights
    agreeing where the group's choice is clear); at most N per group and exact counts after every step."""
    params = make_params(shapes, dtype=dtype, zero_fraction=0.2, device=DEVICE) + [p(dtype) for p in extra]
    options = {**dict(lr=0.8, lam=3e-2, averaging=0.3, weight_decay=1e-3, granularity=granularity), **options}
    fused, ref = beside_the_reference(sparse_rda.RDA, params, "triton", **options)
    group = fused.param_groups[0]
    for _ in range(steps):
        grads = [torch.randn_like(p) * (torch.logspace(-2, 0, p.shape[0], device=DEVICE)[:, None].to(p.dtype)
                                        if p.dim() == 2 else 1.0) for p in params]
        if dtype == torch.float32:
            step_and_compare(fused, ref, grads, RTOL)
        else:
            compare_low_precision(fused, ref, step_both(fused, ref, grads))
        nnz = fused.nnz()
        for i, p in enumerate(params):
            assert nnz[p] == stored_nonzeros(p), f"tensor {i}: the step's count"
            tensor_plan = fused._plan(group, p)
            if tensor_plan.constrained:
                assert_at_most_n_per_group(p.detach(), tensor_plan, f"tensor {i}")
    return fused, params


@pytest.mark.parametrize("granularity, dtype, options", [
    (("nm", 2, 4), torch.float32, dict()),
    (("nm", 1, 4), torch.bfloat16, dict(reweight=False)),
    (("nm", 3, 8), torch.float16, dict(maximize=True, momentum_time=None, weight_decay=0.0)),
    (("nm", 2, 5), torch.float32, dict(averaging=1.0, reweight_time=0, max_factor=50.0)),
    (("nm", 1, 32), torch.bfloat16, dict(averaging=0.0, lam=1e-2)),
], ids=["2:4-fp32", "1:4-bf16-no-reweight", "3:8-fp16-maximize", "2:5-fp32-averaging-1", "1:32-bf16-averaging-0"])
def test_nm_matches_the_reference(granularity, dtype, options):
    """Every axis once: patterns (M a power of two or not; rows of one group, of several, ragged), dtypes,
    reweighting on and off, the averaging's ends, weight decay, maximize; a transposed weight."""
    fused, params = run_nm(granularity, SHAPES, 6, dtype, extra=[lambda d: transposed(11, 6, d)], **options)
    assert not params[-1].is_contiguous(), "the parameter keeps its layout"
    w = params[-2]
    allowed = (nm_groups(torch.ones_like(w), fused._plan(fused.param_groups[0], w)) != 0).sum(-1)
    assert fused.nnz()[w] < int(allowed.clamp(max=granularity[1]).sum()), "lam prunes below what N:M allows too"


class LaunchSpy:
    """Stands in for the N:M step kernel: records each launch's layout constexprs, then launches it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({k: kwargs[k] for k in ("EVEN", "ALIGNED", "GROUPS")})
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("granularity, shapes, even, aligned", [
    (("nm", 2, 4), [(16, 24), (8, 4, 2, 2), (130, 72), (3, 8)], True, True),  # M = MP: full blocks, vectors
    (("nm", 2, 5), [(7, 5), (3, 10), (4, 5, 2, 2), (40, 65)], True, False),  # groups padded to 8 lanes
    (("nm", 3, 4), [(3, 1030), (5, 7), (2, 3, 5, 5)], False, False),  # rows of 258 groups (> a block) and of 2
], ids=["even-4", "even-5", "ragged-long-rows"])
def test_whole_and_ragged_rows(granularity, shapes, even, aligned, monkeypatch):
    """The kernel's layouts: every row a whole number of groups (EVEN: group g at g M), with and without padded
    lanes, and ragged rows whose groups find their row by a compare (rows of more groups than a block) or a
    multiply (fewer); 3:4 drops the smallest instead of picking the largest."""
    from sparse_rda.kernels import rda_nm_step

    spy = LaunchSpy(rda_nm_step._step_kernel)
    monkeypatch.setattr(rda_nm_step, "_step_kernel", spy)
    run_nm(granularity, shapes, 4)
    assert {(launch["EVEN"], launch["ALIGNED"]) for launch in spy.launches} == {(even, aligned)}


def nm_contract(params, T, granularity, lam=0.0, backend="triton"):
    """One contract step of ``backend`` on ``params`` (written) from dual averages T (v, A, B zero, zero grads):
    with lam = 0 each weight is the new T, alpha T + (1 - alpha) w, whose magnitudes tie where those of w and T
    do. Returns (counts, the new T)."""
    T = [t.clone() for t in T]
    zeros = [[torch.zeros_like(t) for t in T] for _ in range(3)]
    counts = rda_contract_call(backend, params, [torch.zeros_like(p) for p in params], T, *zeros,
                               penalized=[True] * len(params), granularity=granularity, lr=0.5, lam=lam, beta=0.9,
                               beta_b=0.8, averaging=0.3, weight_decay=0.0, max_factor=50.0, reweight=True,
                               maximize=False)
    return counts, T


def identical(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal values, NaN where NaN (the sign of a zero aside)."""
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0))


def nm_both(w, T, granularity):
    """(Triton's weights, the reference's) after one nm_contract step from the same w and T."""
    mine, theirs = [x.clone() for x in w], [x.clone() for x in w]
    nm_contract(mine, T, granularity)
    nm_contract(theirs, T, granularity, backend="torch")
    return mine, theirs


def test_ties_keep_the_lowest_indices_and_nan_ranks_first():
    """lam = 0, equal |T| in a group: the lowest indices are kept, as the reference's stable sort; NaN ranks
    above everything, as +inf (with which it ties: by index). Rows of 9: two groups of 4 and a short one of 1.
    The non-finite values are in T only (a non-finite weight would make its own v, and so T, NaN)."""
    nan, inf = math.nan, math.inf
    T = torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.5, -0.5, 0.5, 0.25, 7.0],
                      [2.0, nan, -2.0, 3.0, -inf, 1.0, nan, inf, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 5.0]], device=DEVICE)
    nonzero = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 1],
                            [0, 1, 0, 1, 1, 0, 1, 0, 0],
                            [0, 0, 0, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    w = torch.where(torch.isfinite(T), T, 0.0)  # so that alpha T + (1 - alpha) w ties where |T| does
    (mine,), (theirs,) = nm_both([w], [T], ("nm", 2, 4))
    assert identical(mine, theirs)
    assert torch.equal(mine.cpu() != 0, nonzero), mine
    assert mine[1, 1].isnan() and mine[1, 6].isnan() and mine[1, 4] == -inf


@pytest.mark.parametrize("granularity", [("nm", 2, 4), ("nm", 3, 4), ("nm", 5, 32), ("nm", 24, 32)], ids=str)
def test_ties_in_random_groups_are_the_references(granularity):
    """Magnitudes drawn from three values (ties everywhere), random signs, rows that M does and does not divide:
    Triton's weights are the reference's exactly (lam = 0: no rounding near a threshold), whether the kernel picks
    the N largest (N <= MP / 2) or drops the others."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(9, 13), (4, 3, 2, 5), (6, 64)]
    T = [(torch.randint(0, 3, s, generator=gen) * (torch.randint(0, 2, s, generator=gen) * 2 - 1)).float().to(DEVICE)
         for s in shapes]
    mine, theirs = nm_both(T, T, granularity)
    for i, (w, w_ref) in enumerate(zip(mine, theirs)):
        assert identical(w, w_ref), f"tensor {i}"
        assert_at_most_n_per_group(w, plan.tensor_plan(w.shape, granularity, True))


def test_counts_are_the_nonzeros_of_each_weight():
    """The counts a step returns are (w != 0).sum() per weight as stored: kept weights that round to 0 in fp16
    count as 0."""
    shapes = [(4, 8), (5, 7), (3, 2, 2, 3)]
    params = [(torch.randn(s) * 0.5).to(DEVICE, torch.float16) for s in shapes]
    T = [p.float() for p in params]
    params[0][0, :4] = 0.0
    T[0][0, :4] = torch.tensor([1e-8, 2e-8, 0.0, 0.0])  # the group's two largest: 3e-9 and 6e-9, 0 in fp16
    counts, T_new = nm_contract(params, T, ("nm", 2, 4))
    assert (T_new[0][0, :2] != 0).all() and (params[0][0, :4] == 0).all()
    assert counts.tolist() == [int(torch.count_nonzero(p)) for p in params]


# The device form through the contract (one N:M bucket: 2+ dims, all penalized); ragged rows and whole ones
DEVICE_FORM_SHAPES = [(7, 5), (33, 17), (16, 24), (4, 3, 3, 3)]


@pytest.mark.parametrize("granularity", [("nm", 2, 4), ("nm", 3, 5)], ids=str)
def test_device_form_matches_the_host_form(granularity):
    check_device_form_matches_host("triton", DEVICE, DEVICE_FORM_SHAPES, granularity, [True] * 4, steps=2, rtol=RTOL)


def test_device_form_skip_on_found_inf_writes_nothing():
    check_device_form_skip_writes_nothing("triton", DEVICE, DEVICE_FORM_SHAPES, ("nm", 2, 4), [True] * 4)


# rda_max_A on a constrained bucket, and a step given max_A (tests/test_max_A.py's checks for N:M)
MAX_A_SHAPES = [(13, 21), (8, 16), (3, 4, 3, 3)]
HYPER = dict(lr=0.7, lam=2e-2, beta=0.9, beta_b=0.8, averaging=0.3, weight_decay=1e-3, max_factor=50.0,
             reweight=True, maximize=False)


def max_A_inputs(seed=0):
    w, T, B, A, v, _ = contract_inputs(MAX_A_SHAPES, ("nm", 2, 4), DEVICE, seed=seed, fresh=False)
    A[0].view(-1)[3] = math.nan  # the max is over finite values
    A[0].view(-1)[-1] = math.inf
    grads = [g.to(DEVICE) for g in row_scaled_grads(w, torch.Generator().manual_seed(1))]
    return dict(params=w, grads=grads, T=T, B=B, A=A, v=v)


def call(backend, tensors, **extra):
    return rda_contract_call(backend, tensors["params"], tensors["grads"], tensors["T"], tensors["B"], tensors["A"],
                             tensors["v"], penalized=[True] * len(MAX_A_SHAPES), granularity=("nm", 2, 4),
                             **{**HYPER, **extra})


def copied(tensors):
    return {k: [x.clone() for x in v] for k, v in tensors.items()}


def test_max_A_of_a_constrained_bucket_is_the_references_and_the_steps_own():
    """rda_max_A writes nothing and equals the reference's (this step's element-wise A, finite values); a step given
    those maxes is bit-identical to one that finds them itself."""
    tensors = max_A_inputs()
    before = copied(tensors)
    maxes = call("triton", tensors, function="rda_max_A")
    assert maxes.dtype == torch.float32 and maxes.shape == (len(MAX_A_SHAPES),)
    for key, values in tensors.items():
        assert all(same_bits(x, y) for x, y in zip(values, before[key])), f"{key} was written"
    torch.testing.assert_close(maxes.cpu(), call("torch", copied(tensors), function="rda_max_A").cpu(),
                               rtol=2.4e-7, atol=0)
    given = copied(tensors)
    counts = call("triton", given, max_A=maxes)
    own_counts = call("triton", tensors)
    for key, values in tensors.items():
        assert all(same_bits(x, y) for x, y in zip(values, given[key])), f"{key}: a step given its own max differs"
    assert torch.equal(counts, own_counts)


@pytest.mark.parametrize("reweight", [True, False])
def test_a_given_max_reweights_with_it(reweight):
    """Given twice the true maxes, the step is the reference's with those maxes (without reweighting the max is
    not read); a max of the wrong size is refused."""
    tensors = max_A_inputs(seed=2)
    maxes = 2 * call("torch", copied(tensors), function="rda_max_A")
    expected = copied(tensors)
    call("torch", expected, max_A=maxes, reweight=reweight)
    call("triton", tensors, max_A=maxes, reweight=reweight)
    for key in ("B", "T", "A", "v"):
        for i, (x, y) in enumerate(zip(tensors[key], expected[key])):
            assert_state_close(x, y, RTOL, f"tensor {i} {key}")
    for i, (w, w_ref) in enumerate(zip(tensors["params"], expected["params"])):
        assert_nm_weights_match(w, w_ref, expected["T"][i], HYPER["lam"] * expected["B"][i],
                                plan.tensor_plan(w.shape, ("nm", 2, 4), True), RTOL, f"tensor {i} w")
    own = max_A_inputs(seed=2)
    call("triton", own, reweight=reweight)
    assert all(torch.equal(x, y) for x, y in zip(own["B"], tensors["B"])) != reweight, "the given max sets om"
    with pytest.raises(ValueError, match="max_A must hold 3"):
        call("triton", copied(tensors), max_A=torch.ones(2, device=DEVICE))
