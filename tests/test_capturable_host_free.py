"""CUDA graphs need a capturable step to copy nothing from the host and wait on nothing: checked here without a
GPU by recording every op a capturable step dispatches on a model on the meta device (a device that is not the
host, where every op runs without data: the backends' fake kernels stand in for theirs). A host-to-device copy
shows as an op that takes a CPU tensor, a tensor made from Python data as ``lift_fresh``, ``.item()`` as
``_local_scalar_dense``. The backend's own launch code is not run here (on a GPU, tests/test_cuda_graphs.py
captures and replays the real thing). The same recording checks that an eager step moves nothing between the host
and the device after its first steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

import sparse_rda
from sparse_rda import dispatch


class OpRecorder(TorchDispatchMode):
    """Runs every op and records, as "op on [devices]", those ``flagged`` by a subclass."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        if self.flagged(str(func), devices):
            self.found.append(f"{func} on {sorted(devices)}")
        return out

    def flagged(self, name: str, devices: set[str]) -> bool:
        raise NotImplementedError


class HostTraffic(OpRecorder):
    """Records the ops that would touch the host during capture."""

    def flagged(self, name, devices):
        return "cpu" in devices or "lift_fresh" in name or "_local_scalar_dense" in name


def meta_param(*shape, dtype=torch.float32):
    return torch.nn.Parameter(torch.ones(shape, device="meta", dtype=dtype))


@pytest.fixture
def on_meta(monkeypatch):
    """The kernel backends accept meta tensors (their Python glue and fake kernels run; Triton's behind its
    opaque ops, sparse_rda/opaque.py, as in a compiled step)."""
    for name in ("cpu", "triton"):
        if name in dispatch.installed():
            chosen = dispatch._OPAQUE.get(name, dispatch.backend(name))
            monkeypatch.setitem(dispatch._BACKENDS, name, dataclasses.replace(chosen, runs_on=lambda device: True))


def test_the_recorder_sees_host_traffic():
    """The check can fail: a tensor made from a Python list and a copy from the host are both recorded."""
    with HostTraffic() as traffic:
        torch.tensor([1.0, 0.0], device="meta")
        torch.ones(2).to("meta")
    assert len(traffic.found) >= 2, traffic.found


CONFIGS = [
    (sparse_rda.RDA, dict(lam=1e-3)),
    (sparse_rda.RDA, dict(lam=1e-3, granularity="kernel")),
    (sparse_rda.RDA, dict(lam=1e-3, granularity=("block", 4, 4))),
    (sparse_rda.GRDA, dict(c=0.01, mu=0.55)),
]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("opt_cls, options", CONFIGS, ids=["rda", "rda-kernel", "rda-block", "grda"])
def test_capturable_step_is_host_free(on_meta, backend, opt_cls, options):
    """Mixed dtypes (two buckets), an unpenalized group (gRDA's penalty mask), a GradScaler's scale and inf flag,
    tensor lr: after the warm-up steps (state, caches), a step dispatches nothing that touches the host."""
    if backend not in dispatch.installed():
        pytest.skip(dispatch._MISSING[backend])
    conv, fc, half, bias = meta_param(4, 2, 3, 3), meta_param(8, 6), meta_param(3, 8, dtype=torch.float16), meta_param(8)
    lr = torch.full((), 0.1, device="meta")
    opt = opt_cls([{"params": [conv, fc, half]}, {"params": [bias], "penalize": False}], lr=lr, backend=backend,
                  capturable=True, **options)
    for p in (conv, fc, half, bias):
        p.grad = torch.zeros_like(p)
    opt.grad_scale = torch.ones((), device="meta")  # as torch.amp.GradScaler hands them to the step
    opt.found_inf = torch.zeros((), device="meta")
    opt.step()
    opt.step()
    with HostTraffic() as traffic:
        opt.step()
    assert traffic.found == []


class HostToDevice(OpRecorder):
    """Records the ops that move data between the host and a device: an op given tensors of both. Host tensors
    alone are host bookkeeping (an eager step keeps its counters there), not traffic."""

    def flagged(self, name, devices):
        return "cpu" in devices and len(devices) > 1 and name not in HOST_VALUE_OPS


# gRDA's per-tensor thresholds are host numbers in an eager step: the native CUDA op passes them to its kernels by
# value (no copy); Triton copies them up from pinned memory, asynchronously (on a GPU, tests/test_cuda_host_traffic.py
# counts both)
HOST_VALUE_OPS = {"sparse_rda.grda_step_.default", "sparse_rda.backend_grda_step_.default"}


def test_the_copy_recorder_sees_a_copy_and_not_host_work():
    with HostToDevice() as traffic:
        torch.ones(2).add_(1)
        torch.ones(2).to("meta")
    assert len(traffic.found) == 1 and "_to_copy" in traffic.found[0], traffic.found


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("opt_cls, options", CONFIGS, ids=["rda", "rda-kernel", "rda-block", "grda"])
def test_eager_step_copies_nothing_to_the_device(on_meta, backend, opt_cls, options):
    """The same groups, not capturable (host lr and counters): after the warm-up steps nothing moves between the
    host and the device (a bucket's indices, gRDA's penalty mask and the tables are cached on the device)."""
    if backend not in dispatch.installed():
        pytest.skip(dispatch._MISSING[backend])
    conv, fc, half, bias = meta_param(4, 2, 3, 3), meta_param(8, 6), meta_param(3, 8, dtype=torch.float16), meta_param(8)
    opt = opt_cls([{"params": [conv, fc, half]}, {"params": [bias], "penalize": False}], lr=0.1, backend=backend,
                  **options)
    for p in (conv, fc, half, bias):
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.step()
    with HostToDevice() as traffic:
        opt.step()
    assert traffic.found == []
