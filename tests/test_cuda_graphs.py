"""CUDA graphs on a GPU (marked gpu): a captured capturable step, replayed with new grads, a new lr and a
GradScaler's inf flag, gives what the same capturable optimizer's eager steps give, in the configurations whose
step used to copy from the host (gRDA with an unpenalized group, groups of mixed dtypes, block granularity,
GradScaler skips). The CPU-runnable half of this check is tests/test_capturable_host_free.py."""

from __future__ import annotations

import pytest
import torch

import sparse_rda

from helpers import capture_after_warm_up, gpu_backends

pytestmark = pytest.mark.gpu

BACKENDS = gpu_backends()
CONFIGS = {
    "rda-mixed-dtypes": (sparse_rda.RDA, dict(lam=1e-3)),
    "rda-kernel": (sparse_rda.RDA, dict(lam=1e-3, granularity="kernel")),
    "rda-block": (sparse_rda.RDA, dict(lam=1e-3, granularity=("block", 16, 16))),
    "grda": (sparse_rda.GRDA, dict(c=0.05, mu=0.55)),
}


def make_groups(seed: int):
    """A conv, two linears (one bf16: a second bucket) and biases in an unpenalized group."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [((8, 4, 3, 3), torch.float32), ((64, 40), torch.float32), ((33, 17), torch.bfloat16)]
    weights = [torch.nn.Parameter(torch.randn(s, generator=gen, device="cuda").to(d)) for s, d in shapes]
    biases = [torch.nn.Parameter(torch.randn(n, generator=gen, device="cuda")) for n in (8, 64)]
    return [{"params": weights}, {"params": biases, "penalize": False}]


def set_grads(groups, seed: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for group in groups:
        for p in group["params"]:
            g = torch.randn(p.shape, generator=gen, device="cuda").to(p.dtype)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)  # in place: the graph reads the grads' addresses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_replayed_graph_equals_eager_capturable_steps(config, backend):
    opt_cls, options = CONFIGS[config]
    graphed_groups, eager_groups = make_groups(0), make_groups(0)

    def make(groups):
        opt = opt_cls(groups, backend=backend, capturable=True, lr=torch.tensor(0.1, device="cuda"), **options)
        opt.grad_scale = torch.full((), 4.0, device="cuda")  # as torch.amp.GradScaler hands them to the step
        opt.found_inf = torch.zeros((), device="cuda")
        return opt

    graphed, eager = make(graphed_groups), make(eager_groups)
    def warm_up():  # compiles, builds and caches the tables and index tensors
        for k in range(3):
            set_grads(graphed_groups, k)
            set_grads(eager_groups, k)
            graphed.step()
            eager.step()

    graph = capture_after_warm_up(warm_up, graphed.step)
    for k in range(6):
        set_grads(graphed_groups, 10 + k)
        set_grads(eager_groups, 10 + k)
        for opt in (graphed, eager):
            for group in opt.param_groups:
                group["lr"].fill_(0.1 / (k + 1))
            opt.found_inf.fill_(1.0 if k == 2 else 0.0)  # one skipped step
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for ga, gb in zip(graphed.param_groups, eager.param_groups):
        for p, q in zip(ga["params"], gb["params"]):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
            for key, value in eager.state[q].items():
                torch.testing.assert_close(graphed.state[p][key], value, rtol=0, atol=0)
