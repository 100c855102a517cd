"""What every pruning method shares (sparse_rda/pruning/base.py and the protocol of sparse_rda.pruning): the final
sparsity, the mask/optimizer-state contract, checkpoints, and bad input. Each method's own schedule and selection
rule are tested in its tests/test_pruning_<method>.py; pruning_helpers.py holds what these modules share."""

import io
import math

import pytest
import torch
from torch import nn

from pruning_helpers import N_WEIGHTS, WEIGHTS, backward, kept, mlp, sgd, train
from sparse_rda import pruning

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL_RUN = {"rigl": {"update_every": 4}, "set": {"update_every": 4}}  # the default 100 exceeds these runs


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
