"""Two-step examples worked out by hand from docs/ALGORITHMS.md, with numbers chosen to be exact."""

import math

import pytest
import torch

import sparse_rda
from sparse_rda import reference


def step_with(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=p.dtype).reshape(p.shape)
    opt.step()


def test_rda_two_steps_by_hand(backend):
    # lr 0.5, no momentum (v = g), reweight_time 0 (A = |w|), M = 5, alpha = 0.5, lam = 0.4
    p = torch.nn.Parameter(torch.tensor([[2.0, -1.0], [0.5, 0.0]]))
    opt = sparse_rda.RDA([p], lr=0.5, lam=0.4, momentum_time=None, reweight_time=0, max_factor=5.0, averaging=0.5, backend=backend)

    step_with(opt, p, [[1.0, 1.0], [-1.0, 0.5]])
    # A = |w0| = [2, 1, .5, 0], max 2, om = 5 / (1 + 4 A / 2) = [1, 5/3, 2.5, 5]
    # B = 0.5 * om = [.5, 5/6, 1.25, 2.5];  T = .5 w0 + .5 w0 - .5 g = [1.5, -1.5, 1, -.25]
    # threshold .4 B = [.2, 1/3, .5, 1] -> w1 = [1.3, -7/6, .5, 0]
    st = opt.state[p]
    torch.testing.assert_close(st["A"], torch.tensor([[2.0, 1.0], [0.5, 0.0]]))
    torch.testing.assert_close(st["B"], torch.tensor([[0.5, 5 / 6], [1.25, 2.5]]))
    torch.testing.assert_close(st["T"], torch.tensor([[1.5, -1.5], [1.0, -0.25]]))
    torch.testing.assert_close(p.data, torch.tensor([[1.3, -7 / 6], [0.5, 0.0]]))
    assert p.data[1, 1].item() == 0.0

    step_with(opt, p, [[0.2, -0.4], [0.0, 1.0]])
    # A = |w1| = [1.3, 7/6, .5, 0], max 1.3; om_i = 5 / (1 + 4 A_i / 1.3)
    A = [1.3, 7 / 6, 0.5, 0.0]
    om = [5 / (1 + 4 * a / 1.3) for a in A]  # [1, 1.0896.., 2.2807.., 5]
    B = [0.5 * b + 0.5 * o for b, o in zip([0.5, 5 / 6, 1.25, 2.5], om)]
    # T = .5 T1 + .5 w1 - .5 g2
    T = [0.5 * t + 0.5 * w - 0.5 * g for t, w, g in zip([1.5, -1.5, 1.0, -0.25], [1.3, -7 / 6, 0.5, 0.0], [0.2, -0.4, 0.0, 1.0])]
    # = [1.3, -1.1333.., .75, -.625]
    w2 = [math.copysign(max(abs(t) - 0.4 * b, 0.0), t) for t, b in zip(T, B)]
    torch.testing.assert_close(st["B"].flatten(), torch.tensor(B))
    torch.testing.assert_close(st["T"].flatten(), torch.tensor(T))
    torch.testing.assert_close(p.data.flatten(), torch.tensor(w2))
    assert w2[3] == 0.0 and st["step"] == 2


def test_rda_momentum_and_weight_decay_by_hand(backend):
    # beta = exp(-lr/tau); with tau = lr / ln 2, beta = 1/2 exactly. alpha = 0, lam = 0: momentum SGD on T.
    lr, wd = 0.25, 0.1
    p = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))
    opt = sparse_rda.RDA([p], lr=lr, lam=0.0, momentum_time=lr / math.log(2), weight_decay=wd, backend=backend)
    step_with(opt, p, [[0.5, 0.5]])
    # g = grad + .1 w0 = [.6, .3]; v = .5 g = [.3, .15]; w1 = w0 - .25 v = [.925, -2.0375]
    torch.testing.assert_close(opt.state[p]["v"], torch.tensor([[0.3, 0.15]]))
    torch.testing.assert_close(p.data, torch.tensor([[0.925, -2.0375]]))
    step_with(opt, p, [[0.0, 1.0]])
    # g = [.0925, 1 - .20375 = .79625]; v = .5 v + .5 g = [.19625, .473125]; w2 = w1 - .25 v
    torch.testing.assert_close(opt.state[p]["v"], torch.tensor([[0.19625, 0.473125]]))
    torch.testing.assert_close(p.data, torch.tensor([[0.925 - 0.0490625, -2.0375 - 0.11828125]]))
    assert p.grad.tolist() == [[0.0, 1.0]], "weight decay must not be written into p.grad"


def test_rda_all_zero_weights_get_the_largest_penalty_weight(backend):
    # max A = 0 on the first step: om = M (no 0/0 NaN)
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = sparse_rda.RDA([p], lr=1.0, lam=1e-3, momentum_time=None, max_factor=500.0, backend=backend)
    step_with(opt, p, [[0.1] * 2] * 3)
    torch.testing.assert_close(opt.state[p]["B"], torch.full((3, 2), 500.0))
    # T = -0.1, threshold 0.5 -> exactly zero
    assert torch.equal(p.data, torch.zeros(3, 2))


def test_grda_two_steps_by_hand(backend):
    # mu = 1: increment c lr^1.5 (n - (n-1)) = c lr^1.5.  c = .1, lr = .04 -> .0008; then lr = .01 -> .0001
    p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.02]))
    opt = sparse_rda.GRDA([p], lr=0.04, c=0.1, mu=1.0, backend=backend)
    step_with(opt, p, [1.0, -2.0, 0.1])
    # acc = [.96, -.42, .016], l1 = .0008
    torch.testing.assert_close(opt.state[p]["acc"], torch.tensor([0.96, -0.42, 0.016]))
    assert opt.state[p]["l1"] == pytest.approx(0.0008, rel=1e-12)
    torch.testing.assert_close(p.data, torch.tensor([0.9592, -0.4192, 0.0152]))
    opt.param_groups[0]["lr"] = 0.01
    step_with(opt, p, [0.0, 0.0, 2.0])
    # acc = [.96, -.42, -.004], l1 = .0009 (the lr change slows growth, no reset)
    assert opt.state[p]["l1"] == pytest.approx(0.0009, rel=1e-12)
    torch.testing.assert_close(p.data, torch.tensor([0.9591, -0.4191, -0.0031]))


def test_grda_threshold_follows_the_closed_form_at_constant_lr():
    c, lr, mu = 0.004, 0.05, 0.55
    l1 = sum(reference.grda_threshold_increment(c, lr, mu, n) for n in range(1, 201))
    assert l1 == pytest.approx(c * lr**0.5 * (200 * lr) ** mu, rel=1e-12)


def test_soft_threshold_and_reweight_factor():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    torch.testing.assert_close(reference.soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))
    A = torch.tensor([0.0, 1.0, 4.0])
    torch.testing.assert_close(reference.reweight_factor(A, A.max(), 5.0), torch.tensor([5.0, 2.5, 1.0]))
    zero = torch.zeros(3)
    torch.testing.assert_close(reference.reweight_factor(zero, zero.max(), 5.0), torch.full((3,), 5.0))


def test_reweight_is_the_log_penalty_majorizer():
    # om = C / (A + eps) with eps = max A / (M - 1), C = M eps: the MM weight of sum log(|w| + eps)
    A, M = torch.rand(50, dtype=torch.float64), 500.0
    eps = A.max() / (M - 1)
    torch.testing.assert_close(reference.reweight_factor(A, A.max(), M), M * eps / (A + eps))
