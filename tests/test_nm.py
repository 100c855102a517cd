"""N:M granularity (docs/ALGORITHMS.md section 3b): the reference's constrained prox against a brute-force float64
oracle, ties, the steps' invariant (at most N nonzeros per group of M), target_sparsity inside the pattern, and the
options' checks. The kernels are compared with this reference in test_nm_native.py and test_nm_triton.py."""

import itertools
import math

import pytest
import torch

import sparse_rda
from sparse_rda import plan, reference
from helpers import assert_at_most_n_per_group

pytestmark = pytest.mark.triton_free  # the reference only: the triton-3.6 rerun of make test skips it
PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (2, 5), (3, 8), (2, 12)]  # M > 8: nm_keep sorts


def oracle_prox(T: torch.Tensor, threshold: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """argmin_w 1/2 ||w - T||^2 + sum_i t_i |w_i| subject to at most n nonzeros in each group of m consecutive
    weights of each row (rows: T as [shape[0], rest]; a row's last group shorter), by trying every support of at
    most n elements of each group, in float64. Among supports of equal cost the one first in itertools' order of
    the lowest indices wins (the smaller support first: its extra elements would be zero anyway)."""
    rows, thr = T.double().reshape(T.shape[0], -1), threshold.double().reshape(T.shape[0], -1)
    w = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], m):
            idx = list(range(start, min(start + m, rows.shape[1])))
            best, best_w = math.inf, None
            for k in range(min(n, len(idx)) + 1):
                for support in itertools.combinations(idx, k):
                    cost, candidate = 0.0, {}
                    for i in idx:
                        t, x = float(rows[r, i]), float(thr[r, i])
                        if i in support:  # the 1-D problem min 1/2 (w - t)^2 + x |w| on this element
                            wi = math.copysign(max(abs(t) - x, 0.0), t)
                            cost += 0.5 * (wi - t) ** 2 + x * abs(wi)
                            candidate[i] = wi
                        else:
                            cost += 0.5 * t * t
                    if cost < best - 1e-12:
                        best, best_w = cost, candidate
            for i, wi in best_w.items():
                w[r, i] = wi
    return w.reshape(T.shape)


def objective(w, T, threshold):
    w, T, threshold = w.double(), T.double(), threshold.double()
    return float((0.5 * (w - T) ** 2 + threshold * w.abs()).sum())


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("shape", [(3, 8), (4, 10), (2, 3, 2, 2), (1, 7), (2, 26)])
def test_the_prox_is_the_brute_force_minimizer(n, m, shape):
    gen = torch.Generator().manual_seed(n * 100 + m + sum(shape))
    T = torch.randn(shape, generator=gen, dtype=torch.float64)
    threshold = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.6  # some below |T|, some above
    tensor_plan = plan.tensor_plan(shape, ("nm", n, m), penalized=True)
    w = reference.nm_soft_threshold(T, threshold, tensor_plan)
    expected = oracle_prox(T, threshold, n, m)
    # random inputs have no ties: the minimizer is unique and the reference must find it exactly
    assert objective(w, T, threshold) == pytest.approx(objective(expected, T, threshold), rel=0, abs=1e-12)
    assert torch.equal(w, expected)
    assert_at_most_n_per_group(w, tensor_plan)


def test_with_no_penalty_it_projects_onto_the_pattern():
    T = torch.tensor([[0.5, -3.0, 2.0, 0.1, 7.0, -8.0, 1.0]])
    tensor_plan = plan.tensor_plan(T.shape, ("nm", 2, 4), penalized=True)
    w = reference.nm_soft_threshold(T, torch.zeros_like(T), tensor_plan)
    # groups [0.5, -3, 2, 0.1] and the short last one [7, -8, 1]: the two largest |T| of each
    assert w.tolist() == [[0.0, -3.0, 2.0, 0.0, 7.0, -8.0, 0.0]]


def test_ties_go_to_the_lower_index_and_nan_ranks_first():
    T = torch.tensor([[1.0, -1.0, 1.0, 1.0, 2.0, float("nan"), 2.0, 5.0]])
    tensor_plan = plan.tensor_plan(T.shape, ("nm", 2, 4), penalized=True)
    w = reference.nm_soft_threshold(T, torch.full_like(T, 0.5), tensor_plan)
    assert w[0, :4].tolist() == [0.5, -0.5, 0.0, 0.0]  # four equal |S(T)|: the first two
    assert math.isnan(w[0, 5]) and w[0, 7] == 4.5 and w[0, 4] == 0 and w[0, 6] == 0  # NaN above everything
    # keys equal after the threshold (|T| - t alike): still the lower indices
    T = torch.tensor([[3.0, 2.5, 2.0, 1.0]])
    w = reference.nm_soft_threshold(T, torch.tensor([[1.0, 0.5, 0.0, 0.0]]), plan.tensor_plan(T.shape, ("nm", 1, 4),
                                                                                                   True))
    assert w.tolist() == [[2.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 9, 16, 32])
def test_nm_keep_ranks_like_a_sorted_list_with_ties_nan_and_infinities(m):
    """Both of nm_keep's ways (counting for M <= 8, sorting above) against Python's sort of each group by
    (-value, index), on values drawn from a few levels so that most groups have ties."""
    gen = torch.Generator().manual_seed(m)
    levels = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 0.5, 2.0])
    x = levels[torch.randint(0, len(levels), (5, 3 * m + m // 2 + 1), generator=gen)]
    for n in sorted({1, m // 2, m - 1}):
        keep = reference.nm_keep(x, (n, m), x.shape[1])
        for r, row in enumerate(x.tolist()):
            for start in range(0, len(row), m):
                group = range(start, min(start + m, len(row)))
                key = {i: math.inf if math.isnan(row[i]) else row[i] for i in group}
                kept = set(sorted(group, key=lambda i: (-key[i], i))[:n])
                assert [bool(keep[r, i]) for i in group] == [i in kept for i in group], (n, r, start)


def test_plans_follow_the_rows():
    conv = plan.tensor_plan((8, 3, 5, 5), ("nm", 2, 4), penalized=True)
    assert (conv.mode, conv.row, conv.nm, conv.factor) == (plan.NM, 75, (2, 4), 1.0)
    assert plan.tensor_plan((10,), ("nm", 2, 4), penalized=True).mode == plan.ELEMENT
    assert plan.tensor_plan((4, 4), ["nm", 2, 4], penalized=True).nm == (2, 4)  # a granularity loaded from JSON
    assert not plan.tensor_plan((4, 4), ("nm", 2, 4), penalized=False).constrained
    plans = tuple(plan.tensor_plan(s, ("nm", 2, 4), True) for s in [(4, 4), (3,), (2, 8)])
    buckets = plan.buckets(plans, ((torch.float32, torch.float32),) * 3)
    assert [(b.indices, b.nm) for b in buckets] == [((0, 2), (2, 4)), ((1,), None)]


@pytest.mark.parametrize("bad", [("nm", 0, 4), ("nm", 4, 4), ("nm", 5, 4), ("nm", 1, 33), ("nm", 2.0, 4),
                                 ("nm", 2), ("nm", True, 4)])
def test_patterns_are_checked(bad):
    with pytest.raises(ValueError, match=r"granularity \('nm', N, M\)|granularity must be"):
        sparse_rda.RDA([torch.nn.Parameter(torch.randn(4, 8))], granularity=bad)


def test_target_below_the_patterns_own_sparsity_is_refused():
    p = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"target_sparsity=0.3 is below .* \(1 - N/M = 0.5\)"):
        sparse_rda.RDA([p], granularity=("nm", 2, 4), target_sparsity=0.3, total_steps=100)
    sparse_rda.RDA([p], granularity=("nm", 2, 4), target_sparsity=0.5, total_steps=100)


def _steps(opt, params, steps, gen):
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 0.1
        opt.step()
        yield


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 5)])
def test_every_step_keeps_the_pattern_and_zeroed_weights_come_back(n, m):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in [(12, 20), (6, 3, 3, 3), (9,)]]
    opt = sparse_rda.RDA(params, lr=0.5, lam=1e-4, granularity=("nm", n, m), backend="torch", sparsify_1d=True)
    plans = [opt._plan(opt.param_groups[0], p) for p in params]
    masks = []
    for _ in _steps(opt, params, 40, gen):
        for p, tensor_plan in zip(params[:2], plans):
            assert_at_most_n_per_group(p.data, tensor_plan)
        masks.append(params[0].data != 0)
        assert (params[2].data != 0).sum() > 2, "a 1-D tensor is element-wise: no N:M cap"
    # with almost no penalty each full group holds exactly N nonzeros (the short last one min(N, its size))
    assert int(masks[-1].sum()) == params[0].shape[0] * (params[0].shape[1] // m * n + min(n, params[0].shape[1] % m))


def test_a_weight_the_pattern_zeroed_keeps_accumulating_and_comes_back():
    w = torch.nn.Parameter(torch.tensor([[1.0, 0.9, 0.1, 0.05]]))
    opt = sparse_rda.RDA([w], lr=0.1, lam=0.0, momentum_time=None, averaging=1.0, granularity=("nm", 1, 4),
                         backend="torch")  # averaging 1: T sums the gradients (dual averaging)
    kept = []
    for _ in range(30):
        w.grad = torch.tensor([[1.0, 0.0, -1.0, 0.0]])  # pushes the first weight down, the third up
        opt.step()
        kept.append(int(w.data.flatten().nonzero()))
    assert kept[0] == 0 and kept[-1] == 2, kept
    T = opt.state[w]["T"].flatten()
    assert T[2] == pytest.approx(0.1 + 30 * 0.1) and w.data[0, 2] == T[2], "T moved on while the weight was 0"


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_target_sparsity_steers_inside_the_pattern(target):
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in [(32, 64), (16, 32)]]
    opt = sparse_rda.RDA(params, lr=0.5, lam=1e-4, granularity=("nm", 2, 4), backend="torch",
                         target_sparsity=target, total_steps=60)
    for _ in _steps(opt, params, 60, gen):
        for p in params:
            assert_at_most_n_per_group(p.data, opt._plan(opt.param_groups[0], p))
    zeros = sum(int((p.data == 0).sum()) for p in params) / sum(p.numel() for p in params)
    assert zeros == pytest.approx(target, abs=0.005)


def test_the_ramp_starts_at_the_patterns_own_sparsity():
    from sparse_rda import target

    assert target.scheduled_sparsity(0, 100, 0.8, floor=0.5) == 0.5
    assert target.scheduled_sparsity(75, 100, 0.8, floor=0.5) == pytest.approx(0.8)
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in [(32, 64), (16, 32)]]
    opt = sparse_rda.RDA(params, lr=0.5, lam=1e-4, granularity=("nm", 2, 4), backend="torch",
                         target_sparsity=0.5, total_steps=400)
    for _ in _steps(opt, params, 400, gen):
        pass
    group = opt.param_groups[0]
    # asked for the pattern's own sparsity, the controller has nothing to add: no penalty, and it checks as rarely
    # as it may (a ramp from 0 would have halved its interval at every step: the pattern is at 50% from the start)
    assert group["lam"] == 0.0 and group["target_interval"] == target.control_interval(400)
    assert sum(int((p.data == 0).sum()) for p in params) == sum(p.numel() for p in params) // 2
