"""HALO ("halo", sparse_rda/pruning/halo.py): the penalty, its gradients and the scale step against hand-computed
and analytic values, and no pruning until finalize, which prunes once, globally."""

import pytest
import torch
from torch import nn

from pruning_helpers import WEIGHTS, mlp, sgd, train
from sparse_rda import pruning

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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
