"""The accuracy benchmark's peer and ablation runs: torchao PAT's three maps do what bench/accuracy_pat.py says (on a
tiny model, by hand), the PAT rows are skipped with the reason when torchao is missing, the "<name>=<value>" runs
parse, bench/lambda_sweep.py's search brackets and interpolates as documented, and bench/l1_ablation.py's changes
act on the optimizer as named. A few seconds on one core.

    python -m pytest bench/test_bench_baselines.py -q
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import accuracy
import accuracy_pat
import accuracy_training
import l1_ablation
import lambda_sweep

pytestmark = pytest.mark.triton_free  # the reference and native backends only: nothing for make test's triton pass

def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))


def train_steps(model: nn.Module, training, steps: int, seed: int = 1, first: int = 0) -> None:
    """Steps first .. first + steps - 1 on random batches."""
    gen = torch.Generator().manual_seed(seed)
    for k in range(first, first + steps):
        x = torch.randn(16, 12, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        training.opt.zero_grad(set_to_none=True)
        loss.backward()
        training.step(k)


needs_pat = pytest.mark.skipif(accuracy_pat.pat_version() is None, reason="torchao is not installed "
                               f"(pip install --no-deps torchao=={accuracy_pat.PAT_VERSION})")


@needs_pat
def test_pat_min_zeroes_the_target_fraction_of_each_tensor():
    model = tiny_model()
    training = accuracy_pat.PATTraining(model, 20, 0.7, "pat-min", "lenet")
    train_steps(model, training, 5)
    for layer in (model[0], model[2]):
        assert int((layer.weight == 0).sum()) == math.ceil(0.7 * layer.weight.numel())
        latent = training.opt.state[layer.weight]["latent"]
        kept = layer.weight != 0  # the largest |latent| of the tensor, at their latent values
        assert torch.equal(layer.weight[kept], latent[kept])
        assert latent[kept].abs().min() >= latent[~kept].abs().max()
        assert int((layer.bias == 0).sum()) == 0  # biases stay plain SGD


@needs_pat
def test_pat_global_ranks_every_tensor_together():
    model = tiny_model()
    training = accuracy_pat.PATTraining(model, 20, 0.7, "pat-global", "lenet")
    train_steps(model, training, 5)
    weights = [model[0].weight, model[2].weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == math.ceil(0.7 * sum(w.numel() for w in weights))
    latents = [training.opt.state[w]["latent"] for w in weights]
    kept = torch.cat([lat[w != 0].abs() for w, lat in zip(weights, latents)])
    dropped = torch.cat([lat[w == 0].abs() for w, lat in zip(weights, latents)])
    assert kept.min() >= dropped.max()


@needs_pat
def test_pat_lasso_soft_thresholds_the_latent_copy_at_lambda_times_the_lr_sum():
    model, lam, steps = tiny_model(), 0.05, 6
    training = accuracy_pat.PATTraining(model, 10, 0.95, f"pat-lasso={lam}", "lenet")
    train_steps(model, training, steps)
    lr_sum = sum(accuracy_training.cosine(0.1, k, 10) for k in range(steps))
    for layer in (model[0], model[2]):
        latent = training.opt.state[layer.weight]["latent"]
        expected = latent.sign() * (latent.abs() - lam * lr_sum).clamp(min=0)
        torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-5, atol=1e-7)
    assert training.finish()["reg_lambda"] == lam


def test_pat_rows_are_skipped_with_the_reason_without_torchao(monkeypatch, capsys):
    def missing():
        raise accuracy_pat.PATUnavailable("torchao is not installed (test); for the PAT rows: pip install ...")

    monkeypatch.setattr(accuracy, "import_pat", missing)
    assert accuracy.available_methods(["dense", "pat-min", "rda", "pat-lasso=1e-4"]) == ["dense", "rda"]
    err = capsys.readouterr().err
    assert "skipping pat-min, pat-lasso=1e-4" in err and "torchao is not installed" in err


def test_valued_methods_parse_and_others_are_refused():
    model = tiny_model()
    training = accuracy_training.make_training("rda-l1-fixed=2e-4", model, 50, 0.9, "lenet")
    group = training.opt.param_groups[0]
    assert group["lam"] == 2e-4 and group["target_sparsity"] is None and group["reweight"] is False
    assert accuracy_training.is_valued_method("rda-fixed=1e-6") and accuracy_training.is_valued_method("pat-lasso=1")
    assert not accuracy_training.is_valued_method("grda=1") and not accuracy_training.is_valued_method("rda")
    with pytest.raises(ValueError, match="only"):
        accuracy_training.make_training("grda=0.1", model, 50, 0.9, "lenet")
    with pytest.raises(ValueError, match="positive"):
        accuracy_training.make_training("rda-fixed=-1", model, 50, 0.9, "lenet")
    if accuracy_pat.pat_version() is not None:
        with pytest.raises(ValueError, match="only pat-lasso"):
            accuracy_training.make_training("pat-min=0.1", model, 50, 0.9, "lenet")


def test_rda_l1_da_keeps_averaging_one():
    model = tiny_model()
    training = accuracy_training.make_training("rda-l1-da", model, 30, 0.5, "lenet")
    train_steps(model, training, 10)
    group = training.opt.param_groups[0]
    assert group["averaging"] == 1.0 and group["reweight"] is False
    assert group["lr"] == pytest.approx(accuracy_training.cosine(1.0, 10, 30))


def run(lam: float, sparsity: float) -> dict:
    return dict(lam=lam, sparsity=sparsity)


def test_sweep_interpolates_log_lambda_against_log_density_inside_the_bracket():
    runs = [run(1e-4, 0.90), run(4e-4, 0.975)]  # density 0.1 and 0.025: 0.05 is halfway in log
    assert lambda_sweep.next_lambda(runs, 0.95) == pytest.approx(2e-4)
    # near an end of the bracket it stays 10% inside it
    assert lambda_sweep.next_lambda(runs, 0.9001) == pytest.approx(1e-4 * 4**0.1)


def test_sweep_steps_out_until_it_brackets():
    assert lambda_sweep.next_lambda([run(1e-4, 0.90)], 0.95) == pytest.approx(3e-4)
    assert lambda_sweep.next_lambda([run(1e-4, 0.97)], 0.95) == pytest.approx(1e-4 / 3)
    # two runs on one side: extrapolated through them, at most a factor STEP
    assert lambda_sweep.next_lambda([run(1e-4, 0.80), run(2e-4, 0.90)], 0.95) == pytest.approx(4e-4)
    assert lambda_sweep.next_lambda([run(1e-4, 0.80), run(1.1e-4, 0.81)], 0.99) == pytest.approx(3.3e-4)
    assert lambda_sweep.next_lambda([], 0.95) is None


def test_sweep_tolerance_and_pick(tmp_path):
    assert lambda_sweep.converged(run(1, 0.9524), 0.95) and not lambda_sweep.converged(run(1, 0.9526), 0.95)
    assert lambda_sweep.converged(run(1, 0.9904), 0.99) and not lambda_sweep.converged(run(1, 0.9894), 0.99)
    runs = [dict(method="pat-lasso", target=0.9, lam=3e-4, sparsity=0.9501),
            dict(method="pat-lasso", target=0.95, lam=2.5e-4, sparsity=0.93),
            dict(method="rda-fixed", target=0.95, lam=1e-6, sparsity=0.95)]
    (tmp_path / "lambda_sweep-lenet.json").write_text(json.dumps(dict(runs=runs)))
    assert lambda_sweep.picked("pat-lasso", "lenet", 0.95, tmp_path) == 3e-4  # whichever search ran it
    with pytest.raises(ValueError, match="lambda_sweep.py --methods pat-lasso --models cnn"):
        lambda_sweep.picked("pat-lasso", "cnn", 0.95, tmp_path)


def test_ablation_changes_act_on_the_optimizer(monkeypatch):
    monkeypatch.setattr(lambda_sweep, "picked", lambda method, model, target: 1e-3)
    model = tiny_model()
    fixed = l1_ablation.AblatedRDA(model, 40, "rda-l1", {"fixed", "mom", "avg1"})
    group = fixed.opt.param_groups[0]
    assert group["lam"] == 1e-3 and group["target_sparsity"] is None and group["averaging"] == 1.0
    train_steps(model, fixed, 8)
    assert group["averaging"] == 1.0
    assert group["momentum_time"] == pytest.approx(9.5 * group["lr"]) and group["reweight_time"] == 9.5

    model = tiny_model()
    healed = l1_ablation.AblatedRDA(model, 40, "rda", {"heal"})
    train_steps(model, healed, 36)  # heals from step 36 of 40
    zeros = {p: p == 0 for p in model.parameters() if p.dim() >= 2}
    assert all(group["lam"] == 0.0 and group["target_sparsity"] is None for group in healed.opt.param_groups)
    train_steps(model, healed, 4, seed=2, first=36)
    assert all(torch.equal(p == 0, z) for p, z in zeros.items())  # the frozen support

    with pytest.raises(ValueError, match="unknown variant"):
        l1_ablation.parse_variant("rda+nothing")


def test_weight_decay_on_t_adds_it_to_the_gradient():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    on_t = l1_ablation.AblatedRDA(a, 40, "rda", {"wdT"})
    plain = accuracy_training.RDATraining(b, 40, l1_ablation.TARGET, dict(accuracy_training.RDA_KW, weight_decay=0.0))
    x = torch.randn(8, 6)
    for model, training in ((a, on_t), (b, plain)):
        for k in range(3):
            model.zero_grad()
            model(x).square().sum().backward()
            if training is plain:  # by hand: wd times T (w itself before the first step)
                for p in model.parameters():
                    state = training.opt.state.get(p, {})
                    p.grad.add_(state["T"] if "T" in state else p.detach(), alpha=5e-4)
            training.step(k)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
