"""Pruning baselines (sparse_rda/pruning): schedules against hand-computed values, each method's selection rule against
an independent recomputation, the mask/optimizer-state contract, checkpoints, SparseLinear tile maps, bad input."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_rda import pruning
from sparse_rda.nn import SparseLinear
from sparse_rda.pruning.schedules import cubic_sparsity, imp_round_rate, imp_rounds, rigl_drop_fraction
from sparse_rda.reference import tile_sums

WEIGHTS = ("0.weight", "2.weight")  # the prunable tensors of mlp(): 128 + 64 = 192 weights
N_WEIGHTS = 192
SMALL_RUN = {"rigl": {"update_every": 4}, "set": {"update_every": 4}}  # the default 100 exceeds these runs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: intra-op threads only add scheduling noise on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def batch(step):
    """A fixed batch per step index, so interrupted and uninterrupted runs see the same data."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(32, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen)


def backward(model, pruner, opt, step):
    x, y = batch(step)
    loss = F.cross_entropy(model(x), y) + pruner.penalty()
    opt.zero_grad()
    loss.backward()


def train(model, pruner, opt, steps, start=0):
    """The protocol of the module docstring."""
    for step in range(start, start + steps):
        backward(model, pruner, opt, step)
        pruner.before_step(opt)
        opt.step()
        pruner.after_step(opt)


def kept(pruner, name=None):
    names = [name] if name else list(pruner.masks)
    return sum(int(pruner.masks[n].sum()) for n in names)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


# ----------------------------------------------------------------------------------------------------------
# GMP


def test_cubic_sparsity_hand_computed():
    # t0 = 10, n dt = 65, s_i = 0, s_f = 0.9
    assert cubic_sparsity(10, 10, 65, 0.0, 0.9) == 0.0
    assert cubic_sparsity(15, 10, 65, 0.0, 0.9) == pytest.approx(0.9 * (1 - (12 / 13) ** 3))  # 0.192126
    assert cubic_sparsity(15, 10, 65, 0.0, 0.9) == pytest.approx(0.1921256, abs=1e-6)
    assert cubic_sparsity(45, 10, 65, 0.0, 0.9) == pytest.approx(0.8115157, abs=1e-6)  # 0.9 (1 - (6/13)^3)
    assert cubic_sparsity(75, 10, 65, 0.0, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(5, 10, 65, 0.2, 0.9) == pytest.approx(0.2)
    assert cubic_sparsity(99, 10, 65, 0.2, 0.9) == pytest.approx(0.9)


def test_gmp_prunes_to_the_cubic_schedule_per_layer():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("gmp", model, 0.9, 100, interval=5)  # ramp from step 10 to 75, a point every 5 steps
    # per-layer keep counts, round((1 - s_t) * numel) for numel 128 and 64:
    # s_15 = 0.192126: 103.41 -> 103, 51.70 -> 52;  s_45 = 0.811516: 24.13 -> 24, 12.06 -> 12;  s_75 = 0.9: 13, 6
    expected = {9: (128, 64), 10: (128, 64), 15: (103, 52), 19: (103, 52), 45: (24, 12), 75: (13, 6), 100: (13, 6)}
    before = {n: m.clone() for n, m in pruner.masks.items()}
    for step in range(100):
        backward(model, pruner, opt, step)
        opt.step()
        weights = {n: pruner.params[n].detach().clone() for n in WEIGHTS}
        pruner.after_step(opt)
        k = pruner.step
        for name in WEIGHTS:
            mask, old = pruner.masks[name], before[name]
            assert not (mask & ~old).any(), f"step {k}: a pruned weight of {name} came back"
            newly = old & ~mask
            if newly.any():  # the smallest |w| among those still kept went
                assert weights[name].abs()[newly].max() <= weights[name].abs()[mask].min()
        if k in expected:
            assert (kept(pruner, "0.weight"), kept(pruner, "2.weight")) == expected[k], f"step {k}"
        before = {n: m.clone() for n, m in pruner.masks.items()}
    assert pruner.masks["0.weight"].sum() == 13 and (model[0].weight[~pruner.masks["0.weight"]] == 0).all()


def test_gmp_global_scope_keeps_one_threshold():
    model = mlp()
    with torch.no_grad():  # the second layer's weights all larger than the first's: global pruning spares them
        w = model[2].weight
        w.copy_(torch.sign(w) * (5 + w.abs()))
    pruner = pruning.make("gmp", model, 0.5, 10, begin=0.0, end=0.5, interval=5, scope="global")
    train(model, pruner, sgd(model), 10)
    assert kept(pruner) == 96
    assert kept(pruner, "2.weight") == 64 and kept(pruner, "0.weight") == 32


# ----------------------------------------------------------------------------------------------------------
# Cyclical


def test_cyclical_sparsity_drops_back_at_each_cycle_start():
    model = mlp()
    opt = sgd(model)
    # 2 cycles over steps 0..60 (30 each), points every 10 steps: 0, 10, 20 | 30, 40, 50; the mask is fixed from 50
    pruner = pruning.make("cyclical", model, 0.8, 60, cycles=2, begin=0.0, end=1.0, interval=10)
    # s at offsets 0, 10, 20 of a cycle: 0, 0.8 (1 - (1/2)^3) = 0.7, 0.8 -> keeps (128, 64), (38, 19), (26, 13)
    expected = {10: (38, 19), 19: (38, 19), 20: (26, 13), 29: (26, 13), 30: (128, 64), 39: (128, 64),
                40: (38, 19), 50: (26, 13), 60: (26, 13)}
    for step in range(60):
        train(model, pruner, opt, 1, start=step)
        k = pruner.step
        if k in expected:
            assert (kept(pruner, "0.weight"), kept(pruner, "2.weight")) == expected[k], f"step {k}"
        if k == 29:  # pruned weights are zeros with zeroed momentum, as in GMP
            pruned_before_restart = {n: ~m for n, m in pruner.masks.items()}
            for name in WEIGHTS:
                p = pruner.params[name]
                assert (p[pruned_before_restart[name]] == 0).all()
                assert (opt.state[p]["momentum_buffer"][pruned_before_restart[name]] == 0).all()
        if k == 30:  # the new cycle unmasks them: they restart from 0 and take gradient steps with the rest
            for name in WEIGHTS:
                assert pruner.masks[name].all()
                assert (pruner.params[name][pruned_before_restart[name]] != 0).any()
    for name in WEIGHTS:  # after the last cycle: an ordinary fixed mask
        assert (pruner.params[name][~pruner.masks[name]] == 0).all()
        assert (opt.state[pruner.params[name]]["momentum_buffer"][~pruner.masks[name]] == 0).all()


def one_layer_quadratic(method, steps=20, **kwargs):
    """A 4x8 weight trained on 0.5 ||W - T||^2 for 40 steps, pruned to 0.5 with a point every 10 steps from step
    0. Element (0, 0) starts smallest (pruned at step 10), then its target jumps to 10: its gradient (taken at the
    pruned value 0) is -10 every step. Returns its mask and value after `steps` steps, and the pruner."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.1, 3.2, 32).view(4, 8))
    target = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    pruner = pruning.make(method, layer, 0.5, 40, begin=0.0, end=1.0, interval=10, **kwargs)
    for step in range(steps):
        if step == 10:
            assert not pruner.masks["weight"][0, 0] and layer.weight[0, 0] == 0
            target[0, 0] = 10.0
        loss = 0.5 * ((layer.weight - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        pruner.before_step(opt)
        opt.step()
        pruner.after_step(opt)
    return pruner.masks["weight"][0, 0].item(), layer.weight[0, 0].item(), pruner


def test_cyclical_brings_back_a_wrongly_pruned_weight_in_the_next_cycle():
    # 2 cycles of 20 steps: pruned at 10; unmasked at 20 after that step took it from 0 to 0.1 * 10 = 1;
    # 10 more steps toward 10 (w += 0.1 (10 - w)): 10 - 9 * 0.9^10; then the prune at 30 keeps it (the largest)
    keep, value, pruner = one_layer_quadratic("cyclical", steps=30, cycles=2)
    assert keep and value == pytest.approx(10 - 9 * 0.9**10, rel=1e-5)
    keep, value, _ = one_layer_quadratic("cyclical", steps=20, cycles=2)
    assert keep and value == pytest.approx(1.0, rel=1e-5), "unmasked at the second cycle's start"


def test_gmp_keeps_that_weight_pruned():
    keep, value, _ = one_layer_quadratic("gmp")
    assert not keep and value == 0.0


# ----------------------------------------------------------------------------------------------------------
# ERK and RigL / SET


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


# ----------------------------------------------------------------------------------------------------------
# SNIP


def test_snip_keeps_the_global_top_grad_times_weight():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("snip", model, 0.9, 10)
    backward(model, pruner, opt, 0)
    scores = torch.cat([(model.get_parameter(n).grad * model.get_parameter(n)).abs().flatten() for n in WEIGHTS])
    top = torch.argsort(scores, descending=True)[:19]  # round(0.1 * 192) = 19
    expected = torch.zeros(N_WEIGHTS, dtype=torch.bool)
    expected[top] = True
    pruner.before_step(opt)
    got = torch.cat([pruner.masks[n].flatten() for n in WEIGHTS])
    assert torch.equal(got, expected)
    opt.step()
    pruner.after_step(opt)
    train(model, pruner, opt, 5, start=1)
    assert torch.equal(torch.cat([pruner.masks[n].flatten() for n in WEIGHTS]), expected)
    assert all((model.get_parameter(n)[~pruner.masks[n]] == 0).all() for n in WEIGHTS)


# ----------------------------------------------------------------------------------------------------------
# IMP


def test_imp_default_rounds_and_rate():
    assert imp_rounds(0.5) == 4  # log 0.5 / log 0.8 = 3.1
    assert imp_rounds(0.9) == 10 and imp_rounds(0.99) == 10  # 10.3 and 20.6, capped
    assert imp_round_rate(0.9, 10) == pytest.approx(0.2057, abs=1e-4)
    assert imp_round_rate(0.99, 10) == pytest.approx(0.3690, abs=1e-4)


def test_imp_round_densities():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("imp-lr", model, 0.9, 110)  # 10 prunes at steps 10, 20, ..., 100
    assert pruner.rounds == 10 and pruner.rate == pytest.approx(1 - 0.1 ** 0.1)
    for step in range(110):
        train(model, pruner, opt, 1, start=step)
        prunes = min(pruner.step // 10, 10)
        assert kept(pruner) == int(N_WEIGHTS * 0.1 ** (prunes / 10) + 0.5), f"step {pruner.step}"
    assert kept(pruner) == 19


def test_imp_weight_rewinding_restores_the_saved_weights():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("imp-weight", model, 0.75, 40, rounds=3, rewind_step=2)  # prunes at 10, 20, 30
    train(model, pruner, opt, 2)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, pruner, opt, 7, start=2)
    assert not torch.equal(model[2].bias, saved["2.bias"])
    train(model, pruner, opt, 1, start=9)
    assert kept(pruner) == round(N_WEIGHTS * 0.25 ** (1 / 3))  # 121
    for name, p in model.named_parameters():
        keep = pruner.masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p[keep], saved[name][keep]), name
        assert (p[~keep] == 0).all()
        assert (opt.state[p]["momentum_buffer"] == 0).all()


def test_imp_lr_rewinding_keeps_the_trained_weights():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("imp-lr", model, 0.75, 40, rounds=3)
    train(model, pruner, opt, 9)
    backward(model, pruner, opt, 9)
    opt.step()
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner.after_step(opt)
    for name, p in model.named_parameters():
        keep = pruner.masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p[keep], trained[name][keep]) and (p[~keep] == 0).all()


def test_lr_step_replays_the_schedule_each_round():
    model = mlp()
    lr_rewind = pruning.make("imp-lr", model, 0.9, 110)  # rounds of 10 steps
    assert [lr_rewind.lr_step(s) for s in (0, 5, 9, 10, 15, 105, 109)] == [0, 55, 99, 0, 55, 55, 99]
    weight_rewind = pruning.make("imp-weight", model, 0.9, 110, rewind_step=2)
    # round 0 maps onto the whole schedule; later rounds onto [2/10 of it, the end): 110 * (0.2 + 0.8 * i / 10)
    assert [weight_rewind.lr_step(s) for s in (0, 5, 10, 15, 19, 20)] == [0, 55, 22, 66, 101, 22]
    assert [pruning.make("gmp", model, 0.9, 110).lr_step(s) for s in (0, 37, 109)] == [0, 37, 109]


# ----------------------------------------------------------------------------------------------------------
# HALO


def test_halo_penalty_and_scale_step_hand_computed():
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    pruner = pruning.make("halo", layer, 0.5, 10, xi=0.1, psi=0.2, scale_lr=0.5)
    lam = pruner.scales["weight"]
    with torch.no_grad():
        lam.copy_(torch.tensor([[1.0, 2.0], [0.5, 1.0]]))
    penalty = pruner.penalty()
    # xi (1/1 + 2/4 + 0.5/0.25 + 0) = 0.35;  psi |(1 + 2 + 0.5 + 1) - 4| = 0.1  (P = 4 weights)
    assert penalty.item() == pytest.approx(0.45)
    penalty.backward()
    # d/dlam = -2 xi |w| / lam^3 + psi sign(sum |lam| - P) sign(lam): -0.2 [1, 1/4, 4, 0] + 0.2
    assert torch.allclose(lam.grad, torch.tensor([[0.0, 0.15], [-0.6, 0.2]]))
    # d/dw = xi sign(w) / lam^2
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.1, -0.025], [0.4, 0.0]]))
    pruner.after_step(torch.optim.SGD(layer.parameters(), lr=0.0))
    assert torch.allclose(lam, torch.tensor([[1.0, 1.925], [0.8, 0.9]])) and lam.grad is None


def test_halo_scale_gradient_matches_the_analytic_form():
    model = mlp()
    pruner = pruning.make("halo", model, 0.9, 10, xi=1e-2, psi=3e-3, budget=150.0)
    with torch.no_grad():
        for lam in pruner.scales.values():
            lam.uniform_(0.5, 1.5)
    pruner.penalty().backward()
    total = sum(lam.detach().abs().sum() for lam in pruner.scales.values())
    for name in WEIGHTS:
        w, lam = pruner.params[name].detach(), pruner.scales[name]
        analytic = -2 * 1e-2 * w.abs() / lam.detach() ** 3 + 3e-3 * torch.sign(total - 150.0) * torch.sign(lam)
        torch.testing.assert_close(lam.grad, analytic, rtol=1e-5, atol=1e-9)


def test_halo_prunes_only_at_finalize_globally():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("halo", model, 0.9, 20)
    train(model, pruner, opt, 20)
    assert pruner.density() == 1.0 and pruner.sparsity() == 0.0
    magnitudes = torch.cat([model.get_parameter(n).detach().abs().flatten() for n in WEIGHTS])
    threshold = magnitudes.sort(descending=True).values[18]  # the 19th largest survives
    pruner.finalize(opt)
    kept_values = torch.cat([model.get_parameter(n)[pruner.masks[n]].abs() for n in WEIGHTS])
    assert kept_values.numel() == 19 and kept_values.min() == threshold


# ----------------------------------------------------------------------------------------------------------
# Every method: final sparsity, mask/optimizer contract, checkpoints


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
@pytest.mark.parametrize("method", pruning.METHODS)
def test_every_method_ends_at_the_requested_sparsity(method, sparsity):
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make(method, model, sparsity, 60, **SMALL_RUN.get(method, {}))
    train(model, pruner, opt, 60)
    pruner.finalize(opt)
    # one element of rounding per tensor at most (exact for the global and the apportioned ERK counts)
    assert abs((N_WEIGHTS - kept(pruner)) - sparsity * N_WEIGHTS) <= 0.5 * len(WEIGHTS)
    for name in WEIGHTS:
        assert (model.get_parameter(name)[~pruner.masks[name]] == 0).all()
    if method == "set":  # random growth may land in units with no gradient: such weights stay exactly 0
        assert pruner.sparsity() >= 1 - pruner.density()
    else:
        assert pruner.sparsity() == pytest.approx(1 - pruner.density())


@pytest.mark.parametrize("method", pruning.METHODS)
def test_resume_from_state_dicts_matches_an_uninterrupted_run(method):
    kwargs = SMALL_RUN.get(method, {})

    def setup(seed):
        model = mlp(seed)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        return model, opt, pruning.make(method, model, 0.9, 40, **kwargs)

    model, opt, pruner = setup(0)
    train(model, pruner, opt, 40)

    model2, opt2, pruner2 = setup(0)
    train(model2, pruner2, opt2, 17)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "pruner": pruner2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    model3, opt3, pruner3 = setup(seed=1)  # different initial weights: everything must come from the checkpoint
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    pruner3.load_state_dict(saved["pruner"])
    assert pruner3.step == 17
    train(model3, pruner3, opt3, 23, start=17)

    for name, p in model.named_parameters():
        assert torch.equal(p, model3.get_parameter(name)), name
    for name in WEIGHTS:
        assert torch.equal(pruner.masks[name], pruner3.masks[name])


def test_masks_survive_a_state_dict_round_trip_and_bad_states_are_refused():
    model = mlp()
    pruner = pruning.make("magnitude", model, 0.9, 10, prune_at=0.0)
    fresh = pruning.make("magnitude", mlp(1), 0.9, 10, prune_at=0.5)
    fresh.load_state_dict(pruner.state_dict())
    assert all(torch.equal(fresh.masks[n], pruner.masks[n]) for n in WEIGHTS) and kept(fresh) == 19
    with pytest.raises(ValueError, match="state"):
        pruning.make("gmp", mlp(), 0.9, 10).load_state_dict(pruner.state_dict())
    other = pruning.make("magnitude", nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5)), 0.9, 10)
    with pytest.raises(ValueError, match="state"):
        other.load_state_dict(pruner.state_dict())


@pytest.mark.parametrize("make_opt, keys", [
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), ("momentum_buffer",)),
    (lambda params: torch.optim.Adam(params, lr=0.01), ("exp_avg", "exp_avg_sq")),
])
def test_optimizer_state_of_pruned_weights_is_zero_after_each_step(make_opt, keys):
    model = mlp()
    opt = make_opt(model.parameters())
    pruner = pruning.make("magnitude", model, 0.5, 10, prune_at=0.0)
    for step in range(3):
        backward(model, pruner, opt, step)
        pruner.before_step(opt)
        opt.step()
        for name in WEIGHTS:  # the dense gradient wrote state at the pruned positions ...
            state = opt.state[model.get_parameter(name)]
            assert all((state[key][~pruner.masks[name]] != 0).any() for key in keys)
        pruner.after_step(opt)
        for name in WEIGHTS:  # ... which the pruner zeroes, with the weights, keeping the rest
            p, keep = model.get_parameter(name), pruner.masks[name]
            state = opt.state[p]
            assert (p[~keep] == 0).all() and (p[keep] != 0).all()
            for key in keys:  # (a kept weight may have no gradient: a hidden unit can lose all its outputs)
                assert (state[key][~keep] == 0).all() and (state[key][keep] != 0).any()


# ----------------------------------------------------------------------------------------------------------
# SparseLinear: the tile map follows the mask


def sparse_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(32, 32, block=(16, 16)), nn.Tanh(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight[:16, :16].mul_(1e-6)  # tile (0, 0) holds the 256 smallest weights
    return model


def live_tiles(mask):
    return tile_sums(mask.float(), (16, 16)) > 0


def sparse_steps(model, pruner, opt, steps):
    """The protocol on sparse_mlp with random batches; yields after each step."""
    for step in range(steps):
        x, y = torch.randn(8, 32), torch.randint(0, 4, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.before_step(opt)
        opt.step()
        pruner.after_step(opt)
        yield step


def test_sparse_linear_occupancy_follows_the_mask():
    model = sparse_mlp()
    layer = model[0]
    assert layer.occupancy.all()
    pruner = pruning.make("magnitude", model, 0.25, 4, prune_at=0.0, prunable=["0.weight"])
    assert torch.equal(layer.occupancy, torch.tensor([[False, True], [True, True]]))
    opt = sgd(model)
    for _ in sparse_steps(model, pruner, opt, 2):
        pass
    assert torch.equal(layer.occupancy, live_tiles(pruner.masks["0.weight"]))
    assert (layer.weight[:16, :16] == 0).all()


def test_sparse_linear_map_covers_kept_weights_that_are_zero():
    model = sparse_mlp()
    layer = model[0]
    pruner = pruning.Pruner(model, 0.0, 1, prunable=["0.weight"])
    keep = torch.zeros(32, 32, dtype=torch.bool)
    keep[20, 30] = True  # tile (1, 1); RigL grows weights like this one at 0
    with torch.no_grad():
        layer.weight[20, 30] = 0.0
    pruner.set_masks({"0.weight": keep})
    assert torch.equal(layer.occupancy, torch.tensor([[False, False], [False, True]]))
    assert (layer.weight == 0).all()
    # a checkpoint: loading the model recomputes the map from the (all-zero) weight, the pruner re-points it
    state = pruner.state_dict()
    model.load_state_dict(model.state_dict())
    assert not layer.occupancy.any()
    pruner.load_state_dict(state)
    assert torch.equal(layer.occupancy, torch.tensor([[False, False], [False, True]]))


def test_rigl_keeps_sparse_linear_maps_in_step():
    model = sparse_mlp()
    pruner = pruning.make("rigl", model, 0.9, 8, update_every=2, prunable=["0.weight"])
    opt = sgd(model)
    initial = pruner.masks["0.weight"].clone()
    for _ in sparse_steps(model, pruner, opt, 6):
        assert torch.equal(model[0].occupancy, live_tiles(pruner.masks["0.weight"]))
    assert not torch.equal(initial, pruner.masks["0.weight"])  # the updates did move weights


# ----------------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the parameter, nothing changed


@pytest.mark.parametrize("method, kwargs, name", [
    ("nope", {}, "name"),
    ("gmp", {"sparsity": 1.0}, "sparsity"),
    ("gmp", {"sparsity": -0.1}, "sparsity"),
    ("snip", {"sparsity": math.nan}, "sparsity"),
    ("rigl", {"sparsity": "0.9"}, "sparsity"),
    ("rigl", {"total_steps": 0}, "total_steps"),
    ("magnitude", {"total_steps": 2.5}, "total_steps"),
    ("rigl", {"prunable": ["0.weight", "3.weight"]}, "prunable"),
    ("magnitude", {"prunable": "0.weight"}, "prunable"),
    ("magnitude", {"prune_at": 1.5, "sparsity": 0.5}, "prune_at"),
    ("magnitude", {"prune_at": 0.0, "scope": "model"}, "scope"),
    ("gmp", {"begin": 0.8, "end": 0.5}, "end"),
    ("gmp", {"interval": 0}, "interval"),
    ("gmp", {"initial_sparsity": 1.0}, "initial_sparsity"),
    ("cyclical", {"cycles": 0}, "cycles"),
    ("cyclical", {"cycles": 100}, "cycles"),
    ("imp-weight", {"rounds": 0}, "rounds"),
    ("imp-weight", {"rewind_step": 50}, "rewind_step"),
    ("rigl", {"drop_fraction": 1.5}, "drop_fraction"),
    ("rigl", {"update_every": 0}, "update_every"),
    ("set", {"distribution": "er"}, "distribution"),
    ("rigl", {"end": 2.0}, "end"),
    ("halo", {"xi": -1.0}, "xi"),
    ("halo", {"min_scale": 0.0}, "min_scale"),
])
def test_bad_input_raises_value_error_naming_it_before_anything_changes(method, kwargs, name):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"sparsity": 0.9, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=name):
        pruning.make(method, model, **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_masks_and_densities_raise_value_error():
    pruner = pruning.Pruner(mlp(), 0.5, 10)
    with pytest.raises(ValueError, match="masks"):
        pruner.set_masks({"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="masks"):
        pruner.set_masks({"0.bias": torch.ones(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="density"):
        pruning.erk_densities([(4, 4)], 1.5)
    with pytest.raises(ValueError, match="prunable"):
        pruning.Pruner(nn.Sequential(nn.LayerNorm(4)), 0.5, 10)
