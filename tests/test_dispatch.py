"""Backend choice: every backend reachable by name, "auto" picking the fastest one built for the device."""

import pytest
import torch

import sparse_rda
from sparse_rda import dispatch, native


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


def test_backends_lists_what_this_install_has():
    names = sparse_rda.backends()
    assert names[0] == "torch"
    assert ("cpu" in names) == native.has_kernels("cpu")


@pytest.mark.skipif(not native.has_kernels("cpu"), reason="native extension not built")
def test_backends_refuse_a_device_they_cannot_run_on():
    with pytest.raises(ValueError, match="backend='cpu' cannot run on meta tensors"):
        sparse_rda.RDA([torch.nn.Parameter(torch.empty(2, 2, device="meta"))], backend="cpu")


def test_the_package_works_without_the_native_extension():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sparse_rda._C'] = None\n"  # makes `from . import _C` raise ImportError
        "import torch, sparse_rda\n"
        "assert 'cpu' not in sparse_rda.backends(), sparse_rda.backends()\n"
        "p = torch.nn.Parameter(torch.randn(4, 4)); p.grad = torch.randn(4, 4)\n"
        "opt = sparse_rda.RDA([p], lam=1e-3); opt.step()\n"
        "print(sparse_rda.backends())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout
