"""Pruning a SparseLinear (sparse_rda/pruning/base.py): its tile map follows the mask, under one-shot magnitude
pruning, for a hand-set mask through a checkpoint, and through RigL's updates."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_helpers import sgd
from sparse_rda import pruning
from sparse_rda.nn import SparseLinear
from sparse_rda.reference import tile_sums

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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
