"""Backend choice: every backend reachable by name, "auto" picking the fastest one built for the device."""

import os
import subprocess
import sys

import pytest
import torch

import sparse_rda
from sparse_rda import dispatch, native


def run_python(code: str, env: dict | None = None) -> str:
    """Runs code in a fresh interpreter (import-time behaviour); returns its stdout, failing on a non-zero exit."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_auto_prefers_native_kernels_then_triton_then_the_reference():
    cpu = torch.device("cpu")
    assert dispatch.resolve("auto", cpu) == ("cpu" if native.has_kernels("cpu") else "torch")
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        expected = "cuda" if native.has_kernels("cuda") else "triton"
        assert dispatch.resolve("auto", cuda) == expected
        assert dispatch.resolve("auto", cuda, capturable=True) == expected


def test_capturable_needs_a_kernel_backend_that_implements_it():
    with pytest.raises(ValueError, match="capturable=True needs a kernel backend"):
        dispatch.resolve("torch", torch.device("cpu"), capturable=True)
    if native.has_kernels("cpu"):
        assert dispatch.resolve("auto", torch.device("cpu"), capturable=True) == "cpu"


def test_backends_lists_what_this_install_has_and_this_machine_runs():
    names = sparse_rda.backends()
    assert names[0] == "torch"
    assert ("cpu" in names) == native.has_kernels("cpu")
    assert ("cuda" in names) == (native.has_kernels("cuda") and torch.cuda.is_available())
    triton_runs = torch.cuda.is_available() or dispatch.triton_interpreted()
    assert ("triton" in names) == ("triton" in dispatch.installed() and triton_runs)


def test_triton_is_listed_only_where_it_can_run():
    """Installed but with neither a CUDA device nor the interpreter, triton is not offered (the demo's step
    table would otherwise print 'cannot run on cpu tensors')."""
    if "triton" not in dispatch.installed():
        pytest.skip("triton is not installed")
    code = "import sparse_rda; print(','.join(sparse_rda.backends()))"
    for interpret, listed in (("0", torch.cuda.is_available()), ("1", True)):
        printed = run_python(code, env={**os.environ, "TRITON_INTERPRET": interpret})
        assert ("triton" in printed.strip().split(",")) == listed, (interpret, printed)


@pytest.mark.skipif(not native.has_kernels("cpu"), reason="native extension not built")
def test_backends_refuse_a_device_they_cannot_run_on():
    with pytest.raises(ValueError, match="backend='cpu' cannot run on meta tensors"):
        sparse_rda.RDA([torch.nn.Parameter(torch.empty(2, 2, device="meta"))], backend="cpu")


def test_the_package_works_without_the_native_extension():
    code = (
        "import sys; sys.modules['sparse_rda._C'] = None\n"  # makes `from . import _C` raise ImportError
        "import torch, sparse_rda\n"
        "assert 'cpu' not in sparse_rda.backends(), sparse_rda.backends()\n"
        "p = torch.nn.Parameter(torch.randn(4, 4)); p.grad = torch.randn(4, 4)\n"
        "opt = sparse_rda.RDA([p], lam=1e-3); opt.step()\n"
        "print(sparse_rda.backends())\n"
    )
    assert "torch" in run_python(code)


def test_an_extension_that_does_not_load_says_so():
    """An extension built against another torch fails with an ImportError (undefined symbol): a warning says
    what to rebuild, and the backend error names it, instead of a silent fall back to the reference."""
    code = (
        "import importlib.abc, sys, warnings\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sparse_rda._C':\n"
        "            raise ImportError('_C.so: undefined symbol: _ZN3c10fake')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, sparse_rda\n"
        "print([str(w.message) for w in caught if w.category is RuntimeWarning])\n"
        "print(sparse_rda.backends())\n"
        "try:\n"
        "    sparse_rda.RDA([torch.nn.Parameter(torch.ones(2, 2))], backend='cpu')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    warned, listed, error = run_python(code).strip().splitlines()
    assert "native extension does not load" in warned and "--no-build-isolation" in warned, warned
    assert "'cpu'" not in listed, listed
    assert "backend='cpu' is not available" in error and "undefined symbol" in error, error


def test_every_backend_meets_the_contract(backend_device):
    """sparse_rda/step.py: each backend's rda_step and grda_step, called on one bucket as the optimizers call them,
    update in place what the reference updates (within ALGORITHMS.md's fused-kernel tolerance) and count the
    nonzeros they leave (or return None and leave counting to nnz())."""
    from helpers import rda_contract_call
    from sparse_rda import dispatch, plan, scalars, step

    name, device = backend_device
    shapes = [(5, 7), (3,), (2, 3, 3, 3)]
    gen = torch.Generator().manual_seed(3)
    make = lambda: [torch.randn(s, generator=gen).to(device) for s in shapes]  # noqa: E731
    params, grads, T, B, A, v = make(), make(), make(), make(), make(), make()
    B, A = [b.abs() for b in B], [a.abs() for a in A]
    copies = [[t.clone() for t in ts] for ts in (params, T, B, A, v)]
    hyper = dict(lr=0.5, lam=0.3, beta=0.9, beta_b=0.8, averaging=0.3, weight_decay=1e-4, max_factor=50.0,
                 reweight=True, maximize=False, penalized=[True, False, True], granularity="kernel")
    counts = rda_contract_call(name, params, grads, T, B, A, v, **hyper)
    rda_contract_call("torch", copies[0], grads, *copies[1:], **hyper)
    for got, want in zip([params, T, B, A, v], copies):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    if counts is not None:
        assert counts.tolist() == [int(torch.count_nonzero(p)) for p in params]

    acc = make()
    acc_ref, w_ref = [a.clone() for a in acc], [p.clone() for p in params]
    plans = tuple(plan.tensor_plan(p.shape, "element", True) for p in params)
    bucket, = plan.buckets(plans, tuple((p.dtype, g.dtype) for p, g in zip(params, grads)))
    thresholds, s = torch.tensor([0.5, 0.0, 1.0]), scalars.GrdaScalars(0.1)
    counts = dispatch.backend(name).grda_step(step.GrdaTensors(params, grads, acc, thresholds), bucket, s)
    dispatch.backend("torch").grda_step(step.GrdaTensors(w_ref, grads, acc_ref, thresholds), bucket, s)
    torch.testing.assert_close(acc, acc_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params, w_ref, rtol=1e-5, atol=1e-6)
    if counts is not None:
        assert counts.tolist() == [int(torch.count_nonzero(p)) for p in params]


def test_the_kernels_import_nothing_from_the_package():
    """kernels/ is a backend: per-tensor decisions reach it in plans and scalars objects, never by importing
    sparse_rda (docs/DESIGN.md)."""
    import ast
    from pathlib import Path

    kernels = Path(__file__).resolve().parents[1] / "kernels"
    found = []
    for path in sorted(kernels.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.module or "").startswith("sparse_rda")):
                found.append(f"{path.name}: from {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("sparse_rda") for a in node.names):
                found.append(f"{path.name}: import {', '.join(a.name for a in node.names)}")
    assert not found, found
