"""Eager (not capturable) optimizer steps on a GPU (marked gpu): after the first steps, a step makes no host sync and
copies nothing from pageable host memory (gRDA's thresholds used to go up that way every step), and no backend
copies anything from the host at all except Triton's gRDA, whose per-tensor thresholds are host numbers (one
pinned, asynchronous copy). The CPU-runnable half of this check, for capturable steps, is
tests/test_capturable_host_free.py."""

from __future__ import annotations

import pytest
import torch

import sparse_rda

from helpers import gpu_backends

pytestmark = pytest.mark.gpu

BACKENDS = gpu_backends()
CONFIGS = {
    "rda-element": (sparse_rda.RDA, dict(lam=1e-3)),
    "rda-kernel": (sparse_rda.RDA, dict(lam=1e-3, granularity="kernel")),
    "rda-block": (sparse_rda.RDA, dict(lam=1e-3, granularity=("block", 16, 16))),
    "grda": (sparse_rda.GRDA, dict(c=0.05, mu=0.55)),
}


def make_groups():
    """A conv, two linears (one bf16: a second bucket), biases in an unpenalized group; grads set once."""
    shapes = [((8, 4, 3, 3), torch.float32), ((64, 40), torch.float32), ((33, 17), torch.bfloat16)]
    weights = [torch.nn.Parameter(torch.randn(s, device="cuda").to(d)) for s, d in shapes]
    biases = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (8, 64)]
    for p in weights + biases:
        p.grad = torch.randn_like(p)
    return [{"params": weights}, {"params": biases, "penalize": False}]


def host_copies(fn) -> list[str]:
    """The names of the host-to-device copies fn() queues ("Memcpy HtoD (Pageable -> Device)", ...)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if "HtoD" in e.name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_an_eager_step_neither_syncs_nor_copies_from_the_host(config, backend):
    opt_cls, options = CONFIGS[config]
    opt = opt_cls(make_groups(), backend=backend, lr=0.1, **options)
    for _ in range(3):  # compiles and fills the caches
        opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()  # raises on a synchronizing call
    finally:
        torch.cuda.set_sync_debug_mode("default")
    copies = host_copies(opt.step)
    assert not [c for c in copies if "Pageable" in c], copies
    allowed = 1 if (config, backend) == ("grda", "triton") else 0
    assert len(copies) <= allowed, copies


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_on_a_second_gpu_step_there(backend):
    """Kernels launch on the params' device whatever the current device is (as torch's own ops do)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    ref_groups = make_groups()
    groups = [{**g, "params": [torch.nn.Parameter(p.detach().to("cuda:1")) for p in g["params"]]}
              for g in ref_groups]
    for g, r in zip(groups, ref_groups):
        for p, q in zip(g["params"], r["params"]):
            p.grad = q.grad.to("cuda:1")
    with torch.cuda.device(0):
        sparse_rda.RDA(groups, backend=backend, lr=0.1, lam=1e-3).step()
        sparse_rda.RDA(ref_groups, backend=backend, lr=0.1, lam=1e-3).step()
    for g, r in zip(groups, ref_groups):
        for p, q in zip(g["params"], r["params"]):
            torch.testing.assert_close(p.cpu(), q.cpu(), rtol=0, atol=0)
