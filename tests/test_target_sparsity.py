"""target_sparsity=: the controller's pieces by hand, and RDA / gRDA landing on the target on small problems."""

import pytest
import torch
from torch import nn

import sparse_rda
from sparse_rda import target


# ----------------------------------------------------------------------------------------------------------
# The pieces


def test_ramp_is_cubic_and_holds_after_its_end():
    total, goal = 1000, 0.9
    end = int(target.RAMP_END * total)
    assert target.scheduled_sparsity(0, total, goal) == 0.0
    assert target.scheduled_sparsity(end // 2, total, goal) == pytest.approx(goal * (1 - 0.5**3))
    assert target.scheduled_sparsity(end // 5, total, goal) == pytest.approx(goal * (1 - 0.8**3))
    assert target.scheduled_sparsity(end, total, goal) == pytest.approx(goal)
    assert target.scheduled_sparsity(total, total, goal) == pytest.approx(goal)


def test_control_steps_include_the_ramp_end():
    total = 10_000
    steps = [k for k in range(1, total + 1) if target.is_control_step(k, total)]
    assert steps[:2] == [50, 100]
    assert 7500 in steps and len(steps) == target.CONTROL_POINTS


def test_scale_for_elements_is_the_kth_smallest_ratio():
    ratios = torch.tensor([0.5, 0.1, 0.3, 0.2])
    assert target.scale_for_sparsity(ratios, None, 0.5) == pytest.approx(0.2)
    assert target.scale_for_sparsity(ratios, None, 0.75) == pytest.approx(0.3)
    # nothing to zero: a positive scale below every positive ratio
    assert target.scale_for_sparsity(ratios, None, 0.1) == pytest.approx(0.05)


def test_scale_for_tiles_counts_their_sizes():
    ratios = torch.tensor([0.5, 0.1, 0.3, 0.2])
    sizes = torch.tensor([1.0, 3.0, 1.0, 1.0])  # sorted: 0.1 (3), 0.2 (1), 0.3 (1), 0.5 (1); 6 elements
    assert target.scale_for_sparsity(ratios, sizes, 0.5) == pytest.approx(0.1)  # 3 of 6
    assert target.scale_for_sparsity(ratios, sizes, 4 / 6) == pytest.approx(0.2)  # 4 of 6
    # 2.6 of 6 wanted: 3 (one tile) is nearer than 0 (none)
    assert target.scale_for_sparsity(ratios, sizes, 2.6 / 6) == pytest.approx(0.1)
    # 4.4 of 6 wanted: stop at 4 rather than 5
    assert target.scale_for_sparsity(ratios, sizes, 4.4 / 6) == pytest.approx(0.2)


def test_zero_ratio_is_infinite_where_nothing_is_thresholded():
    ratio = target.zero_ratio(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]))
    assert ratio[0] == 0.5 and torch.isinf(ratio[1:]).all()


# ----------------------------------------------------------------------------------------------------------
# Landing on the target


def regression_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 32, generator=g)
    teacher = torch.randn(32, 1, generator=g) * (torch.rand(32, 1, generator=g) < 0.3)
    return x, x @ teacher + 0.1 * torch.randn(1024, 1, generator=g)


def train(model, opt, steps, seed=0):
    x, y = regression_problem(seed)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def weight_sparsity(model):
    weights = [p for p in model.parameters() if p.dim() >= 2]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def mlp(hidden=96):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@pytest.mark.parametrize("goal", [0.5, 0.9, 0.98])
def test_rda_lands_on_the_target(backend, goal):
    model, steps = mlp(), 300
    opt = sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.1, lam=1e-7, target_sparsity=goal,
                         total_steps=steps, backend=backend)
    train(model, opt, steps)
    assert weight_sparsity(model) == pytest.approx(goal, abs=0.01)


def test_rda_target_overrides_a_far_off_lam():
    # lam 1e3 would zero everything, lam 0 nothing: both land on the target
    for lam in (1e3, 0.0):
        model, steps = mlp(), 300
        opt = sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.1, lam=lam, target_sparsity=0.8,
                             total_steps=steps)
        train(model, opt, steps)
        assert weight_sparsity(model) == pytest.approx(0.8, abs=0.01), lam


def test_rda_block_target_counts_whole_tiles():
    model, steps = mlp(hidden=256), 300
    opt = sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.1, lam=1e-7, granularity=("block", 8, 8),
                         target_sparsity=0.9, total_steps=steps)
    train(model, opt, steps)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=0.01)
    w = model[0].weight.detach()
    tiles = w.reshape(32, 8, 4, 8).abs().sum(dim=(1, 3))
    assert int((tiles == 0).sum()) * 64 == int((w == 0).sum())  # zeros come in whole tiles


def test_rda_channel_target_on_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 16, 3)
    opt = sparse_rda.RDA(sparse_rda.param_groups(conv), lr=0.1, lam=1e-7, granularity="channel",
                         target_sparsity=0.75, total_steps=200)
    x = torch.randn(8, 4, 6, 6)
    for _ in range(200):
        loss = (conv(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the prox stays elementwise (a per-filter threshold): the target counts elements
    assert float((conv.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("goal", [0.9, 0.98])
def test_grda_lands_on_the_target(backend, goal):
    model, steps = mlp(), 300
    opt = sparse_rda.GRDA(model.parameters(), lr=0.05, c=1e-4, mu=0.55, target_sparsity=goal, total_steps=steps,
                          backend=backend)
    train(model, opt, steps)
    assert weight_sparsity(model) == pytest.approx(goal, abs=0.01)
    group = opt.param_groups[0]
    for p in model.parameters():  # l1 stays c times the c-free sum: the same for tensors with the same steps
        state = opt.state[p]
        total = sum(sparse_rda.reference.grda_threshold_increment(1.0, 0.05, 0.55, n) for n in range(1, steps + 1))
        assert state["l1"] == pytest.approx(group["c"] * total, rel=1e-9)


def test_resume_continues_the_controller_exactly():
    steps = 200

    def make(model):
        return sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.1, lam=1e-7, target_sparsity=0.9,
                              total_steps=steps)

    straight = mlp()
    opt = make(straight)
    train(straight, opt, steps)

    resumed = mlp()
    first = make(resumed)
    train(resumed, first, steps // 2)
    saved_model, saved_opt = resumed.state_dict(), first.state_dict()
    again = mlp()
    again.load_state_dict(saved_model)
    second = make(again)
    second.load_state_dict(saved_opt)
    assert second.param_groups[0]["lam"] == first.param_groups[0]["lam"] != 1e-7
    # the second half sees the same batches as the straight run's second half
    x, y = regression_problem(0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps // 2):
        torch.randint(0, len(x), (64,), generator=g)
    for _ in range(steps - steps // 2):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = ((again(x[idx]) - y[idx]) ** 2).mean()
        second.zero_grad()
        loss.backward()
        second.step()
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(target_sparsity=1.0, total_steps=10), "target_sparsity"),
    (dict(target_sparsity=-0.1, total_steps=10), "target_sparsity"),
    (dict(target_sparsity=0.9), "total_steps"),
    (dict(target_sparsity=0.9, total_steps=0), "total_steps"),
    (dict(target_sparsity=0.9, total_steps=10.5), "total_steps"),
])
def test_bad_target_names_the_parameter(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        sparse_rda.RDA(mlp().parameters(), **kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        sparse_rda.GRDA(mlp().parameters(), c=1e-3, **kwargs)


def test_grda_target_needs_a_positive_c():
    with pytest.raises(ValueError, match="c must be > 0"):
        sparse_rda.GRDA(mlp().parameters(), c=0.0, target_sparsity=0.9, total_steps=10)


def test_target_set_later_on_a_group_is_checked_before_the_step():
    model = mlp()
    opt = sparse_rda.RDA(model.parameters(), lr=0.1)
    model(torch.randn(4, 32)).sum().backward()
    opt.param_groups[0]["target_sparsity"] = 0.9  # total_steps missing
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="total_steps"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
