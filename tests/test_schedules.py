"""The authors' schedules: cosine and step, for lr and averaging, resumable."""

import math

import pytest
import torch

import sparse_rda
from sparse_rda.schedules import CosineRDA, StepRDA


def make_opt(lr=1.0, averaging=0.0):
    return sparse_rda.RDA([torch.nn.Parameter(torch.randn(3, 3))], lr=lr, averaging=averaging)


def run(opt, sched, steps):
    seen = []
    for _ in range(steps):
        group = opt.param_groups[0]
        seen.append((group["lr"], group["averaging"]))
        opt.step()
        sched.step()
    return seen


def test_cosine_is_the_published_formula():
    K, s0 = 50, 0.25
    opt = make_opt(lr=s0)
    seen = run(opt, CosineRDA(opt, total_steps=K), K + 3)
    for k, (lr, alpha) in enumerate(seen):
        kk = min(k, K)
        assert lr == pytest.approx(0.5 * s0 * (1 + math.cos(math.pi * kk / K)), abs=1e-15)
        assert alpha == pytest.approx(0.5 * (1 - math.cos(math.pi * kk / K)), abs=1e-15)


def test_step_halves_lr_and_one_minus_averaging_at_each_milestone():
    opt = make_opt(lr=1.0, averaging=0.0)
    seen = run(opt, StepRDA(opt, milestones=[60, 100, 140]), 150)
    assert seen[59] == (1.0, 0.0)
    assert seen[60] == (0.5, 0.5)
    assert seen[100] == (0.25, 0.75)
    assert seen[149] == (0.125, 0.875)


def test_cosine_from_a_nonzero_averaging_ends_at_one():
    opt = make_opt(averaging=0.4)
    seen = run(opt, CosineRDA(opt, total_steps=10), 11)
    assert seen[0][1] == pytest.approx(0.4) and seen[10][1] == pytest.approx(1.0)


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_schedule_resumes_from_its_state_dict_in_either_load_order(optimizer_first):
    opt = make_opt()
    sched = CosineRDA(opt, total_steps=40)
    run(opt, sched, 15)
    opt2 = make_opt()
    if optimizer_first:  # torch's own schedulers would reset lr here; ours restore it from their position
        opt2.load_state_dict(opt.state_dict())
    sched2 = CosineRDA(opt2, total_steps=40)
    if not optimizer_first:
        opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert run(opt, sched, 10) == run(opt2, sched2, 10)


def test_schedules_need_rda_and_valid_arguments():
    grda = sparse_rda.GRDA([torch.nn.Parameter(torch.randn(2, 2))])
    with pytest.raises(ValueError, match="averaging"):
        CosineRDA(grda, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        CosineRDA(make_opt(), total_steps=0)
    with pytest.raises(ValueError, match="gamma"):
        StepRDA(make_opt(), milestones=[3], gamma=0.0)
