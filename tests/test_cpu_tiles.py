"""sparse_rda.cpu_tiles (SparseLinear's CPU matmul): forward, dX, dW and db against dense math on the weight with
its dead tiles zeroed, on odd shapes (ragged edge tiles), every CPU dtype, and both dW modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparse_rda import cpu_tiles
from sparse_rda.nn import expand_occupancy

pytestmark = pytest.mark.triton_free
# relative to the result's scale, as tests/test_masked_matmul.py: fp32 a few ulps of a sum, bf16 ~2 ulps of it
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def assert_close(actual, expected, dtype, name=""):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=TOL[dtype],
                               atol=TOL[dtype] * max(scale, 1.0), msg=lambda text: f"{name}: {text}")


def case(n, k, m, block, live, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    occupancy = torch.rand(-(-n // block[0]), -(-k // block[1]), generator=gen) < live
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    x = torch.randn(*m, k, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return w.to(dtype), x.to(dtype), b.to(dtype), occupancy


def grads(fn, x, w, b, dy):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    return (y, *torch.autograd.grad(y, (x, w, b), dy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n, k, m, block", [(100, 40, (37,), (16, 16)), (130, 70, (2, 3), (64, 64)),
                                            (16, 16, (1,), (16, 16)), (257, 65, (5,), (32, 16)),
                                            (64, 300, (0,), (64, 64))])
@pytest.mark.parametrize("live", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("dw_live_only", [False, True])
def test_matches_dense_math_on_the_live_tiles(dtype, n, k, m, block, live, dw_live_only):
    w, x, b, occupancy = case(n, k, m, block, live, dtype)
    keep = expand_occupancy(occupancy, block, w.shape)
    dy = torch.randn(*m, n, dtype=torch.float64).to(dtype)

    def reference(x, w, b):  # in float64: the dead tiles read as zero, and (dw_live_only) get no gradient
        w64 = torch.where(keep, w, w.detach()) if dw_live_only else w
        return F.linear(x.double(), (w64 * keep).double(), b.double())

    def ours(x, w, b):
        return cpu_tiles.live_tile_linear(x, w, b, occupancy, block, dw_live_only)

    want = grads(reference, x, w, b, dy.double())
    got = grads(ours, x, w, b, dy)
    if dw_live_only:
        want = (*want[:2], want[2] * keep, want[3])
    else:  # the dense gradient: dY.T @ x everywhere, the dead tiles too
        want = (*want[:2], dy.double().reshape(-1, n).t() @ x.double().reshape(-1, k), want[3])
    for name, g, e in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert_close(g, e, dtype, name)


def test_the_cache_repacks_only_when_the_weight_or_map_changes():
    w, x, b, occupancy = case(128, 128, (4,), (64, 64), 1.0, torch.float32)
    cache = {}
    cpu_tiles.live_tile_linear(x, w, b, occupancy, (64, 64), cache=cache)
    first = cache["tiles"]
    cpu_tiles.live_tile_linear(x, w, b, occupancy, (64, 64), cache=cache)
    assert cache["tiles"] is first
    w.add_(1.0)
    y = cpu_tiles.live_tile_linear(x, w, b, occupancy, (64, 64), cache=cache)
    assert cache["tiles"] is not first
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    occupancy[0, 0] = False
    y = cpu_tiles.live_tile_linear(x, w, b, occupancy, (64, 64), cache=cache)
    read = w.clone()
    read[:64, :64] = 0
    torch.testing.assert_close(y, F.linear(x, read, b), rtol=1e-5, atol=1e-5)


def test_autocast_runs_in_its_dtype():
    w, x, b, occupancy = case(64, 64, (8,), (64, 64), 1.0, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_tiles.live_tile_linear(x, w, b, occupancy, (64, 64), cache={})
    assert y.dtype == torch.bfloat16
    assert_close(y, F.linear(x, w, b), torch.bfloat16)


def test_bad_arguments_name_the_parameter():
    w, x, b, occupancy = case(64, 64, (8,), (64, 64), 1.0, torch.float32)
    with pytest.raises(ValueError, match="occupancy must have shape"):
        cpu_tiles.live_tile_linear(x, w, b, occupancy[:, :0], (64, 64))
    with pytest.raises(ValueError, match="x's last dimension"):
        cpu_tiles.live_tile_linear(x[:, :3], w, b, occupancy, (64, 64))
    with pytest.raises(ValueError, match="bias has dtype"):
        cpu_tiles.live_tile_linear(x, w, b.double(), occupancy, (64, 64))
