"""SparseLinear and sparsify (sparse_rda/nn.py): a drop-in nn.Linear over the masked matmul. On CPU the layer runs
sparse_rda.cpu_tiles (the live tiles in batched matmuls; small 16 x 16 tiles here), on CUDA the Triton kernels;
both must match nn.Linear on the same weights."""

import copy
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_rda.nn import SparseLinear, matmul_kernel, refresh_occupancy, sparsify

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = (16, 16)


def assert_same_outputs_and_grads(dense, sparse, x, atol=1e-5):
    """Forward and every gradient of the two layers (their own parameters) on the same input."""
    outs = []
    for layer in (dense, sparse):
        xi = x.detach().clone().requires_grad_()
        y = layer(xi)
        grads = torch.autograd.grad(y, [xi, *layer.parameters()], dy_for(y))
        outs.append((y, grads))
    (y0, g0), (y1, g1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=atol)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


def dy_for(y):
    gen = torch.Generator(device="cpu").manual_seed(1)
    return torch.randn(y.shape, generator=gen).to(y.device, y.dtype)


def tile_sparse_linear(in_features, out_features, bias=True, dead_fraction=0.5, tile=16):
    """An nn.Linear whose weight is zero in a random dead_fraction of its tile x tile tiles."""
    dense = nn.Linear(in_features, out_features, bias=bias, device=DEVICE)
    occupancy = torch.rand(-(-out_features // tile), -(-in_features // tile)) >= dead_fraction
    with torch.no_grad():
        keep = occupancy.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[:out_features, :in_features]
        dense.weight.mul_(keep.to(DEVICE))
    return dense


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape", [(37, 40), (2, 3, 40), (1, 40)])
def test_matches_nn_linear(x_shape, bias):
    dense = tile_sparse_linear(40, 100, bias)
    sparse = SparseLinear(40, 100, bias=bias, device=DEVICE, block=BLOCK)
    sparse.load_state_dict(dense.state_dict())  # same state dict keys; loading refreshes the map
    live = dense.weight.detach().cpu() != 0
    for r in range(7):
        for c in range(3):
            assert sparse.occupancy[r, c] == live[16 * r:16 * r + 16, 16 * c:16 * c + 16].any()
    assert_same_outputs_and_grads(dense, sparse, torch.randn(x_shape, device=DEVICE))


def test_occupancy_follows_the_weight():
    layer = SparseLinear(40, 100, device=DEVICE, block=BLOCK)
    assert layer.occupancy.dtype == torch.bool and layer.occupancy.shape == (7, 3) and layer.occupancy.all()
    buffer = layer.occupancy
    with torch.no_grad():
        layer.weight[16:32, 0:16] = 0  # tile (1, 0)
        layer.weight[96:, 32:] = 0     # the ragged corner tile (6, 2)
    layer.refresh_occupancy()
    assert layer.occupancy is buffer  # refreshed in place
    expected = torch.ones(7, 3, dtype=torch.bool)
    expected[1, 0] = expected[6, 2] = False
    assert torch.equal(layer.occupancy.cpu(), expected)
    with torch.no_grad():
        layer.weight[20, 5] = 1.0  # regrown
    refresh_occupancy(nn.Sequential(layer))
    assert layer.occupancy[1, 0]
    assert "live_tiles=20/21" in repr(layer)


def test_set_mask_element_and_tile_masks():
    layer = SparseLinear(40, 100, device=DEVICE, block=BLOCK)
    dense = nn.Linear(40, 100, device=DEVICE)
    dense.load_state_dict(layer.state_dict())
    element = torch.rand(100, 40, device=DEVICE) > 0.3
    element[:16, :16] = False  # this tile goes dead
    layer.set_mask(element)
    assert (layer.weight[~element] == 0).all() and (layer.weight[element] != 0).all()
    assert not layer.occupancy[0, 0] and int(layer.occupancy.sum()) == 20
    with torch.no_grad():
        dense.weight.mul_(element)
    assert_same_outputs_and_grads(dense, layer, torch.randn(5, 40, device=DEVICE))

    tiles = torch.ones(7, 3, dtype=torch.uint8)
    tiles[3, 1] = tiles[6, 0] = 0
    layer.set_mask(tiles)
    assert (layer.weight[48:64, 16:32] == 0).all() and (layer.weight[96:, :16] == 0).all()
    assert not layer.occupancy[3, 1] and not layer.occupancy[6, 0] and int(layer.occupancy.sum()) == 18
    with pytest.raises(ValueError, match="mask must have"):
        layer.set_mask(torch.ones(3, 7, dtype=torch.bool))


def test_dw_live_only_zeroes_the_dead_tiles_gradient():
    layer = SparseLinear(40, 100, device=DEVICE, block=BLOCK, dw_live_only=True)
    layer.set_mask(torch.tensor([[1, 0, 1]] * 7, dtype=torch.bool))
    layer(torch.randn(9, 40, device=DEVICE)).sum().backward()
    assert (layer.weight.grad[:, 16:32] == 0).all() and (layer.weight.grad[:, :16] != 0).any()


def test_sparsify_keeps_the_parameter_objects():
    shared = nn.Linear(64, 64)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Sequential(shared, nn.Tanh(), shared),
                          nn.Linear(64, 10, bias=False)).to(DEVICE)
    params, keys = list(model.parameters()), list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(6, 40, device=DEVICE)
    before = model(x)
    assert sparsify(model, block=BLOCK) is model
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [SparseLinear] * 3
    assert model[2][0] is model[2][2]  # a shared layer stays shared
    assert all(p is q for p, q in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    model(x).square().mean().backward()
    opt.step()  # the optimizer built before sparsify updates the layers' weights
    assert all(p.grad is not None for p in params)
    assert not torch.allclose(model(x), before)


def test_sparsify_a_bare_linear_and_leaves_subclasses_alone():
    linear = nn.Linear(20, 30)
    layer = sparsify(linear, block=BLOCK)
    assert isinstance(layer, SparseLinear) and layer.weight is linear.weight and layer.bias is linear.bias
    attention = nn.MultiheadAttention(32, 4)  # its out_proj is an nn.Linear subclass it never calls
    sparsify(attention)
    assert type(attention.out_proj) is not SparseLinear


def test_checkpoints_interchange_with_dense_models():
    model = sparsify(nn.Sequential(nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5)), block=BLOCK)
    model[0].set_mask(torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool))
    dense = nn.Sequential(nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5))
    dense.load_state_dict(model.state_dict())  # strict: no extra keys
    fresh = sparsify(nn.Sequential(nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5)), block=BLOCK)
    fresh.load_state_dict(dense.state_dict())
    assert torch.equal(fresh[0].occupancy, model[0].occupancy)  # recomputed on load
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole module pickles (its load hook is a plain function)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 40)
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(copy.deepcopy(model)(x), dense(x), rtol=1e-5, atol=1e-5)


def test_float64_and_moves():
    layer = SparseLinear(40, 100, block=BLOCK).double()
    x = torch.randn(4, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-12, atol=1e-12)
    assert layer.occupancy.dtype == torch.bool  # .double() leaves the bool map alone


def test_matmul_kernel_names_what_the_layer_runs():
    pytest.importorskip("sparse_rda.kernels.masked_matmul")
    assert matmul_kernel("cuda") == "triton"
    assert matmul_kernel("cpu") == "cpu-tiles"


def test_masked_linears_dense_path_without_the_interpreter(monkeypatch):
    """The Triton module's own fallback for CPU tensors (direct callers of masked_linear; the layer runs cpu_tiles)."""
    mm = pytest.importorskip("sparse_rda.kernels.masked_matmul")
    monkeypatch.setattr(mm, "INTERPRETED", False)
    dense = tile_sparse_linear(40, 100).cpu()
    occupancy = mm.tile_occupancy(dense.weight, BLOCK)

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = copy.deepcopy(dense.weight), copy.deepcopy(dense.bias)

        def forward(self, x):
            return mm.masked_linear(x, self.weight, self.bias, occupancy, BLOCK)

    assert_same_outputs_and_grads(dense, Masked(), torch.randn(2, 3, 40))


def test_cpu_tiles_skip_dead_tiles_and_repack_after_updates():
    layer = SparseLinear(40, 100, block=BLOCK)
    with torch.no_grad():
        layer.weight[:16, :16] = 0
    layer.refresh_occupancy()
    assert not layer.occupancy[0, 0]
    x = torch.randn(5, 40)
    with torch.no_grad():
        layer.weight[0, 0] = 7.0  # a dead tile's weight is never read until the map says it is live
    read = layer.weight.detach().clone()
    read[:16, :16] = 0  # what the layer reads
    torch.testing.assert_close(layer(x), F.linear(x, read, layer.bias))
    layer.refresh_occupancy()  # the map's version moved: repacked
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.mul_(2)  # the weight's version moved: repacked
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # as if not installed
import torch
from torch import nn
import sparse_rda.nn as snn
assert "sparse_rda.kernels.masked_matmul" not in sys.modules
assert snn.matmul_kernel("cpu") == "cpu-tiles" and snn.matmul_kernel("cuda") == "dense"
try:
    snn.SparseLinear(40, 100, block=(16, 10))  # the same tile rule as with triton
except ValueError as err:
    assert "powers of two" in str(err), err
else:
    raise AssertionError("block=(16, 10) accepted without triton")
dense = nn.Linear(40, 100)
with torch.no_grad():
    dense.weight[16:32, :32] = 0
layer = snn.sparsify(nn.Sequential(dense), block=(16, 16))[0]
assert layer.occupancy.tolist() == [[True] * 3, [False, False, True]] + [[True] * 3] * 5
layer.dw_live_only = True
x = torch.randn(2, 3, 40)
torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, dense.weight, dense.bias))
layer.set_mask(torch.tensor([[1, 0, 1]] * 7, dtype=torch.bool))
layer(x).sum().backward()
assert (layer.weight.grad[:, 16:32] == 0).all() and (layer.weight.grad[:, :16] != 0).any()
print("ok")
"""


def test_layer_works_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-4000:]


def test_bad_block():
    with pytest.raises(ValueError, match="powers of two"):
        SparseLinear(40, 100, block=(16, 10))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision_layer(dtype):
    dense = tile_sparse_linear(700, 1000, dead_fraction=0.75, tile=64).to(dtype)
    sparse = sparsify(copy.deepcopy(dense), block=(64, 64))
    x = torch.randn(8, 128, 700, device="cuda", dtype=dtype)
    torch.testing.assert_close(sparse(x).float(), dense(x).float(), rtol=2e-2, atol=5e-2)


def test_block_rda_writes_the_layers_map_in_its_step():
    """RDA in the layer's tiles shares the layer's occupancy map: after each step it matches the weight with no
    refresh, also after the optimizer is restored from a state dict."""
    import sparse_rda
    from sparse_rda.nn import tile_occupancy

    torch.manual_seed(0)
    layer = SparseLinear(48, 40, block=(16, 16))
    opt = sparse_rda.RDA(sparse_rda.param_groups(layer), lr=0.5, lam=0.05, granularity=("block", 16, 16))
    x = torch.randn(8, 48)
    for _ in range(10):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
        assert opt.state[layer.weight]["occupancy"] is layer.occupancy
        assert torch.equal(layer.occupancy, tile_occupancy(layer.weight, (16, 16)))
    assert not layer.occupancy.all(), "some tiles die"
    opt2 = sparse_rda.RDA(sparse_rda.param_groups(layer), lr=0.5, lam=0.05, granularity=("block", 16, 16))
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[layer.weight]["occupancy"] is layer.occupancy


def test_block_rda_in_other_tiles_warns_and_keeps_its_own_map():
    """The layer's map and the optimizer's tiles must agree for the step to write the map (nn.bind_tile_map); when
    they differ the optimizer says so, keeps its own map, and refresh_occupancy brings the layer's up to date."""
    import sparse_rda
    from sparse_rda.nn import tile_map, tile_occupancy

    torch.manual_seed(0)
    layer = SparseLinear(48, 40, block=(16, 16))
    opt = sparse_rda.RDA(sparse_rda.param_groups(layer), lr=0.5, lam=0.05, granularity=("block", 8, 8))
    layer(torch.randn(8, 48)).pow(2).mean().backward()
    with pytest.warns(UserWarning, match=r"through \(16, 16\) tiles and the optimizer steps it in \(8, 8\) tiles"):
        opt.step()
    assert tile_map(layer.weight)[1] is layer.occupancy
    assert opt.state[layer.weight]["occupancy"] is not layer.occupancy
    assert opt.state[layer.weight]["occupancy"].shape == (5, 6)
    refresh_occupancy(layer)
    assert torch.equal(layer.occupancy, tile_occupancy(layer.weight, (16, 16)))


@pytest.mark.parametrize("optimizer_first", [False, True], ids=["move-then-optimizer", "optimizer-then-move"])
def test_the_layers_map_stays_linked_after_the_module_moves(optimizer_first):
    """sparsify, then move the model (``.to()``/``.cuda()`` replace the map buffer): the block step still writes the
    map the layer reads. A cloning ``_apply`` stands in for a device move on CPU."""
    import sparse_rda
    from sparse_rda.nn import tile_map, tile_occupancy

    torch.manual_seed(0)
    layer = SparseLinear(48, 40, block=(16, 16))
    x = torch.randn(8, 48)

    def make_opt():
        return sparse_rda.RDA(sparse_rda.param_groups(layer), lr=0.5, lam=0.05, granularity=("block", 16, 16))

    opt = make_opt() if optimizer_first else None
    if optimizer_first:  # the state exists (and holds the old map) before the move
        layer(x).pow(2).mean().backward()
        opt.step()
    old_map = layer.occupancy
    layer._apply(lambda t: t.clone())
    assert layer.occupancy is not old_map and tile_map(layer.weight)[1] is layer.occupancy
    opt = opt or make_opt()
    for _ in range(10):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
        assert opt.state[layer.weight]["occupancy"] is layer.occupancy
        assert torch.equal(layer.occupancy, tile_occupancy(layer.weight, (16, 16)))
    assert not layer.occupancy.all(), "some tiles die"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_a_sparsified_model_moved_to_the_gpu_keeps_its_map_written_by_the_step(backend):
    """The README's workflow: sparsify, .cuda(), then block RDA in the layers' tiles; the step writes the layers'
    (CUDA) maps, never the CPU maps they had before the move."""
    import sparse_rda
    from sparse_rda.nn import tile_occupancy

    if backend not in sparse_rda.backends():
        pytest.skip("extension built without CUDA kernels")
    model = sparsify(nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 10)), block=(16, 16)).cuda()
    opt = sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.5, lam=0.05, granularity=("block", 16, 16),
                         backend=backend)
    x = torch.randn(8, 48, device="cuda")
    for _ in range(10):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    for layer in (m for m in model.modules() if isinstance(m, SparseLinear)):
        assert layer.occupancy.is_cuda and opt.state[layer.weight]["occupancy"] is layer.occupancy
        assert torch.equal(layer.occupancy, tile_occupancy(layer.weight, (16, 16)))
