import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import the spec oracle and helpers as plain modules


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the whole module that asks for it (the tests/test_pruning*.py modules, through
    pytestmark): their models are tiny, and intra-op threads only add scheduling noise on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _runs_no_triton(item) -> bool:
    """A test parametrized on a backend other than Triton (the reference "torch", the native "cpu")."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    backend = params.get("backend")
    if backend is None and isinstance(params.get("backend_device"), tuple):
        backend = params["backend_device"][0]
    return backend in ("torch", "cpu")


def pytest_collection_modifyitems(config, items):
    # make test's second pass under the GPU machine's triton (SPARSE_RDA_TRITON_PASS=1) is for Triton API drift:
    # the tests of the other backends run no Triton code, and the first pass ran them
    if os.environ.get("SPARSE_RDA_TRITON_PASS"):
        drop = [item for item in items if _runs_no_triton(item)]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if not _runs_no_triton(item)]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def cpu_backends():
    """The backends that run CPU tensors at full speed: the reference, and the native kernels when built.
    (Triton runs here only in the interpreter; tests/test_triton_step.py covers it.)"""
    import sparse_rda

    return [b for b in ("torch", "cpu") if b in sparse_rda.backends()]


@pytest.fixture(params=cpu_backends())
def backend(request):
    return request.param


def _backend_device_params():
    from helpers import backend_devices

    return backend_devices()


@pytest.fixture(params=_backend_device_params())
def backend_device(request):
    """(backend, device): every backend on every device it runs on (helpers.backend_devices; CUDA pairs marked
    gpu), for tests that hold for all of them."""
    return request.param
