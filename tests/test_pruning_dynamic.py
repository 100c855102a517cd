"""Dynamic sparse training ("rigl" and "set", sparse_rda/pruning/dynamic.py): the ERK layer densities
(pruning.erk_densities) against hand-computed values, the sparse initialisation, each drop-and-grow update against
an independent recomputation, and no more updates after T_end."""

import math

import pytest
import torch

from pruning_helpers import WEIGHTS, backward, kept, mlp, sgd, train
from sparse_rda import pruning
from sparse_rda.pruning.schedules import rigl_drop_fraction

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------------------------------------
# ERK


def test_erk_densities_hand_computed():
    # raw densities (4 + 4) / 16 = 0.5 and (8 + 8) / 64 = 0.25; eps (0.5 * 16 + 0.25 * 64) = 0.25 * 80 -> eps = 5/6
    assert pruning.erk_densities([(4, 4), (8, 8)], 0.25) == pytest.approx([5 / 12, 5 / 24])


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.5])
def test_erk_densities_add_up_to_the_budget(density):
    shapes = [(16, 8, 3, 3), (300, 784), (100, 300), (10, 100), (4, 2)]
    numels = [math.prod(s) for s in shapes]
    d = pruning.erk_densities(shapes, density)
    assert sum(di * n for di, n in zip(d, numels)) == pytest.approx(density * sum(numels))
    assert all(0 < di <= 1 for di in d)
    sparse = [i for i in range(len(d)) if d[i] < 1]
    ratio = [d[i] * math.prod(shapes[i]) / sum(shapes[i]) for i in sparse]  # eps, the same for every sparse layer
    assert max(ratio) == pytest.approx(min(ratio))


def test_erk_caps_layers_at_dense_and_rescales_the_rest():
    # the (10, 2) layer would get 248.5 * 0.6 > 1: dense, and the big layer takes the rest of the budget
    d = pruning.erk_densities([(1000, 1000), (10, 2)], 0.5)
    assert d[1] == 1.0
    assert d[0] == pytest.approx((0.5 * 1_000_020 - 20) / 1_000_000)


# ----------------------------------------------------------------------------------------------------------
# RigL / SET


def test_rigl_starts_at_erk_counts():
    model = mlp()
    pruner = pruning.make("rigl", model, 0.5, 40)
    # ERK at 0.5: eps = 96 / 44, densities 0.409 and 0.682 -> 52.36 and 43.64; 96 in all -> 52 and 44
    assert (kept(pruner, "0.weight"), kept(pruner, "2.weight")) == (52, 44)
    for name in WEIGHTS:
        assert (pruner.params[name][~pruner.masks[name]] == 0).all()


def drop_grow_step(method, seed=0):
    """Train to the first update (step 10 of 40, T_end = 30) and return what the update saw and did."""
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make(method, model, 0.5, 40, update_every=10, seed=seed)
    train(model, pruner, opt, 9)
    backward(model, pruner, opt, 9)
    grads = {n: pruner.params[n].grad.clone() for n in WEIGHTS}
    pruner.before_step(opt)
    opt.step()
    weights = {n: pruner.params[n].detach().clone() for n in WEIGHTS}
    old = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.after_step(opt)
    return model, opt, pruner, grads, weights, old


def expected_drop(keep, weight, count):
    """The `count` kept positions of smallest |w|, by sorting (independent of the library's topk)."""
    order = torch.argsort(weight.abs().flatten().masked_fill(~keep.flatten(), math.inf))
    dropped = torch.zeros(keep.numel(), dtype=torch.bool)
    dropped[order[:count]] = True
    return dropped.view(keep.shape)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_sparse_init_is_rescaled_by_the_layer_density(method):
    dense = {n: p.detach().clone() for n, p in mlp().named_parameters()}
    model = mlp()
    pruner = pruning.make(method, model, 0.75, 100)
    plain = pruning.make(method, mlp(), 0.75, 100, rescale_init=False)
    for name in WEIGHTS:
        keep = pruner.masks[name]
        density = float(keep.float().mean())
        assert density < 1
        torch.testing.assert_close(pruner.params[name][keep], dense[name][keep] / density**0.5)
        torch.testing.assert_close(plain.params[name][keep], dense[name][keep])
        assert (pruner.params[name][~keep] == 0).all()
    assert torch.equal(model[0].bias, dense["0.bias"]), "biases untouched"


def test_rigl_drops_smallest_and_grows_largest_gradient():
    model, opt, pruner, grads, weights, old = drop_grow_step("rigl")
    fraction = 0.15 * (1 + math.cos(math.pi / 3))  # f(10) with T_end = 30: 0.225
    assert rigl_drop_fraction(10, 30) == pytest.approx(fraction)
    counts = {"0.weight": 12, "2.weight": 10}  # round(0.225 * 52) = round(11.7), round(0.225 * 44) = round(9.9)
    new_total = 0
    for name in WEIGHTS:
        n = counts[name]
        assert round(fraction * int(old[name].sum())) == n
        after_drop = old[name] & ~expected_drop(old[name], weights[name], n)
        order = torch.argsort(grads[name].abs().flatten().masked_fill(after_drop.flatten(), -math.inf),
                              descending=True)
        grown = torch.zeros(old[name].numel(), dtype=torch.bool)
        grown[order[:n]] = True
        expected = after_drop | grown.view(old[name].shape)
        assert torch.equal(pruner.masks[name], expected)
        assert pruner.masks[name].sum() == old[name].sum()
        new = pruner.masks[name] & ~old[name]  # grown where there was no weight: starts at 0, no momentum
        new_total += int(new.sum())
        momentum = opt.state[pruner.params[name]]["momentum_buffer"]
        assert (pruner.params[name][new] == 0).all() and (momentum[new] == 0).all()
        assert (pruner.params[name][~pruner.masks[name]] == 0).all() and (momentum[~pruner.masks[name]] == 0).all()
    assert new_total > 0


def test_set_drops_smallest_and_grows_as_many_at_random():
    _, _, pruner, grads, weights, old = drop_grow_step("set")
    _, _, again, _, _, _ = drop_grow_step("set")
    _, _, other_seed, _, _, _ = drop_grow_step("set", seed=1)
    for name, n in (("0.weight", 12), ("2.weight", 10)):
        after_drop = old[name] & ~expected_drop(old[name], weights[name], n)
        new = pruner.masks[name]
        assert (new & after_drop).sum() == after_drop.sum() and (new & ~after_drop).sum() == n
        assert torch.equal(new, again.masks[name])  # seeded
    rigl = drop_grow_step("rigl")[2]
    assert any(not torch.equal(pruner.masks[n], rigl.masks[n]) for n in WEIGHTS)
    assert any(not torch.equal(pruner.masks[n], other_seed.masks[n]) for n in WEIGHTS)


def test_rigl_and_set_stop_updating_at_t_end():
    model = mlp()
    pruner = pruning.make("set", model, 0.5, 40, update_every=2)  # T_end = 30
    opt = sgd(model)
    train(model, pruner, opt, 30)
    frozen = {n: m.clone() for n, m in pruner.masks.items()}
    train(model, pruner, opt, 10, start=30)
    assert all(torch.equal(frozen[n], pruner.masks[n]) for n in WEIGHTS)
