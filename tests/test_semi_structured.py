"""2:4 layers (sparse_rda/semi_structured.py): NMLinear's dense path on CPU equals nn.Linear, the swap, the checks
of what can run semi-structured, and on a GPU (sm_80+) the semi-structured forward with dense dX / dW, one
compression per weight update, and the export for inference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparse_rda
from sparse_rda.semi_structured import NMLinear, is_2_4, to_semi_structured, unsupported_reason


def two_four(shape, dtype=torch.float32, device="cpu", seed=0):
    """A random weight with exactly 2 nonzeros in each group of 4 along its rows."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    keep = torch.rand(shape, generator=gen).reshape(-1, 4).argsort(-1) < 2
    return (w * keep.reshape(shape)).to(device=device, dtype=dtype)


def test_is_2_4_by_hand():
    assert is_2_4(torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]]))
    assert not is_2_4(torch.tensor([[1.0, 1, 2, 0, 0, 0, 0, 3]]))
    assert not is_2_4(torch.zeros(2, 6))  # rows not a multiple of 4
    assert is_2_4(two_four((8, 16)))


def test_on_cpu_it_is_the_dense_linear():
    torch.manual_seed(0)
    dense = nn.Linear(16, 8)
    with torch.no_grad():
        dense.weight.copy_(two_four((8, 16)))
    layer = NMLinear.from_linear(dense)
    assert layer.weight is dense.weight and layer.bias is dense.bias
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = layer(x)
    assert layer.kernel == "dense" and layer.compressions == 0
    y.square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    torch.testing.assert_close(y, F.linear(x, dense.weight, dense.bias), rtol=0, atol=0)
    F.linear(x, dense.weight, dense.bias).square().sum().backward()
    for got, t in zip(grads, (x, dense.weight, dense.bias)):
        assert torch.equal(got, t.grad)
    assert "CUDA" in unsupported_reason(layer.weight)


def test_sparsify_with_the_pattern_swaps_the_linear_layers():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    weights = [model[0].weight, model[2].weight]
    sparse_rda.sparsify(model, pattern="2:4")
    assert isinstance(model[0], NMLinear) and isinstance(model[2], NMLinear)
    assert [model[0].weight, model[2].weight] == weights
    with pytest.raises(ValueError, match="sparse tensor cores run 2:4 only"):
        sparse_rda.sparsify(nn.Linear(8, 8), pattern="1:4")
    assert to_semi_structured(model) == {"0": unsupported_reason(weights[0]), "2": unsupported_reason(weights[1])}
    assert model[0].weight is weights[0], "nothing converted on the CPU"


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("optimizer", [sparse_rda.RDA, sparse_rda.GRDA])
def test_a_step_bumps_the_weights_version_as_an_in_place_op_does(optimizer, backend):
    """NMLinear rebuilds its compressed copy when the weight's version moves; kernels write through pointers."""
    if backend not in sparse_rda.backends():
        pytest.skip(f"backend {backend!r} is not available here")
    p = nn.Parameter(torch.randn(8, 8))
    opt = optimizer([p], backend=backend)
    p.grad = torch.randn(8, 8)
    before = p._version
    opt.step()
    assert p._version > before


def test_rda_trains_the_layers_to_2_4_at_every_step():
    torch.manual_seed(0)
    model = sparse_rda.sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), pattern="2:4")
    opt = sparse_rda.RDA(sparse_rda.param_groups(model, lr=0.5, lam=1e-4, granularity=("nm", 2, 4)), backend="torch")
    for _ in range(5):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        assert is_2_4(model[0].weight) and is_2_4(model[2].weight)


def _gpu_with_sparse_tensor_cores():
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    return None if major >= 8 else f"compute capability {major}.{minor} < 8.0"


SM80 = pytest.mark.skipif(_gpu_with_sparse_tensor_cores() is not None,
                          reason=f"semi-structured sparsity needs sm_80+: {_gpu_with_sparse_tensor_cores()}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(128, 256), (256, 128), (64, 64)])
@pytest.mark.parametrize("batch", [(1,), (3, 40)])
@pytest.mark.gpu
@SM80
def test_semi_structured_forward_and_dense_gradients(shape, dtype, batch):
    torch.manual_seed(0)
    layer = NMLinear(shape[1], shape[0], device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(two_four(shape, dtype, "cuda"))
    x = torch.randn(*batch, shape[1], device="cuda", dtype=dtype, requires_grad=True)
    y = layer(x)
    assert layer.kernel == "semi-structured" and layer.compressions == 1
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref, w_ref, b_ref)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)  # bf16 / fp16 matmuls, accumulation order differs
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@SM80
def test_one_compression_per_weight_update_and_dense_when_not_2_4():
    torch.manual_seed(0)
    model = sparse_rda.sparsify(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)),
                                pattern="2:4").to("cuda", torch.bfloat16)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    model(x)
    assert model[0].kernel == "dense" and model[0].compressions == 0, "a dense initial weight is not 2:4"
    opt = sparse_rda.RDA(sparse_rda.param_groups(model, lr=0.5, lam=1e-4, granularity=("nm", 2, 4)))
    for step in range(1, 4):
        model(x).float().square().mean().backward()
        opt.step()
        opt.zero_grad()
        for _ in range(3):  # forwards between two updates reuse the compressed copy
            model(x)
        assert model[0].kernel == "semi-structured" and model[0].compressions == step


@pytest.mark.gpu
@SM80
def test_export_for_inference_matches_the_dense_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 60)).to("cuda",
                                                                                                    torch.float16)
    with torch.no_grad():
        model[0].weight.copy_(two_four((128, 256), torch.float16, "cuda"))
        model[2].weight.copy_(two_four((64, 128), torch.float16, "cuda", seed=1))
    x = torch.randn(32, 256, device="cuda", dtype=torch.float16)
    expected = model(x)
    report = to_semi_structured(model)
    assert report["0"] == "semi-structured" and report["2"] == "semi-structured"
    assert "not 2:4" in report["3"] or "multiples" in report["3"]
    assert isinstance(model[0].weight, torch.sparse.SparseSemiStructuredTensor)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=2e-2, atol=2e-2)

