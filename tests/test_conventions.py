"""What users rely on from a torch optimizer: resume, weights_only loading, dtypes, closure, groups."""

import io
import math

import pytest
import torch

import sparse_rda
from sparse_rda.schedules import CosineRDA


def tiny_model(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(dtype)


def batches(n, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 6, generator=g).to(dtype), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def train(model, opt, sched, data):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        if sched:
            sched.step()


def make_rda(model):
    opt = sparse_rda.RDA(sparse_rda.param_groups(model, lr=1.0, lam=1e-3, weight_decay=5e-4))
    return opt, CosineRDA(opt, total_steps=40)


def make_grda(model):
    return sparse_rda.GRDA(model.parameters(), lr=0.1, c=0.02, mu=0.55), None


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("make", [make_rda, make_grda])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_from_a_weights_only_checkpoint_is_bit_exact(make, dtype):
    data = batches(30, dtype)
    model = tiny_model(dtype)
    opt, sched = make(model)
    train(model, opt, sched, data)  # uninterrupted: 30 steps

    model2 = tiny_model(dtype)
    opt2, sched2 = make(model2)
    train(model2, opt2, sched2, data[:12])
    ckpt = roundtrip({"model": model2.state_dict(), "opt": opt2.state_dict(),
                      "sched": sched2.state_dict() if sched2 else None})

    model3 = tiny_model(dtype)
    opt3, sched3 = make(model3)
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    if sched3:
        sched3.load_state_dict(ckpt["sched"])
    for state in opt3.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim():
                assert value.dtype == torch.float32, "fp32 state must stay fp32 on low-precision params"
            elif isinstance(value, torch.Tensor):  # scalar counters (gRDA's step and threshold)
                assert value.dtype == torch.float64, "float64 counters must stay float64"
    train(model3, opt3, sched3, data[12:])

    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), model3.parameters()):
        for key, value in opt.state[p].items():
            other = opt3.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert opt.param_groups[0]["lr"] == opt3.param_groups[0]["lr"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_fp32_state_and_their_dtype(dtype):
    p = torch.nn.Parameter(torch.randn(20, 10).to(dtype))
    ref = torch.nn.Parameter(p.detach().float())
    opt = sparse_rda.RDA([p], lr=1.0, lam=1e-3)
    opt_ref = sparse_rda.RDA([ref], lr=1.0, lam=1e-3)
    g = torch.randn(20, 10).to(dtype)
    p.grad, ref.grad = g, g.float()
    opt.step()
    opt_ref.step()
    assert p.dtype == dtype and all(v.dtype == torch.float32 for k, v in opt.state[p].items() if k != "step")
    # first step from identical inputs: fp32 state equal, weights within one rounding step of the fp32 result
    for key in ("T", "B", "A", "v"):
        torch.testing.assert_close(opt.state[p][key], opt_ref.state[ref][key], rtol=1e-6, atol=1e-7)
    assert torch.equal(p.data, ref.data.to(dtype))

    q = torch.nn.Parameter(torch.randn(50).to(dtype))
    grda = sparse_rda.GRDA([q], lr=0.1, c=0.01, mu=0.6)
    q.grad = torch.randn(50).to(dtype)
    grda.step()
    assert q.dtype == dtype and grda.state[q]["acc"].dtype == torch.float32
    assert torch.equal(q.data, sparse_rda.reference.soft_threshold(grda.state[q]["acc"], grda.state[q]["l1"]).to(dtype))


def test_closure_is_called_and_its_loss_returned():
    model = tiny_model()
    opt, _ = make_rda(model)
    x, y = batches(1)[0]
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and isinstance(loss, torch.Tensor) and loss.item() > 0


def test_params_without_grad_are_skipped():
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4))
    before = b.detach().clone()
    for opt in (sparse_rda.RDA([a, b]), sparse_rda.GRDA([a, b], c=0.01, mu=0.6)):
        a.grad, b.grad = torch.randn(4, 4), None
        opt.step()
        assert len(opt.state[a]) > 0 and len(opt.state[b]) == 0
        assert torch.equal(b.data, before)


def test_zero_grad_and_empty_tensors():
    empty = torch.nn.Parameter(torch.randn(0, 3))
    w = torch.nn.Parameter(torch.randn(3, 3))
    opt = sparse_rda.RDA([empty, w])
    empty.grad, w.grad = torch.zeros(0, 3), torch.randn(3, 3)
    opt.step()
    opt.zero_grad()
    assert w.grad is None and empty.grad is None


def test_param_groups_have_their_own_hyper_parameters():
    a, b = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8, 8))
    opt = sparse_rda.RDA([{"params": [a], "lam": 0.0}, {"params": [b], "lam": 100.0, "lr": 0.5}], lr=1.0)
    a.grad, b.grad = torch.randn(8, 8), torch.randn(8, 8)
    opt.step()
    assert (a.data != 0).all() and (b.data == 0).all()
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[0]["lr"] == 1.0


def test_maximize_is_minimizing_the_negated_gradient():
    a = torch.nn.Parameter(torch.randn(5, 5))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = sparse_rda.RDA([a], lam=1e-3, maximize=True)
    opt_b = sparse_rda.RDA([b], lam=1e-3)
    for _ in range(5):
        g = torch.randn(5, 5)
        a.grad, b.grad = g, -g
        opt_a.step()
        opt_b.step()
    assert torch.equal(a.data, b.data)


def test_step_counter_is_in_the_state_dict():
    model = tiny_model()
    opt, sched = make_rda(model)
    train(model, opt, sched, batches(3))
    sd = roundtrip(opt.state_dict())
    assert all(s["step"] == 3 for s in sd["state"].values())
    assert math.isclose(sched.state_dict()["last_epoch"], 3)
