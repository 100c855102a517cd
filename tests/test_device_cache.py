"""The one cache of device tables (kernels/device_cache.py): least recently used entries go past the bound, but an
entry a CUDA graph captured (made or looked up while capturing) stays for good, since the graph reads it at every
replay. The capture predicate is monkeypatched: this runs without CUDA and without triton."""

import pytest
import torch

from sparse_rda import step
from sparse_rda.kernels import device_cache
from sparse_rda.kernels.device_cache import DeviceCache


@pytest.fixture
def capturing(monkeypatch):
    """Set ``capturing.now = True`` to pretend a graph is being captured."""
    class State:
        now = False

    monkeypatch.setattr(device_cache, "capturing", lambda: State.now)
    return State


def make(calls, key):
    def build():
        calls.append(key)
        return torch.tensor([key])
    return build


def test_the_least_recently_used_entry_goes_first(capturing):
    cache, calls = DeviceCache(3), []
    first = cache.get(1, make(calls, 1))
    for key in (2, 3):
        cache.get(key, make(calls, key))
    assert cache.get(1, make(calls, 1)) is first, "a hit returns the same tensor and makes nothing"
    cache.get(4, make(calls, 4))  # past the bound: 2 is now the least recently used
    assert calls == [1, 2, 3, 4]
    assert 2 not in cache and all(key in cache for key in (1, 3, 4))
    cache.get(2, make(calls, 2))  # made again; 3 goes
    assert calls[-1] == 2 and 3 not in cache and len(cache) == 3


def test_an_entry_a_graph_captured_survives_eviction(capturing):
    cache, calls = DeviceCache(2), []
    warm = cache.get("warm", make(calls, 0))  # made before the capture (the warm-up step)
    capturing.now = True
    assert cache.get("warm", make(calls, 0)) is warm  # looked up by the captured step
    made = cache.get("made", make(calls, 1))  # made while capturing
    capturing.now = False
    for key in range(2, 12):
        cache.get(key, make(calls, key))
    assert cache.get("warm", make(calls, 0)) is warm and cache.get("made", make(calls, 1)) is made
    assert calls == [0, 1, *range(2, 12)], "kept entries are never made again"
    assert cache.kept() == 2 and len(cache) == 4  # the two kept and the bound's two most recent


def test_the_capture_predicate_is_false_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("asks CUDA on a machine that has it")
    assert device_cache.capturing() is False


def test_step_constants_use_it(capturing, monkeypatch):
    """step.constant (a bucket's indices, gRDA's penalty mask) keeps what a graph read past its bound too."""
    monkeypatch.setattr(step, "_CONSTANTS", DeviceCache(4))
    capturing.now = True
    captured = step.constant((0, 2), torch.int64, torch.device("cpu"))
    capturing.now = False
    for n in range(10):
        step.constant((n, n + 1, n + 2), torch.int64, torch.device("cpu"))
    assert step.constant((0, 2), torch.int64, torch.device("cpu")) is captured
    assert len(step._CONSTANTS) == 5
