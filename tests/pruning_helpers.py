"""Shared by the tests/test_pruning*.py modules: the small MLP they prune, its fixed batches, the training-loop
protocol of sparse_rda.pruning, and a one-layer quadratic on which GMP and cyclical pruning part ways."""

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rda import pruning

WEIGHTS = ("0.weight", "2.weight")  # the prunable tensors of mlp(): 128 + 64 = 192 weights
N_WEIGHTS = 192


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
    """The training-loop protocol of sparse_rda.pruning's docstring."""
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
