"""to_inference: every format's layer computes the dense layer's output, the automatic choice follows the
documented rules, and what cannot be converted says why."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparse_rda
from sparse_rda import inference

pytestmark = pytest.mark.triton_free  # CPU formats: dense, csr, and tiles on CPU (SparseLinear's dense math)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def sparse_linear_layer(in_f, out_f, zeros, dtype=torch.float32, bias=True, seed=0, tiles=False):
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        if tiles:  # whole 64x64 tiles dead
            live = torch.rand(-(-out_f // 64), -(-in_f // 64)) >= zeros
            keep = live.repeat_interleave(64, 0).repeat_interleave(64, 1)[:out_f, :in_f]
        else:
            keep = torch.rand(out_f, in_f) >= zeros
        layer.weight.mul_(keep)
    return layer.to(dtype)


def expected(x, layer):
    """The dense layer's output, computed in fp32 from the same (possibly bf16) weights and inputs."""
    bias = None if layer.bias is None else layer.bias.float()
    return torch.nn.functional.linear(x.float(), layer.weight.float(), bias)


@pytest.mark.parametrize("fmt", ["dense", "csr", "tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (130, 7), (257, 65), (300, 784)])
@pytest.mark.parametrize("batch", [1, 128])
def test_every_format_matches_the_dense_layer(fmt, dtype, shape, batch):
    in_f, out_f = shape
    layer = sparse_linear_layer(in_f, out_f, 0.9, dtype, bias=in_f % 2 == 1)
    model = nn.Sequential(layer)
    x = torch.randn(batch, in_f).to(dtype)
    want = expected(x, layer)
    report = sparse_rda.to_inference(model, batch_size=batch, format=fmt)
    assert report["0"].startswith(f"{fmt}:")
    assert {"dense": nn.Linear, "csr": inference.CSRLinear, "tiles": sparse_rda.SparseLinear}[fmt] is type(model[0])
    with torch.no_grad():
        got = model(x)
    assert got.dtype == dtype and got.shape == (batch, out_f)
    torch.testing.assert_close(got.float(), want, **TOL[dtype])


def test_csr_takes_any_leading_shape_and_moves_with_to():
    layer = sparse_linear_layer(70, 33, 0.95)
    model = nn.Sequential(layer, nn.ReLU(), sparse_linear_layer(33, 9, 0.5, seed=1))
    x = torch.randn(2, 5, 70)
    with torch.no_grad():
        want = model(x)
    sparse_rda.to_inference(model, format="csr")
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, **TOL[torch.float32])
    model.to(torch.bfloat16)  # the buffers follow .to() (the indices keep their integer dtypes)
    assert model[0].values.dtype == torch.bfloat16 and model[0].col.dtype in (torch.int16, torch.int32)
    assert set(model.state_dict()) >= {"0.crow", "0.col", "0.values", "0.bias"}


def test_auto_follows_the_measured_crossover():
    crossover = inference.csr_crossover(torch.float32, 1)
    sparse = sparse_linear_layer(512, 256, min(0.99, crossover + 0.1))  # above the small-layer size
    dense = sparse_linear_layer(512, 256, max(0.0, crossover - 0.2), seed=1)
    model = nn.Sequential(sparse, nn.ReLU(), dense)
    report = sparse_rda.to_inference(model, batch_size=1)
    assert isinstance(model[0], inference.CSRLinear) and type(model[2]) is nn.Linear
    assert report["0"].startswith("csr:") and report["2"].startswith("dense:") and "crossover" in report["2"]
    assert inference.csr_crossover(torch.float32, 10_000) == inference.CPU_CSR_CROSSOVER[torch.float32][-1][1]
    assert inference.csr_crossover(torch.float16, 1) is None
    half = nn.Sequential(sparse_linear_layer(64, 64, 0.99).half())
    assert sparse_rda.to_inference(half)["0"].startswith("dense: torch.float16 on CPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_layers_stay_dense_below_batch_16(dtype):
    limit = inference.CPU_CSR_SMALL_DENSE[dtype]
    small = sparse_linear_layer(64, limit // 64, 0.99, dtype=dtype)  # exactly the limit: dense
    big = sparse_linear_layer(64, limit // 64 + 1, 0.99, dtype=dtype, seed=1)
    for batch, formats in ((1, ("dense", "csr")), (15, ("dense", "csr")), (16, ("csr", "csr"))):
        model = nn.Sequential(copy.deepcopy(small), copy.deepcopy(big))
        report = sparse_rda.to_inference(model, batch_size=batch)
        assert (report["0"].split(":")[0], report["1"].split(":")[0]) == formats, report
        if batch == 1:
            assert f"{limit} weights <= {limit} below batch 16" in report["0"]


def test_sparse_linear_layers_and_shared_layers_convert_once():
    shared = sparse_linear_layer(64, 64, 0.97)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    sparse_rda.sparsify(model)
    x = torch.randn(4, 64)
    with torch.no_grad():
        want = model(x)
    sparse_rda.to_inference(model, format="csr")
    assert model[0] is model[2] and isinstance(model[0], inference.CSRLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)


def test_formats_that_do_not_apply_say_why_and_leave_the_layer():
    model = nn.Sequential(sparse_linear_layer(64, 32, 0.5))
    report = sparse_rda.to_inference(model, format="semi-structured")
    assert type(model[0]) is nn.Linear and report["0"].startswith("dense: ")
    with pytest.raises(ValueError, match="format must be one of"):
        sparse_rda.to_inference(model, format="bsr")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        sparse_rda.to_inference(model, batch_size=0)
    with pytest.raises(TypeError, match="wrap a bare layer"):
        sparse_rda.to_inference(nn.Linear(3, 3))


def test_the_converted_layer_refuses_to_train():
    model = nn.Sequential(sparse_linear_layer(16, 8, 0.9))
    sparse_rda.to_inference(model, format="csr")
    with pytest.raises(RuntimeError, match="CSRLinear is for inference"):
        model(torch.randn(2, 16, requires_grad=True))
    model(torch.randn(2, 16))  # an input without grad runs (its output has none)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA formats need a CUDA device")
@pytest.mark.parametrize("fmt", ["tiles", "semi-structured"])
def test_cuda_formats_match_the_dense_layer(fmt):
    if fmt == "semi-structured" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs sm_80+")
    layer = sparse_linear_layer(512, 256, 0.9, tiles=True).cuda().bfloat16()
    if fmt == "semi-structured":
        with torch.no_grad():
            layer.weight.mul_(sparse_rda.reference.nm_keep(layer.weight.abs(), (2, 4), 512))
    model = nn.Sequential(layer)
    x = torch.randn(128, 512, device="cuda", dtype=torch.bfloat16)
    want = expected(x, layer)
    report = sparse_rda.to_inference(model, batch_size=128, format=fmt)
    assert report["0"].startswith(f"{fmt}:")
    with torch.no_grad():
        torch.testing.assert_close(model(x).float(), want, **TOL[torch.bfloat16])
