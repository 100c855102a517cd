"""Cyclical pruning ("cyclical", CyclicalPruner in sparse_rda/pruning/magnitude.py): the sparsity schedule restarts
at each cycle, unmasking the pruned weights, and a wrongly pruned weight comes back in the next cycle."""

import pytest

from pruning_helpers import WEIGHTS, kept, mlp, one_layer_quadratic, sgd, train
from sparse_rda import pruning

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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


def test_cyclical_brings_back_a_wrongly_pruned_weight_in_the_next_cycle():
    # 2 cycles of 20 steps: pruned at 10; unmasked at 20 after that step took it from 0 to 0.1 * 10 = 1;
    # 10 more steps toward 10 (w += 0.1 (10 - w)): 10 - 9 * 0.9^10; then the prune at 30 keeps it (the largest)
    keep, value, pruner = one_layer_quadratic("cyclical", steps=30, cycles=2)
    assert keep and value == pytest.approx(10 - 9 * 0.9**10, rel=1e-5)
    keep, value, _ = one_layer_quadratic("cyclical", steps=20, cycles=2)
    assert keep and value == pytest.approx(1.0, rel=1e-5), "unmasked at the second cycle's start"
