"""RDA against the published update rule (tests/spec.py) and its special cases."""

import math

import pytest
import torch

import sparse_rda
from drive import make_params, run_side_by_side
from helpers import assert_state_close, assert_weights_match, rda_error_scales

SHAPES = [(7, 5), (13,), (4, 3, 3, 3), (1,), (1, 1), (33, 17)]


def check_against_spec(opt, spec_params, spec_states, inputs, rtol=1e-6):
    """One step of the optimizer vs the spec from the same inputs. T and v are sums that can cancel: their
    errors are judged against the size of their terms."""
    group = opt.param_groups[0]
    for i, (p, q, st, before) in enumerate(zip(group["params"], spec_params, spec_states, inputs)):
        mine = opt.state[p]
        assert mine["step"] == st["step"], f"tensor {i}: step count"
        T_scale, v_scale = rda_error_scales(group, before, p.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert mine[key].dtype == torch.float32
            assert_state_close(mine[key], st[key], rtol, f"tensor {i} state {key}", scale)
        if "occupancy" in st:  # block mode: the group prox of the spec, tile by tile
            assert mine["occupancy"].flatten().tolist() == st["occupancy"], f"tensor {i} occupancy"
            assert_state_close(p.data, q.data, rtol, f"tensor {i} weights", T_scale)
        else:
            assert_weights_match(p.data, q.data, st["T"], group["lam"] * st["B"], rtol, f"tensor {i} weights", T_scale)


@pytest.mark.parametrize("granularity", ["element", "kernel", "channel", ("block", 4, 3)])
def test_100_steps_with_every_feature_match_the_published_rule(granularity, backend):
    """Momentum, weight decay, reweighting, the cosine lr/averaging schedule and a manual lr change."""
    params = make_params(SHAPES)
    lam = 2e-3 if isinstance(granularity, tuple) else 2e-4  # whole tiles need a larger penalty to die
    opt_kwargs = dict(lr=1.0, lam=lam, momentum_time=9.5, weight_decay=5e-4, granularity=granularity)
    schedule = {}

    def before_step(k, opt):
        if k == 0:
            schedule["s"] = sparse_rda.schedules.CosineRDA(opt, total_steps=120)
        elif k == 60:  # a user changes lr by hand mid-run; the schedule keeps going from the new base
            opt.param_groups[0]["lr"] *= 0.5
        if k:
            schedule["s"].step()

    opt, _, _ = run_side_by_side(sparse_rda.RDA, params, 100, group_kwargs=opt_kwargs, before_step=before_step,
                                 check=check_against_spec, backend=backend)
    # the run really prunes and really averages
    assert 0.5 < opt.param_groups[0]["averaging"] < 1
    assert any((p.data == 0).any() for p in params if p.dim() >= 2)
    assert all((p.data != 0).all() for p in params if p.dim() < 2), "biases are not penalized by default"


@pytest.mark.parametrize("options", [
    dict(reweight=False),
    dict(momentum_time=None),
    dict(reweight_time=3.0, max_factor=20.0),
    dict(reweight_time=0),
    dict(averaging=1.0),
    dict(sparsify_1d=True),
    dict(maximize=True),
])
def test_options_match_the_published_rule(options, backend):
    params = make_params(SHAPES, zero_fraction=0.2)
    kwargs = {**dict(lr=0.5, lam=1e-3, averaging=0.3), **options}
    run_side_by_side(sparse_rda.RDA, params, 30, group_kwargs=kwargs, check=check_against_spec, skip={0},
                     backend=backend)


def test_averaging_zero_is_proximal_sgd_with_momentum(backend):
    # alpha = 0: T = w - s v, w = S_{lam s om}(T)
    lr, lam, tau = 0.3, 0.01, 4.0
    beta = math.exp(-lr / tau)
    p = make_params([(6, 4)])[0]
    w, v = p.detach().clone(), torch.zeros(6, 4)
    opt = sparse_rda.RDA([p], backend=backend, lr=lr, lam=lam, momentum_time=tau, reweight=False)
    for _ in range(10):
        g = torch.randn(6, 4)
        p.grad = g.clone()
        opt.step()
        v = beta * v + (1 - beta) * g
        w = sparse_rda.reference.soft_threshold(w - lr * v, lam * lr)
    assert_state_close(p.data, w, 1e-6, "prox-SGD")


def test_averaging_one_is_weighted_l1_rda(backend):
    # alpha = 1, no momentum, plain l1: T_n = w_0 - lr sum g,  B_n = n lr,  w_n = S_{lam n lr}(T_n)
    lr, lam, n = 0.1, 0.05, 25
    p = make_params([(9, 3)])[0]
    w0, gsum = p.detach().clone(), torch.zeros(9, 3)
    opt = sparse_rda.RDA([p], backend=backend, lr=lr, lam=lam, momentum_time=None, reweight=False, averaging=1.0)
    for _ in range(n):
        g = torch.randn(9, 3)
        gsum += g
        p.grad = g
        opt.step()
    assert_state_close(opt.state[p]["B"], torch.full((9, 3), n * lr), 1e-6, "B")
    assert_state_close(opt.state[p]["T"], w0 - lr * gsum, 1e-5, "T")
    expected = sparse_rda.reference.soft_threshold(w0 - lr * gsum, lam * n * lr)
    assert_weights_match(p.data, expected, w0 - lr * gsum, torch.full((9, 3), lam * n * lr), 1e-5)
    assert (p.data == 0).any()


def test_without_penalty_it_is_sgd_with_dampened_momentum(backend):
    # lam = 0, alpha = 0: v = beta v + (1 - beta) g; w -= s v  ==  SGD(lr = s (1 - beta), momentum = beta)
    lr, tau = 1.0, 9.5
    beta = math.exp(-lr / tau)
    p = make_params([(10, 10)])[0]
    q = torch.nn.Parameter(p.detach().clone())
    rda = sparse_rda.RDA([p], backend=backend, lr=lr, lam=0.0, momentum_time=tau)
    sgd = torch.optim.SGD([q], lr=lr * (1 - beta), momentum=beta)
    for _ in range(20):
        g = torch.randn(10, 10)
        p.grad, q.grad = g.clone(), g.clone()
        rda.step()
        sgd.step()
    assert_state_close(p.data, q.data, 1e-5, "vs SGD")


def test_structured_modes_threshold_whole_groups_evenly(backend):
    p = make_params([(6, 4, 3, 3)])[0]
    for granularity, dims, size in (("kernel", (2, 3), 9), ("channel", (1, 2, 3), 36)):
        q = torch.nn.Parameter(p.detach().clone())
        opt = sparse_rda.RDA([q], backend=backend, lr=1.0, lam=1e-3, granularity=granularity)
        q.grad = torch.randn_like(q)
        opt.step()
        B = opt.state[q]["B"]
        # one threshold per group, and om carries sqrt(group size) (om in [sqrt(size), M sqrt(size)])
        assert torch.equal(B, B.amax(dim=dims, keepdim=True).expand_as(B))
        assert B.min() >= math.sqrt(size) * (1 - 1e-6) and B.max() <= 500 * math.sqrt(size) * (1 + 1e-6)


def test_penalize_false_group_is_not_thresholded(backend):
    p = make_params([(8, 8)])[0]
    opt = sparse_rda.RDA([{"params": [p], "penalize": False}], lr=1.0, lam=10.0, backend=backend)
    p.grad = torch.randn_like(p)
    opt.step()
    assert (p.data != 0).all() and torch.equal(opt.state[p]["B"], torch.zeros(8, 8))


def test_lr_scheduler_from_torch_drives_lr():
    p = make_params([(5, 5)])[0]
    opt = sparse_rda.RDA([p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    lrs = []
    for _ in range(5):
        p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])
