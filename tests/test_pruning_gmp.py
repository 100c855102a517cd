"""Gradual magnitude pruning ("gmp", GMP in sparse_rda/pruning/magnitude.py): the cubic schedule
(schedules.cubic_sparsity) against hand-computed values, the per-layer and the global threshold, and that a pruned
weight stays pruned (where cyclical pruning brings it back: test_pruning_cyclical.py)."""

import pytest
import torch

from pruning_helpers import WEIGHTS, backward, kept, mlp, one_layer_quadratic, sgd, train
from sparse_rda import pruning
from sparse_rda.pruning.schedules import cubic_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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


def test_gmp_keeps_that_weight_pruned():
    keep, value, _ = one_layer_quadratic("gmp")
    assert not keep and value == 0.0
