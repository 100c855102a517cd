"""N:M granularity ("nm", N, M) in the native kernels (torch.ops.sparse_rda.rda_nm_step_: csrc/cpu/nm_step_cpu.cpp,
csrc/cuda/nm_step_kernels.cu) against the reference (sparse_rda/reference.py, nm_soft_threshold): the element
update of every element, then the N largest |S(T)| of each group of M along a row kept, ties to the lower index,
NaN first; the counts, a skipped step, a given max_A and the max pass (the element op's)."""

import pytest
import torch

import sparse_rda
from sparse_rda import native, plan
from helpers import (assert_at_most_n_per_group, assert_nm_weights_match, assert_state_close,
                     assert_unchanged, assert_within_one_ulp, beside_the_reference, check_device_form_matches_host,
                     check_device_form_skip_writes_nothing, expected_max_A, max_A_hyper, native_devices,
                     rda_contract_call, rda_error_scales, row_scaled_grads, same_bits, snapshot, step_both)

# (triton_free: the triton-3.6 rerun of make test skips these: they run no Triton code)
pytestmark = [pytest.mark.skipif(not native.has_kernels("cpu"), reason="native extension not built"),
              pytest.mark.triton_free]

RTOL = 1e-5  # docs/ALGORITHMS.md section 5: fused kernel vs the fp32 reference
NATIVE_DEVICES = native_devices()
PATTERNS = [("nm", 2, 4), ("nm", 1, 4), ("nm", 3, 8), ("nm", 2, 5), ("nm", 1, 32)]
# odd rows (a row's short last group), a 1-D tensor (element mode, its own bucket), one element, a conv weight,
# rows of whole aligned packs (the CUDA kernel's 16-byte path for M = 4 and 8), a larger one
SHAPES = [(7, 5), (13,), (33, 17), (1, 1), (4, 3, 3, 3), (16, 24), (130, 72)]


def params_of(shapes, device, dtype):
    params = [torch.nn.Parameter((torch.randn(s) * 0.5).to(device=device, dtype=dtype)) for s in shapes]
    params.append(torch.nn.Parameter((torch.randn(11, 6) * 0.5).to(device=device, dtype=dtype).t()))  # transposed
    return params


def compare_nm(fused, ref, inputs, weights_rtol):
    """After step_both: the state within RTOL (errors of sums judged against their terms), the step counts equal,
    and the weights as N:M weights (tests/helpers.py's assert_nm_weights_match) within weights_rtol: a 16-bit
    weight may round the other way when its fp32 value differs in the last bits."""
    group = ref.param_groups[0]
    for i, (p, q, before) in enumerate(zip(fused.param_groups[0]["params"], group["params"], inputs)):
        mine, theirs = fused.state[p], ref.state[q]
        T_scale, v_scale = rda_error_scales(group, before, q.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert_state_close(mine[key], theirs[key], RTOL, f"tensor {i} {key}", scale)
        assert float(mine["step"]) == float(theirs["step"])
        tensor_plan = ref._plan(group, q)
        if tensor_plan.constrained:
            assert_at_most_n_per_group(p.data, tensor_plan, f"tensor {i} w")
            assert_nm_weights_match(p.data.float(), q.data.float(), theirs["T"], group["lam"] * theirs["B"],
                                    tensor_plan, weights_rtol, f"tensor {i} w", T_scale)
        else:
            torch.testing.assert_close(p.data.float(), q.data.float(), rtol=weights_rtol, atol=1e-6)


def run_beside_the_reference(params, device, steps, **options):
    fused, ref = beside_the_reference(sparse_rda.RDA, params, device, **options)
    weights_rtol = max(RTOL, torch.finfo(params[0].dtype).eps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        grads = [g.to(p.device) for g, p in zip(row_scaled_grads(params, gen), params)]
        compare_nm(fused, ref, step_both(fused, ref, grads), weights_rtol)
    return fused


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("granularity", PATTERNS, ids=lambda g: f"{g[1]}of{g[2]}")
def test_native_nm_step_matches_the_reference(granularity, dtype, device):
    """30 steps teacher-forced: state, weights (the kept sets where no near tie), at most N per group, counts."""
    params = params_of(SHAPES, device, dtype)
    fused = run_beside_the_reference(params, device, 30, lr=0.8, lam=3e-2, averaging=0.3, weight_decay=1e-3,
                                     granularity=granularity)
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params), "nnz counted in the step"
    n, m = granularity[1:]
    big = params[SHAPES.index((130, 72))]
    assert 0 < int(torch.count_nonzero(big)) <= big.shape[0] * -(-72 // m) * n, "pruned to N:M, not to nothing"
    assert not params[-1].is_contiguous()


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("options", [dict(reweight=False), dict(maximize=True, momentum_time=None),
                                     dict(averaging=1.0, weight_decay=0.0), dict(averaging=0.0, weight_decay=1e-2)],
                         ids=["no-reweight", "maximize", "averaging-1", "averaging-0"])
def test_native_nm_options(options, device):
    params = params_of(SHAPES, device, torch.float32)
    run_beside_the_reference(params, device, 10, **{**dict(lr=0.5, lam=2e-2, granularity=("nm", 2, 4)), **options})


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_native_nm_grad_scale(device):
    params = params_of([(9, 10), (5, 8)], device, torch.float32)
    fused, ref = beside_the_reference(sparse_rda.RDA, params, device, lr=0.5, lam=2e-2, granularity=("nm", 2, 4))
    for opt in (fused, ref):
        opt.grad_scale = torch.tensor(1024.0, device=device)  # as torch.amp.GradScaler hands it over
    for _ in range(5):
        compare_nm(fused, ref, step_both(fused, ref, [torch.randn_like(p) * 1024 for p in params]), RTOL)


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_native_nm_step_over_more_tensors_than_one_launch_takes(device):
    """80 weights: the CUDA launcher passes 36 tensors per launch, so tensors, maxes and counts span three."""
    gen = torch.Generator().manual_seed(1)
    shapes = [tuple(int(x) for x in torch.randint(1, 40, (2,), generator=gen)) for _ in range(80)]
    params = [torch.nn.Parameter((torch.randn(s) * 0.5).to(device)) for s in shapes]
    fused = run_beside_the_reference(params, device, 3, lr=0.8, lam=2e-2, granularity=("nm", 3, 8))
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)


# ----------------------------------------------------------------------------------------------------------
# The selection through the contract: ties, NaN, the counts


def contract(backend, params, T, granularity, **extra):
    """One step of ``backend`` that leaves T as it is (lr 0, averaging 1) and thresholds at 0 (lam 0): w is the
    N:M selection of T itself. Returns the counts."""
    zeros = [torch.zeros_like(t) for t in T]
    hyper = dict(lr=0.0, lam=0.0, beta=0.0, beta_b=0.5, averaging=1.0, weight_decay=0.0, max_factor=50.0,
                 reweight=False, maximize=False)
    return rda_contract_call(backend, params, [torch.zeros_like(p) for p in params], T, *(list(zeros) for _ in
                             range(3)), penalized=[True] * len(params), granularity=granularity, **{**hyper, **extra})


def same_values(x, y) -> bool:
    """Equal values (0 == -0), NaN where NaN."""
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0))


TIE_ROWS = torch.tensor([
    [1.0, 1.0, 1.0, 1.0, 2.0, -2.0, 2.0, -2.0],  # equal |T|: the lowest indices
    [0.0, 0.0, 0.0, 0.0, -0.0, 0.0, 0.0, 0.0],  # all zero: nothing nonzero to keep
    [float("nan"), 1.0, 5.0, float("inf"), 3.0, float("nan"), float("nan"), 3.0],  # NaN first, then inf
    [-1.0, 0.5, 0.5, -1.0, 0.25, 0.25, 0.25, 0.5],
])


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ties_go_to_the_lower_index_and_nan_ranks_first(n, device):
    T = TIE_ROWS.to(device)
    w_native, w_ref = torch.zeros_like(T), torch.zeros_like(T)
    contract(device, [w_native], [T.clone()], ("nm", n, 4))
    contract("torch", [w_ref], [T.clone()], ("nm", n, 4))
    assert same_bits(w_native, w_ref), f"{w_native}\n{w_ref}"
    keys = torch.where(T.isnan(), torch.inf, T.abs()).reshape(4, 2, 4).cpu()
    for row in range(4):
        for group in range(2):
            k = keys[row, group]
            # the first n in a stable descending order
            kept = sorted(range(4), key=lambda i: (-float(k[i]), i))[:n]
            got = w_native.reshape(4, 2, 4)[row, group].cpu()
            want = torch.where(torch.tensor([i in kept for i in range(4)]),
                               T.reshape(4, 2, 4)[row, group].cpu(), torch.zeros(4))
            assert same_values(got, want), f"row {row} group {group}: {got} for {want}"
    if n == 1:
        assert w_native[0, :4].tolist() == [1.0, 0.0, 0.0, 0.0]
        assert w_native[2, 0].isnan() and w_native[2, 1:4].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("granularity", PATTERNS, ids=lambda g: f"{g[1]}of{g[2]}")
def test_selection_of_random_ties_is_the_references_bit_for_bit(granularity, dtype, device):
    """T drawn from a few values (ties everywhere, zeros and NaN among them) on shapes with ragged rows: the same
    weights as the reference, bit for bit in float32 (16-bit NaN bits differ: c10's cast gives 0x7fc0, torch's
    copy the float's sign and payload, in the element step too), and the op's counts are the weights' nonzeros."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (3, 4, 3, 3), (6, 40), (2, 33)]
    values = torch.tensor([0.0, -1.0, 1.0, 0.5, -0.5, 2.0, float("nan")])
    T = [values[torch.randint(0, len(values), s, generator=gen)].to(device) for s in shapes]
    mine, theirs = ([torch.zeros(s, device=device, dtype=dtype) for s in shapes] for _ in range(2))
    counts = contract(device, mine, [t.clone() for t in T], granularity)
    contract("torch", theirs, [t.clone() for t in T], granularity)
    for i, (w, w_ref) in enumerate(zip(mine, theirs)):
        assert (same_bits if dtype == torch.float32 else same_values)(w, w_ref), f"tensor {i}"
        assert_at_most_n_per_group(w, plan.tensor_plan(w.shape, granularity, True))
    assert counts.tolist() == [int((w != 0).sum()) for w in mine]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_empty_weights_and_rows_shorter_than_a_group(device):
    """Weights with no rows, no columns, or rows shorter than M (one short group each): the reference's step,
    counts 0 where there is nothing, and the grads and state read flat whatever their shapes."""
    shapes = [(0, 5), (5, 0), (3, 0, 2), (6, 3), (2, 1, 1)]
    T = [torch.randn(s).to(device) for s in shapes]
    mine, theirs = ([torch.zeros(s, device=device) for s in shapes] for _ in range(2))
    counts = contract(device, mine, [t.clone() for t in T], ("nm", 2, 8))
    contract("torch", theirs, [t.clone() for t in T], ("nm", 2, 8))
    assert all(same_bits(w, w_ref) for w, w_ref in zip(mine, theirs))
    assert counts.tolist() == [0, 0, 0, 12, 2]


def test_the_largest_group_is_the_plans():
    """plan.MAX_NM_GROUP groups step (one tie-free group, N = M - 1 keeps all but the smallest); one more is
    refused by the op (csrc/rda_math.h's kMaxNmGroup)."""
    m = plan.MAX_NM_GROUP
    T = torch.arange(1.0, m + 1).flip(0)[None]
    w = torch.zeros(1, m)
    contract("cpu", [w], [T.clone()], ("nm", m - 1, m))
    assert torch.equal(w, torch.where(T > 1, T, 0.0))
    a = nm_inputs("cpu")
    with pytest.raises(RuntimeError, match=f"1 <= N < M <= {m}, got \\[2, {m + 1}\\]"):
        nm_step({**a, "nm": [2, m + 1]})


# ----------------------------------------------------------------------------------------------------------
# The op itself: a skipped step, the device form, the max pass and a given max_A

NM = [2, 4]
NM_SHAPES = [(7, 5), (33, 17), (4, 3, 3, 3), (16, 24), (1, 1)]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_device_form_matches_the_host_form(device):
    check_device_form_matches_host(device, device, NM_SHAPES, ("nm", 2, 4), [True] * len(NM_SHAPES))


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_device_form_skip_on_found_inf_writes_nothing(device):
    check_device_form_skip_writes_nothing(device, device, NM_SHAPES, ("nm", 2, 4), [True] * len(NM_SHAPES))


def nm_inputs(device, dtype=torch.float32, device_form=False, nonfinite=False, seed=0):
    """The keyword arguments of an rda_nm_step_ call: random weights and state (helpers.MAX_A_HYPER's scalars),
    with ``nonfinite`` a NaN weight, an inf A and a -inf weight; factors and group_means for the element max op."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) * 0.5 for s in NM_SHAPES]
    state = [[w.clone(), *(torch.rand(w.shape, generator=gen) for _ in range(3))] for w in params]
    if nonfinite:
        params[0].view(-1)[0] = float("nan")
        state[1][2].view(-1)[8] = float("inf")
        params[2].view(-1)[7] = float("-inf")
    params = [w.to(device=device, dtype=dtype) for w in params]
    hyper, device_hyper = max_A_hyper(device_form, device)
    return dict(params=params, grads=[torch.randn(w.shape, generator=gen).to(w) for w in params],
                T=[s[0].to(device) for s in state], B=[s[1].to(device) for s in state],
                A=[s[2].to(device) for s in state], v=[s[3].to(device) for s in state], nm=list(NM), hyper=hyper,
                reweight=True, maximize=False, inv_scale=None, device_hyper=device_hyper,
                found_inf=torch.zeros((), device=device) if device_form else None,
                group_means=[None] * len(params), factors=[1.0] * len(params))


_STEP_ORDER = ("params", "grads", "T", "B", "A", "v", "nm", "hyper", "reweight", "maximize", "inv_scale",
               "device_hyper", "found_inf")
_MAX_ORDER = ("params", "grads", "T", "B", "A", "v", "group_means", "factors", "hyper", "reweight", "maximize",
              "inv_scale", "device_hyper", "found_inf")


def nm_step(a, max_A=None):
    return torch.ops.sparse_rda.rda_nm_step_(*(a[k] for k in _STEP_ORDER), max_A)


def element_max_A(a):
    return torch.ops.sparse_rda.rda_max_A(*(a[k] for k in _MAX_ORDER))


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("dtype, device_form", [(torch.float32, False), (torch.float32, True),
                                                (torch.bfloat16, False)], ids=["fp32", "device-form", "bf16"])
def test_the_element_max_op_is_the_nm_steps_max(dtype, device_form, device):
    """The element op's max (factors 1, no group means) of an N:M step's tensors is torch's (within 1 ulp, the
    non-finite values ignored), and a step given it is bit for bit the step that takes its own max."""
    a = nm_inputs(device, dtype, device_form, nonfinite=True)
    before = snapshot(a)
    maxes = element_max_A(a)
    assert_unchanged(a, before, "the max op")
    assert_within_one_ulp(maxes, expected_max_A(a))
    theirs = {**a, **snapshot(a)}
    counts = nm_step(a, maxes)
    expected_counts = nm_step(theirs)
    assert_unchanged(a, snapshot(theirs), "a step given the max op's max_A")
    assert torch.equal(counts, expected_counts)
    assert counts.tolist() == [int((w != 0).sum()) for w in a["params"]]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("max_dtype", [torch.float32, torch.float64], ids=str)
def test_a_given_max_A_sets_om(max_dtype, device):
    """Given another max (2x the true one, in any floating dtype) the step reweights with it: B = alpha B + lr om,
    om = M / (1 + (M - 1) A / given max), from the B before and the A after the step."""
    from helpers import MAX_A_HYPER as h

    a = nm_inputs(device)
    own = {**a, **snapshot(a)}
    B_before = [B.clone() for B in a["B"]]
    given = (2 * element_max_A(a)).to(max_dtype)
    nm_step(a, given)
    nm_step(own)
    for i, (A, B, B0) in enumerate(zip(a["A"], a["B"], B_before)):
        M = h["max_factor"]
        om = M / (1 + (M - 1) * A.double().cpu() / float(given[i]))
        assert_state_close(B.cpu(), h["averaging"] * B0.double().cpu() + h["lr"] * om, 1e-6, f"tensor {i} B")
        assert not torch.equal(B, own["B"][i]), f"tensor {i}: the given max changes om"


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_a_skipped_step_writes_nothing(device):
    a = nm_inputs(device, device_form=True)
    before = snapshot(a)
    counts = nm_step({**a, "found_inf": torch.ones((), device=device)}, max_A=torch.ones(len(a["params"]),
                                                                                        device=device))
    assert_unchanged(a, before, "a skipped step")
    assert counts.tolist() == [int((w != 0).sum()) for w in a["params"]]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_native_rda_max_A_of_a_constrained_bucket(device):
    """native.rda_max_A of an N:M bucket (the element op) equals the reference's contract rda_max_A within 1 ulp,
    and native.rda_step hands a given max to the N:M op: a step given its own max is its own step."""
    from helpers import contract_inputs

    hyper = dict(lr=0.7, lam=2e-2, beta=0.9, beta_b=0.8, averaging=0.3, weight_decay=1e-3, max_factor=50.0,
                 reweight=True, maximize=False)
    w, T, B, A, v, _ = contract_inputs(NM_SHAPES, ("nm", 2, 4), device, fresh=False)
    grads = [g.to(device) for g in row_scaled_grads(w, torch.Generator().manual_seed(1))]
    penalized = [True] * len(w)
    call = dict(penalized=penalized, granularity=("nm", 2, 4), **hyper)
    maxes = rda_contract_call(device, w, grads, T, B, A, v, function="rda_max_A", **call)
    expected = rda_contract_call("torch", w, grads, T, B, A, v, function="rda_max_A", **call)
    assert_within_one_ulp(maxes, expected.float())
    copies = [[x.clone() for x in xs] for xs in (w, T, B, A, v)]
    counts = rda_contract_call(device, *copies[:1], grads, *copies[1:], max_A=maxes, **call)
    own = rda_contract_call(device, w, grads, T, B, A, v, **call)
    for xs, ys in zip(copies, (w, T, B, A, v)):
        assert all(same_bits(x, y) for x, y in zip(xs, ys))
    assert torch.equal(counts, own)


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device_form", [False, True], ids=["host", "device-form"])
def test_opcheck_rda_nm_step(dtype, device_form, device):
    a = nm_inputs(device, dtype, device_form)
    args = tuple(a[k] for k in _STEP_ORDER)
    torch.library.opcheck(torch.ops.sparse_rda.rda_nm_step_.default, args)
    torch.library.opcheck(torch.ops.sparse_rda.rda_nm_step_.default, args + (element_max_A(a),))


def test_torch_compile_traces_an_nm_step_without_graph_breaks():
    params = [torch.nn.Parameter(torch.randn(6, 8)), torch.nn.Parameter(torch.randn(5))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    options = dict(lam=1e-3, weight_decay=1e-4, granularity=("nm", 2, 4))
    compiled_opt, eager_opt = (sparse_rda.RDA(ps, backend="cpu", **options) for ps in (params, copies))
    for p, q in zip(params, copies):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    compiled_opt.step()
    eager_opt.step()
    step = torch.compile(compiled_opt.step, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        step()
        eager_opt.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
