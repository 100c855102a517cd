"""sparse_rda.csr: the packing round trip, the native CPU kernel ``sparse_rda::csr_linear`` and its torch.sparse
fallback against dense F.linear (fp32 / bf16 / fp16, odd shapes, batch 1 to 128, empty rows, int16 and int32
indices), and every bad argument refused with the parameter named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparse_rda import csr, native

pytestmark = pytest.mark.triton_free
needs_native = pytest.mark.skipif(not native.has_kernels("cpu"), reason=native.missing_reason("cpu"))
# relative to the output's scale (as tests/test_masked_matmul.py): fp32 a few ulps of a sum, 16-bit ~2 ulps
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def sparse_weight(n, k, zeros, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * (torch.rand(n, k, generator=gen) >= zeros)
    if n > 2:
        w[1] = 0  # an empty row
    return w.to(dtype)


def assert_matches_dense(y, x, w, b):
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    scale = want.abs().max().item() if want.numel() else 0.0
    tol = TOL[w.dtype]
    assert y.dtype == x.dtype and y.shape == want.shape
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * max(scale, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, k", [(1, 1), (3, 5), (7, 130), (65, 257), (300, 784)])
@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("batch", [(1,), (16,), (17,), (33,), (128,), (2, 5), (3, 67)])
@pytest.mark.parametrize("native_kernel", [pytest.param(True, marks=needs_native), False])
def test_matches_dense(dtype, n, k, zeros, batch, native_kernel, monkeypatch):
    if not native_kernel:
        monkeypatch.setattr(csr, "native_runs", lambda x: False)
    w = sparse_weight(n, k, zeros, dtype)
    x = torch.randn(*batch, k).to(dtype)
    b = torch.randn(n).to(dtype) if k % 2 else None
    packed = csr.pack_csr(w)
    assert packed.values.numel() == int((w != 0).sum())
    assert torch.equal(csr.unpack_csr(packed), w)
    assert_matches_dense(csr.csr_linear(x, packed, b), x, w, b)


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
def test_wide_inputs_and_both_index_dtypes(index_dtype):
    w = sparse_weight(6, 40000, 0.99)  # columns past 32767: int16 holds them wrapped, the kernel reads unsigned
    packed = csr.pack_csr(w, index_dtype=index_dtype)
    assert packed.col.dtype == index_dtype and torch.equal(csr.unpack_csr(packed), w)
    for m in (1, 3):
        x = torch.randn(m, 40000)
        assert_matches_dense(csr.csr_linear(x, packed), x, w, None)
    assert csr.pack_csr(sparse_weight(2, 70000, 0.999)).col.dtype == torch.int32
    with pytest.raises(ValueError, match="index_dtype must be"):
        csr.pack_csr(sparse_weight(2, 70000, 0.999), index_dtype=torch.int16)


@needs_native
@pytest.mark.parametrize("k", [100, 3000, 9000])  # batch tiles of 64, 32 and 16 rows (a tile stays in L2)
@pytest.mark.parametrize("m", [40, 130])  # a partial last tile
def test_every_batch_tile_width(k, m):
    w = sparse_weight(37, k, 0.9)
    x = torch.randn(m, k)
    b = torch.randn(37)
    assert_matches_dense(csr.csr_linear(x, csr.pack_csr(w), b), x, w, b)


def call(x=None, crow=None, col=None, values=None, bias=None, in_features=None, **_):
    return torch.ops.sparse_rda.csr_linear(x, crow, col, values, bias, in_features)


def good_args():
    w = sparse_weight(5, 20, 0.5)
    p = csr.pack_csr(w)
    return dict(x=torch.randn(3, 20), crow=p.crow.clone(), col=p.col.clone(), values=p.values.clone(),
                bias=torch.randn(5), in_features=20)


def edited(**changes):
    args = good_args()
    for key, fn in changes.items():
        args[key] = fn(args)
    return args


@needs_native
@pytest.mark.parametrize("args, message", [
    (edited(x=lambda a: a["x"].double(), values=lambda a: a["values"].double(), bias=lambda a: None),
     "x must be float32, bfloat16 or float16"),
    (edited(values=lambda a: a["values"].bfloat16()), "values has dtype"),
    (edited(x=lambda a: a["x"][:, :7]), "x's last dimension must be in_features 20"),
    (edited(crow=lambda a: a["crow"].int()), "crow must be int64"),
    (edited(col=lambda a: a["col"].long()), "col must be int16"),
    (edited(col=lambda a: a["col"].int(), in_features=lambda a: 70000, x=lambda a: torch.randn(3, 70000)),
     None),  # int32 indices and a wide input: fine
    (edited(in_features=lambda a: 70000, x=lambda a: torch.randn(3, 70000)), "int16 col indices address at most"),
    (edited(crow=lambda a: a["crow"][:0]), "crow must have out_features"),
    (edited(crow=lambda a: a["crow"] + 1), r"crow\[0\] must be 0"),
    (edited(crow=lambda a: torch.tensor([0, 5, 3, 8, 9, a["values"].numel()])),
     r"crow must not decrease; crow\[2\] = 3 < crow\[1\] = 5"),
    (edited(crow=lambda a: torch.cat([a["crow"][:-1], a["crow"][-1:] + 1])), "must equal the number of values"),
    (edited(col=lambda a: a["col"][:-1]), "col has .* entries, values"),
    (edited(values=lambda a: a["values"].repeat(2)[::2]), "values must be a contiguous 1-D tensor"),
    (edited(bias=lambda a: a["bias"][:4]), r"bias must be a contiguous CPU tensor of shape \[5\]"),
    (edited(bias=lambda a: a["bias"].double()), "bias must be"),
    (edited(col=lambda a: a["col"].index_fill(0, torch.tensor([3]), 20)), r"col\[3\] = 20 is out of range"),
    (edited(col=lambda a: a["col"].index_fill(0, torch.tensor([0]), -1)), r"col\[0\] = 65535 is out of range"),
    (edited(col=lambda a: a["col"].int().index_fill(0, torch.tensor([2]), -7)), r"col\[2\] = -7 is out of range"),
    (edited(x=lambda a: a["x"][:1], col=lambda a: a["col"].index_fill(0, torch.tensor([4]), 25)),
     r"col\[4\] = 25 is out of range"),  # the batch-1 path checks too
    (edited(x=lambda a: a["x"][:, :0], in_features=lambda a: 0), "in_features is 0 but there are"),
])
def test_bad_arguments_are_refused_naming_the_parameter(args, message):
    if message is None:
        assert call(**args).shape == (3, 5)
        return
    with pytest.raises(RuntimeError, match=message):
        call(**args)


@needs_native
@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("m", [1, 16])
def test_a_bad_index_anywhere_in_a_row_is_refused(index_dtype, m):
    w = sparse_weight(3, 100, 0.2)
    p = csr.pack_csr(w, index_dtype=index_dtype)
    start, nnz = int(p.crow[2]), int(p.crow[3] - p.crow[2])
    assert nnz > 32 and nnz % 16
    for position in (0, 5, 17, nnz - 1):  # inside batch 1's 16-wide steps, and in the row's tail
        col = p.col.clone()
        col[start + position] = 100
        with pytest.raises(RuntimeError, match=rf"col\[{start + position}\] = 100 is out of range"):
            call(x=torch.randn(m, 100), crow=p.crow, col=col, values=p.values, bias=None, in_features=100)


@needs_native
@pytest.mark.skipif(os.environ.get("SPARSE_RDA_CSR_PORTABLE") is not None, reason="already the portable loops")
def test_the_portable_loops_pass_this_file_too():
    """On a CPU with AVX-512 batch 1 runs the intrinsics loop; SPARSE_RDA_CSR_PORTABLE selects the portable one,
    which other CPUs run: this file again in a process with it set."""
    env = dict(os.environ, SPARSE_RDA_CSR_PORTABLE="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout

@needs_native
def test_opcheck():
    args = good_args()
    torch.library.opcheck(torch.ops.sparse_rda.csr_linear.default,
                          (args["x"], args["crow"], args["col"], args["values"], args["bias"], 20))
    torch.library.opcheck(torch.ops.sparse_rda.csr_linear.default,
                          (args["x"][:1], args["crow"], args["col"], args["values"], None, 20))
