"""N:M patterns in the pruning baselines (sparse_rda/pruning/select.py, srste.py): the pattern's candidates by hand,
masks inside the pattern for every method that takes one, gradual N:M magnitude pruning, and SR-STE's update."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_at_most_n_per_group
from pruning_helpers import WEIGHTS, backward, mlp, sgd, train
from sparse_rda import plan, pruning
from sparse_rda.validation import check_pattern
from sparse_rda.pruning.select import magnitude_masks, pattern_candidates

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.triton_free]  # (conftest.py; no Triton code)

WITH_PATTERN = [m for m in pruning.METHODS if m not in ("rigl", "set")]


def nm_plan(shape, n, m):
    return plan.tensor_plan(shape, ("nm", n, m), penalized=True)


def test_patterns_are_parsed_and_checked():
    assert check_pattern("2:4") == (2, 4) and check_pattern((1, 8)) == (1, 8) and check_pattern(None) is None
    for bad in ["2-4", "4:4", "0:4", (2, 40), (2.0, 4), "a:b", (1, 2, 3), True]:
        with pytest.raises(ValueError, match="pattern must be 'N:M'"):
            check_pattern(bad)
    with pytest.raises(ValueError, match=r"sparsity=0.3 is below what pattern 2:4 prunes by itself"):
        pruning.make("gmp", mlp(), 0.3, 10, pattern="2:4")
    with pytest.raises(TypeError, match="pattern"):  # RigL / SET swap single connections anywhere: no pattern
        pruning.make("rigl", mlp(), 0.9, 10, pattern="2:4")


def test_candidates_and_masks_by_hand():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.3, 2.0, -0.2],
                      [0.4, 0.4, -0.4, 0.0, 0.05, 0.06]])
    # 2:4 along rows of 6: groups [0:4] and the short [4:6] (both kept); ties to the lower index
    cand = pattern_candidates(w.abs(), (2, 4))
    assert cand.int().tolist() == [[0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 1, 1]]
    # a pruned weight (score -1) is never a candidate, even in a group with room
    scores = w.abs().masked_fill(torch.tensor([[False] * 6, [True, True, True, True, False, False]]), -1.0)
    assert pattern_candidates(scores, (2, 4))[1].int().tolist() == [0, 0, 0, 0, 1, 1]
    masks = {d: magnitude_masks({"w": w}, d, pattern=(2, 4))["w"] for d in (8 / 12, 5 / 12, 10 / 12)}
    assert torch.equal(masks[8 / 12], cand)  # density N/M (with the short groups): the pattern itself
    assert masks[5 / 12].int().tolist() == [[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]]  # sparser: largest candidates
    assert masks[10 / 12].int().tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1]]  # denser: then the rest
    # global scope: one ranking over both tensors, every candidate (even b's 10x larger non-candidates) first
    both = magnitude_masks({"a": w, "b": 10 * w}, 8 / 12, scope="global", pattern=(2, 4))
    assert torch.equal(both["a"], cand) and torch.equal(both["b"], cand)
    fewer = magnitude_masks({"a": w, "b": 10 * w}, 4 / 12, scope="global", pattern=(2, 4))
    # the 8 largest candidates of both: b's 20, 9, 5, 4, 4, 2 and a's 2.0, 0.9 (above b's 0.6 and 0.5)
    assert fewer["a"].int().tolist() == [[0, 1, 0, 0, 1, 0], [0] * 6]
    assert fewer["b"].int().tolist() == [[0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0]]


@pytest.mark.parametrize("pattern, sparsity", [("2:4", 0.5), ("2:4", 0.9), ("1:4", 0.75)])
@pytest.mark.parametrize("method", WITH_PATTERN)
def test_every_method_that_takes_a_pattern_ends_inside_it(method, pattern, sparsity):
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make(method, model, sparsity, 60, pattern=pattern)
    train(model, pruner, opt, 60)
    pruner.finalize(opt)
    n, m = check_pattern(pattern)
    for name in WEIGHTS:
        weight, mask = model.get_parameter(name), pruner.masks[name]
        assert_at_most_n_per_group(mask, nm_plan(mask.shape, n, m), f"{method} {name} mask")
        assert (weight[~mask] == 0).all()
    assert pruner.density() == pytest.approx(1 - sparsity, abs=1 / 192)


def test_gradual_nm_prunes_non_candidates_first_and_never_revives():
    model = mlp()
    opt = sgd(model)
    pruner = pruning.make("gmp", model, 0.5, 100, pattern="2:4", interval=5)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    densities = []
    for step in range(100):
        backward(model, pruner, opt, step)
        pruner.before_step(opt)
        opt.step()
        pruner.after_step(opt)
        for name in WEIGHTS:
            assert not (pruner.masks[name] & ~previous[name]).any(), "a pruned weight came back"
            previous[name] = pruner.masks[name].clone()
        densities.append(pruner.density())
    assert densities[5] > 0.9 and densities[-1] == 0.5 and sorted(densities, reverse=True) == densities


def test_sr_ste_step_by_hand():
    """One SGD step: W <- W - lr (dL/dW~ + decay (1 - mask) W); the layer then holds W_new * mask(W_new)."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 2, bias=False)
    W0 = layer.weight.detach().clone()
    pruner = pruning.make("sr-ste", layer, 0.5, 10, decay=0.1)
    mask0 = pattern_candidates(W0.abs(), (2, 4))
    assert torch.equal(pruner.masks["weight"], mask0) and torch.equal(layer.weight.detach(), W0 * mask0)
    x, y = torch.randn(5, 8), torch.randn(5, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    loss = F.mse_loss(layer(x), y)
    opt.zero_grad()
    loss.backward()
    W_sparse = (W0 * mask0).requires_grad_()
    (expected_grad,) = torch.autograd.grad(F.mse_loss(x @ W_sparse.t(), y), W_sparse)
    pruner.before_step(opt)
    assert torch.equal(layer.weight.detach(), W0), "the optimizer steps the dense weights"
    torch.testing.assert_close(layer.weight.grad, expected_grad + 0.1 * W0 * ~mask0)
    opt.step()
    pruner.after_step(opt)
    W1 = W0 - 0.5 * (expected_grad + 0.1 * W0 * ~mask0)
    torch.testing.assert_close(pruner.dense["weight"], W1)
    mask1 = pattern_candidates(W1.abs(), (2, 4))
    assert torch.equal(pruner.masks["weight"], mask1)
    torch.testing.assert_close(layer.weight.detach(), W1 * mask1)


def test_sr_ste_masks_move_and_the_decay_pulls_pruned_weights_down():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = pruning.make("sr-ste", model, 0.5, 200, decay=0.05)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    train(model, pruner, opt, 200)
    assert any((first[n] != pruner.masks[n]).any() for n in WEIGHTS), "the mask is recomputed each step"
    for name in WEIGHTS:
        dense, mask = pruner.dense[name], pruner.masks[name]
        assert dense[~mask].abs().mean() < dense[mask].abs().mean()
    with pytest.raises(ValueError, match="pattern: sr-ste trains an N:M pattern"):
        pruning.make("sr-ste", mlp(), 0.5, 10, pattern=None)
