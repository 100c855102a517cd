"""Iterative magnitude pruning with rewinding ("imp-weight" and "imp-lr", IMP in sparse_rda/pruning/imp.py): the
default rounds and per-round rate (schedules.imp_rounds, imp_round_rate), the density after each round, what each
kind of rewinding restores, and lr_step's replay of the learning-rate schedule."""

import pytest
import torch

from pruning_helpers import N_WEIGHTS, backward, kept, mlp, sgd, train
from sparse_rda import pruning
from sparse_rda.pruning.schedules import imp_round_rate, imp_rounds

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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
