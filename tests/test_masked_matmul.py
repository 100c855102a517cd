"""The block-sparse matmul (kernels/masked_matmul.py) against dense torch math: on CPU through the interpreter
(fp32, 16/32 tiles, small shapes), on GPU (bf16/fp16/fp32, 64 x 64 tiles) when present; its dense fallback; its
ahead-of-time compile for sm_80/sm_90 (tests/masked_matmul_aot.py)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

mm = pytest.importorskip("sparse_rda.kernels.masked_matmul")  # needs triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(not (torch.cuda.is_available() or mm.INTERPRETED),
                                   reason="needs a GPU or TRITON_INTERPRET=1")


def random_occupancy(n, k, block, dead_fraction, device=DEVICE):
    """A map with exactly round(dead_fraction * tiles) dead tiles, at random places."""
    shape = (-(-n // block[0]), -(-k // block[1]))
    live = torch.ones(shape, dtype=torch.bool)
    live.view(-1)[torch.randperm(live.numel())[: round(dead_fraction * live.numel())]] = False
    return live.to(device)


def make_case(x_shape, n, k, block, dead_fraction, bias=True, dtype=torch.float32, device=DEVICE):
    """x [*x_shape, k], weight [n, k] zero in the map's dead tiles, bias [n] or None, the map."""
    occupancy = random_occupancy(n, k, block, dead_fraction, device)
    weight = torch.randn(n, k, device=device) * mm.expand_occupancy(occupancy, block, (n, k))
    x = torch.randn(*x_shape, k, device=device)
    b = torch.randn(n, device=device) if bias else None
    return x.to(dtype), weight.to(dtype), b.to(dtype) if bias else None, occupancy


def run(x, weight, bias, occupancy, block, dw_live_only, dy=None):
    """Output and (dx, dw, db) of masked_linear, for the upstream gradient dy (random if None)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = mm.masked_linear(*leaves, occupancy, block, dw_live_only)
    dy = torch.randn_like(y) if dy is None else dy
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
    return y, dy, list(grads) + ([None] if bias is None else [])


def dense_reference(x, weight, bias, dy, mask=None):
    """float64 F.linear of the weight (times the element mask when given) and its gradients."""
    w = (weight * mask if mask is not None else weight).double().requires_grad_()
    xd = x.double().requires_grad_()
    bd = bias.double().requires_grad_() if bias is not None else None
    y = F.linear(xd, w, bd)
    grads = torch.autograd.grad(y, [t for t in (xd, w, bd) if t is not None], dy.double())
    return y, list(grads) + ([None] if bias is None else [])


def assert_close(actual, expected, dtype, name):
    # fp32 (ieee dot): a few ulps of the sum; 16-bit: the output's own rounding (~2 ulps of bf16)
    tol = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * max(scale, 1.0), msg=name)
    assert actual.dtype == dtype, name


def check(x, weight, bias, occupancy, block, dw_live_only, dtype=torch.float32):
    y, dy, (dx, dw, db) = run(x, weight, bias, occupancy, block, dw_live_only)
    ry, (rdx, rdw, rdb) = dense_reference(x, weight, bias, dy)
    assert y.shape == (*x.shape[:-1], weight.shape[0])
    assert_close(y, ry, dtype, "y")
    assert_close(dx, rdx, dtype, "dx")
    if dw_live_only:
        rdw = rdw * mm.expand_occupancy(occupancy, block, weight.shape)
        assert (dw[~mm.expand_occupancy(occupancy, block, weight.shape)] == 0).all()
    assert_close(dw, rdw, dtype, "dw")
    if bias is not None:
        assert_close(db, rdb, dtype, "db")


# ------------------------------------------------------------------------------------------ occupancy, lists


def test_tile_occupancy_by_hand():
    w = torch.zeros(40, 20)
    w[0, 0] = 1.0          # tile (0, 0)
    w[39, 19] = -2.0       # tile (2, 1): the ragged corner
    w[17, 3] = float("nan")  # tile (1, 0): NaN is not zero
    assert mm.tile_occupancy(w, (16, 16)).tolist() == [[True, False], [True, False], [False, True]]
    assert mm.tile_occupancy(w, (64, 32)).tolist() == [[True]]
    assert mm.tile_occupancy(torch.zeros(3, 5), (16, 16)).tolist() == [[False]]


@pytest.mark.parametrize("block", [(16, 24), (8, 16), (0, 16)])
def test_block_sides_must_be_powers_of_two_at_least_16(block):
    with pytest.raises(ValueError, match="powers of two"):
        mm.tile_occupancy(torch.ones(32, 32), block)


def test_expand_occupancy_round_trips():
    occupancy = random_occupancy(100, 40, (32, 16), 0.5, "cpu")
    mask = mm.expand_occupancy(occupancy, (32, 16), (100, 40))
    assert mask.shape == (100, 40)
    assert torch.equal(mm.tile_occupancy(mask.float(), (32, 16)), occupancy)


@pytest.mark.parametrize("dead_fraction", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("shape", [(5, 3), (1, 7), (6, 1), (4, 4)])
def test_tile_lists_list_the_live_tiles_both_ways(shape, dead_fraction):
    live = random_occupancy(shape[0] * 16, shape[1] * 16, (16, 16), dead_fraction, "cpu")
    live[0] = False  # an empty row block
    for occupancy in (live, live.to(torch.uint8)):
        lists = mm.tile_lists(occupancy)
        assert all(t.dtype == torch.int32 for t in lists)
        assert lists.col_idx.numel() == lists.row_idx.numel() == live.numel()  # fixed size: no host sync
        for ptr, idx, table in ((lists.row_ptr, lists.col_idx, live), (lists.col_ptr, lists.row_idx, live.t())):
            assert ptr.tolist()[0] == 0 and ptr.tolist()[-1] == int(live.sum())
            for r in range(table.shape[0]):
                expected = [c for c in range(table.shape[1]) if table[r, c]]
                assert idx[ptr[r]:ptr[r + 1]].tolist() == expected


# ---------------------------------------------------------------------------------------- kernels vs dense


def test_interpreter_is_detected():
    """Under TRITON_INTERPRET=1 the kernels must run on CPU (else the tests below would test the fallback)."""
    assert mm.INTERPRETED == (os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on"))


@needs_kernels
def test_one_dimensional_grid_on_the_tensors_device(monkeypatch):
    """Every launch has a 1-D grid (M-blocks x output column blocks programs: no 65535 limit on a y size) and
    runs under the inputs' device (tensor_table.on_device), here many M- and column blocks."""
    grids, devices = [], []
    kernel = mm._sparse_matmul_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    def record(device):
        devices.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(mm, "_sparse_matmul_kernel", Spy())
    monkeypatch.setattr(mm, "on_device", record)
    case = make_case((70,), 80, 48, (16, 16), 0.3)
    check(*case, (16, 16), True)
    block_m = mm._config((16, 16), torch.float32, 70)[0]
    assert grids == [(-(-70 // block_m) * 5,), (-(-70 // block_m) * 3,)]  # forward: 80 / 16 blocks, dX: 48 / 16
    assert devices == [case[0].device] * 3  # forward, dX, live-only dW


@needs_kernels
@pytest.mark.parametrize("dw_live_only", [False, True])
@pytest.mark.parametrize("dead_fraction", [0.0, 0.5, 0.9, 1.0])
def test_matches_dense_at_every_sparsity(dead_fraction, dw_live_only):
    case = make_case((37,), 100, 40, (16, 16), dead_fraction)
    check(*case, (16, 16), dw_live_only)


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape, n, k, block", [
    ((1,), 40, 100, (16, 16)),      # one row, ragged K
    ((64,), 64, 64, (32, 32)),      # exact tiles
    ((37,), 100, 64, (32, 16)),     # rectangular tiles, ragged N
    ((2, 3), 40, 100, (16, 32)),    # batch dims
    ((5,), 17, 23, (16, 16)),       # every dimension ragged
    ((), 40, 40, (16, 16)),         # x a single vector
])
def test_matches_dense_on_odd_shapes(x_shape, n, k, block, bias):
    case = make_case(x_shape, n, k, block, 0.5, bias)
    check(*case, block, dw_live_only=bias)  # both dW modes across the cases


@needs_kernels
def test_dead_tiles_are_skipped_even_when_not_zero():
    """The map decides: nonzero weights in dead tiles count as zero in y and dX; live-only dW is zero there;
    the default dW is the dense one, on every tile."""
    block = (16, 16)
    x, _, bias, occupancy = make_case((37,), 100, 40, block, 0.5)
    weight = torch.randn(100, 40, device=DEVICE)  # nonzero everywhere
    mask = mm.expand_occupancy(occupancy, block, weight.shape)
    for dw_live_only in (False, True):
        y, dy, (dx, dw, db) = run(x, weight, bias, occupancy, block, dw_live_only)
        ry, (rdx, rdw, rdb) = dense_reference(x, weight, bias, dy, mask)
        assert_close(y, ry, torch.float32, "y")
        assert_close(dx, rdx, torch.float32, "dx")
        dense_dw = (dy.t() @ x).double()
        assert_close(dw, dense_dw * mask if dw_live_only else dense_dw, torch.float32, "dw")


@needs_kernels
def test_non_contiguous_inputs_and_gradient():
    """x a strided view, weight a transposed view, dy broadcast (stride 0) as y.sum() makes it."""
    block = (16, 16)
    _, weight, bias, occupancy = make_case((1,), 100, 40, block, 0.5)
    x = torch.randn(37, 80, device=DEVICE)[:, ::2]
    weight = weight.t().contiguous().t()  # same values, strides (1, 100)
    dy = torch.ones((), device=DEVICE).expand(37, 100)
    assert not x.is_contiguous() and not weight.is_contiguous()
    y, _, (dx, dw, db) = run(x, weight, bias, occupancy, block, False, dy=dy)
    ry, (rdx, rdw, rdb) = dense_reference(x, weight, bias, dy)
    for name, actual, expected in (("y", y, ry), ("dx", dx, rdx), ("dw", dw, rdw), ("db", db, rdb)):
        assert_close(actual, expected, torch.float32, name)


@needs_kernels
def test_only_the_needed_gradients():
    x, weight, bias, occupancy = make_case((5,), 40, 40, (16, 16), 0.5)
    w = weight.clone().requires_grad_()
    y = mm.masked_linear(x, w, bias, occupancy, (16, 16))  # x and bias need no gradient
    (dw,) = torch.autograd.grad(y.sum(), [w])
    assert_close(dw, dense_reference(x, weight, bias, torch.ones_like(y))[1][1], torch.float32, "dw")


# ------------------------------------------------------------------------------------- fallback, bad input


def test_dense_fallback_uses_the_weight_as_it_is(monkeypatch):
    """Without a device for the kernels: F.linear on the weight (dead tiles included), live-only dW still masked."""
    monkeypatch.setattr(mm, "INTERPRETED", False)
    block = (16, 16)
    x, _, bias, occupancy = make_case((2, 3), 40, 100, block, 0.5, device="cpu")
    weight = torch.randn(40, 100)
    mask = mm.expand_occupancy(occupancy, block, weight.shape)
    for dw_live_only in (False, True):
        y, dy, (dx, dw, db) = run(x, weight, bias, occupancy, block, dw_live_only)
        ry, (rdx, rdw, rdb) = dense_reference(x, weight, bias, dy)
        assert_close(y, ry, torch.float32, "y")
        assert_close(dx, rdx, torch.float32, "dx")
        assert_close(dw, rdw * mask if dw_live_only else rdw, torch.float32, "dw")
        assert_close(db, rdb, torch.float32, "db")


def test_unsupported_dtypes_and_empty_shapes_use_dense_math():
    block = (16, 16)
    x, weight, bias, occupancy = make_case((3,), 40, 20, block, 0.5, dtype=torch.float64, device="cpu")
    assert torch.equal(mm.masked_linear(x, weight, bias, occupancy, block), F.linear(x, weight, bias))
    empty = torch.randn(0, 20, dtype=torch.float64)
    assert mm.masked_linear(empty, weight, bias, occupancy, block).shape == (0, 40)


def test_autocast_casts_like_f_linear():
    x, weight, bias, occupancy = make_case((3,), 40, 20, (16, 16), 0.5, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mm.masked_linear(x, weight, bias, occupancy, (16, 16))
        expected = F.linear(x, weight, bias)
    assert y.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(y, expected)


@pytest.mark.parametrize("change, message", [
    (lambda a: dict(a, occupancy=a["occupancy"][:, :1]), "occupancy must have shape"),
    (lambda a: dict(a, block=(16, 20)), "powers of two"),
    (lambda a: dict(a, x=a["x"][:, :10]), "last dimension"),
    (lambda a: dict(a, bias=a["bias"].double()), "bias has dtype"),
    (lambda a: dict(a, weight=a["weight"][0]), "2-D"),
])
def test_bad_input_is_named(change, message):
    x, weight, bias, occupancy = make_case((3,), 40, 20, (16, 16), 0.5, device="cpu")
    args = change(dict(x=x, weight=weight, bias=bias, occupancy=occupancy, block=(16, 16)))
    with pytest.raises(ValueError, match=message):
        mm.masked_linear(**args)


# ------------------------------------------------------------------------------------- ahead-of-time compile


def test_kernels_compile_for_sm80_and_sm90_and_fit_in_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "masked_matmul_aot.py")
    out = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "compiled 31 kernel variants" in out.stdout


# ------------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dead_fraction", [0.0, 0.5, 0.9, 1.0])
def test_gpu_matches_dense(dtype, dead_fraction):
    for dw_live_only in (False, True):
        case = make_case((3, 111), 1000, 700, (64, 64), dead_fraction, dtype=dtype)
        check(*case, (64, 64), dw_live_only, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("block", [(16, 16), (32, 64), (128, 128)])
def test_gpu_other_tile_sizes(block):
    check(*make_case((300,), 520, 260, block, 0.5, dtype=torch.bfloat16), block, True, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_tf32_when_torch_allows_it(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    x, weight, bias, occupancy = make_case((256,), 512, 512, (64, 64), 0.5)
    y = mm.masked_linear(x, weight, bias, occupancy, (64, 64))
    expected = F.linear(x.double(), weight.double(), bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=5e-3, atol=5e-3 * expected.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_inputs_on_another_device_than_the_current_one():
    with torch.cuda.device(0):
        case = make_case((3, 50), 300, 200, (64, 64), 0.5, device="cuda:1")
        check(*case, (64, 64), True)


@pytest.mark.gpu
def test_gpu_forward_and_backward_do_not_sync():
    x, weight, bias, occupancy = make_case((4, 256), 1024, 512, (64, 64), 0.75, dtype=torch.bfloat16)
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    mm.masked_linear(*leaves, occupancy, (64, 64))  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for dw_live_only in (False, True):
            y = mm.masked_linear(*leaves, occupancy, (64, 64), dw_live_only)
            torch.autograd.grad(y, leaves, torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
