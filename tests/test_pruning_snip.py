"""SNIP ("snip", sparse_rda/pruning/snip.py): the mask is the global top |grad * weight| of the first step's
gradient, fixed from then on."""

import pytest
import torch

from pruning_helpers import N_WEIGHTS, WEIGHTS, backward, mlp, sgd, train
from sparse_rda import pruning

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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
