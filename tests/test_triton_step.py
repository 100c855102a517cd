"""The Triton kernels against the reference, on CPU through the interpreter (fp32), and on GPU when present."""

import functools

import pytest
import torch

import sparse_rda
from sparse_rda import dispatch
from helpers import (assert_state_close, assert_weights_match, assert_within_rounding_step, beside_the_reference,
                     capture_after_warm_up, check_capturable_grda_against_host, check_device_form_matches_host,
                     check_device_form_skip_writes_nothing, make_params, state_copy, step_and_compare, step_both)

pytestmark = pytest.mark.skipif(
    "triton" not in sparse_rda.backends() or not (dispatch.triton_interpreted() or torch.cuda.is_available()),
    reason="needs triton with a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-5  # docs/ALGORITHMS.md section 5: fused kernel vs the fp32 reference

# odd sizes, a 1-element tensor, conv weights, and one tensor spanning several chunks (see small_chunks)
SHAPES = [(7, 5), (13,), (4, 3, 3, 3), (1,), (1, 1), (33, 17), (130, 41), (6, 5, 1, 1)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """2048-element chunks (a power-of-two multiple of the block), so the (130, 41) tensor spans 3 programs
    whose per-tensor max and nonzero counts must combine: the interpreter is too slow for 65536-element chunks."""
    from sparse_rda.kernels import tensor_table

    monkeypatch.setattr(tensor_table, "CHUNK", 2048)


def run_rda(shapes, steps, **options):
    fused, ref = beside_the_reference(sparse_rda.RDA, make_params(shapes, zero_fraction=0.2, device=DEVICE),
                                      "triton", **options)
    for k in range(steps):
        step_and_compare(fused, ref, [torch.randn_like(p) for p in fused.param_groups[0]["params"]], RTOL)
    return fused


@pytest.mark.parametrize("granularity", ["element", "kernel", "channel"])
def test_rda_matches_the_reference_over_many_steps(granularity):
    fused = run_rda(SHAPES, 50, lr=0.8, lam=5e-4, averaging=0.4, weight_decay=1e-3, granularity=granularity)
    nnz = fused.nnz()
    for p in fused.param_groups[0]["params"]:
        assert nnz[p] == int(torch.count_nonzero(p)), "nnz counted in the step must be exact"
    assert any(nnz[p] < p.numel() for p in nnz), "the run must prune something"


@pytest.mark.parametrize("options", [
    dict(reweight=False), dict(momentum_time=None, maximize=True), dict(averaging=1.0, reweight_time=0),
    dict(sparsify_1d=True, max_factor=50.0),
])
def test_rda_options_match_the_reference(options):
    run_rda(SHAPES[:6], 10, **{**dict(lr=0.5, lam=1e-3, averaging=0.3), **options})


@pytest.mark.parametrize("block", [(4, 8), (3, 5)])
def test_block_granularity_matches_the_reference(block):
    """Tile kernels (kernels/rda_block_step.py) for the 2-D weights, element kernels for the rest; tiles padded
    to powers of two ((3, 5) -> (4, 8)) and ragged at the weights' edges."""
    shapes = [(7, 5), (13,), (33, 17), (1, 1), (4, 3, 3, 3), (16, 24)]
    params = make_params(shapes, zero_fraction=0.2, device=DEVICE)
    fused, ref = beside_the_reference(sparse_rda.RDA, params, "triton", lr=0.8, lam=3e-2, averaging=0.3,
                                      weight_decay=1e-3, granularity=("block", *block))
    for _ in range(20):
        step_and_compare(fused, ref, [torch.randn_like(p) for p in params], RTOL)
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)
    assert not fused.state[params[2]]["occupancy"].all(), "some tiles die"


def test_many_small_tensors_and_non_contiguous_params():
    shapes = [(3, 2)] * 40 + [(5,)] * 20
    params = make_params(shapes, zero_fraction=0.2, device=DEVICE)
    params.append(torch.nn.Parameter(torch.randn(9, 7, device=DEVICE).t()))  # a transposed view
    assert not params[-1].is_contiguous()
    fused, ref = beside_the_reference(sparse_rda.RDA, params, "triton", lam=1e-3, sparsify_1d=True)
    for _ in range(5):
        step_and_compare(fused, ref, [torch.randn_like(p) for p in params], RTOL)
    assert not params[-1].is_contiguous(), "the parameter keeps its layout"


def test_grda_matches_the_reference_over_many_steps():
    params = make_params(SHAPES, zero_fraction=0.2, device=DEVICE)
    fused, ref = beside_the_reference(sparse_rda.GRDA, params, "triton", lr=0.1, c=0.05, mu=0.55)
    copies = ref.param_groups[0]["params"]
    for k in range(60):
        fused.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.1 if k < 30 else 0.03
        inputs = step_both(fused, ref, [torch.randn_like(p) for p in params])
        for i, (p, q, before) in enumerate(zip(params, copies, inputs)):
            acc0 = before.get("acc", before["w"])
            scale = acc0.abs() + (ref.state[q]["acc"] - acc0).abs()
            assert fused.state[p]["l1"] == ref.state[q]["l1"]
            assert_state_close(fused.state[p]["acc"], ref.state[q]["acc"], RTOL, f"tensor {i} acc", scale)
            assert_weights_match(p.data, q.data, ref.state[q]["acc"], torch.as_tensor(ref.state[q]["l1"]), RTOL,
                                 f"tensor {i} w", scale)
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)
    assert any(nnz[p] < p.numel() for p in params)


@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3)), (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_grad_scaler_protocol_skips_on_inf_and_unscales_in_the_kernel(opt_cls, options):
    params = make_params(SHAPES[:4], zero_fraction=0.2, device=DEVICE)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = opt_cls(params, backend="triton", **options)
    ref = opt_cls(copies, backend="torch", **options)
    step_both(fused, ref, [torch.randn_like(p) for p in params])  # state exists
    before = [state_copy(fused.state[p]) for p in params], [p.detach().clone() for p in params]

    fused.found_inf, fused.grad_scale = torch.ones((), device=DEVICE), torch.full((), 1024.0, device=DEVICE)
    for p in params:
        p.grad = torch.randn_like(p) * 1024
    fused.step()
    for p, st, w in zip(params, *before):
        assert torch.equal(p.data, w)
        assert all(torch.equal(fused.state[p][k], v) if isinstance(v, torch.Tensor) else fused.state[p][k] == v
                   for k, v in st.items())

    fused.found_inf = torch.zeros((), device=DEVICE)
    grads = [torch.randn_like(p) for p in params]
    for p, q, g in zip(params, copies, grads):
        q.data.copy_(p.data)
        ref.state[q] = state_copy(fused.state[p])
        p.grad, q.grad = g * 1024, g.clone()
    fused.step()
    ref.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p.data, q.data, rtol=1e-6, atol=1e-7)


def test_capturable_rda_reads_lr_and_averaging_from_device_tensors():
    """Capturable mode (device scalars, device step counters) against the host-scalar path, under a schedule
    that updates the tensors in place."""
    params = make_params(SHAPES[:7], zero_fraction=0.2, device=DEVICE)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    options = dict(lam=5e-4, weight_decay=1e-3, granularity="kernel")
    fused = sparse_rda.RDA(params, backend="triton", capturable=True, lr=torch.tensor(0.8, device=DEVICE),
                           averaging=torch.tensor(0.0, device=DEVICE), **options)
    ref = sparse_rda.RDA(copies, backend="triton", lr=0.8, **options)
    lr_tensor = fused.param_groups[0]["lr"]
    schedules = [sparse_rda.schedules.CosineRDA(opt, total_steps=30) for opt in (fused, ref)]
    for _ in range(12):
        step_and_compare(fused, ref, [torch.randn_like(p) for p in params], RTOL)
        for sched in schedules:
            sched.step()
    assert fused.param_groups[0]["lr"] is lr_tensor, "schedules update device hyper-parameters in place"
    assert float(lr_tensor) == pytest.approx(ref.param_groups[0]["lr"], rel=1e-6)
    assert float(fused.param_groups[0]["averaging"]) == pytest.approx(ref.param_groups[0]["averaging"], rel=1e-6)
    assert fused.state[params[0]]["step"].dtype == torch.float64


@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3)), (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_capturable_skips_on_found_inf_without_a_host_sync(opt_cls, options, monkeypatch):
    params = make_params(SHAPES[:6], zero_fraction=0.2, device=DEVICE)
    opt = opt_cls(params, backend="triton", capturable=True, **options)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [state_copy(opt.state[p]) for p in params], [p.detach().clone() for p in params]
    opt.found_inf, opt.grad_scale = torch.ones((), device=DEVICE), torch.full((), 8.0, device=DEVICE)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("capturable step synced with the host"))
    opt.step()
    monkeypatch.undo()
    for p, st, w in zip(params, *before):
        assert torch.equal(p.data, w)
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), f"state {k} changed on a skipped step"
    nnz = opt.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params), "a skipped step still reports nonzeros"


def test_capturable_grda_thresholds_match_the_host_path():
    check_capturable_grda_against_host(make_params(SHAPES[:6], zero_fraction=0.2, device=DEVICE), "triton")


# The device form through the contract: the element kernels read lam from the five-value tensor too, the block
# kernels have the DEVICE_SCALARS variant (ragged (3, 5) tiles padded to (4, 8); few tiles: the interpreter runs
# one program per tile)
DEVICE_FORM_CASES = {
    "element": ([(7, 5), (13,), (4, 3, 3, 3), (33, 17), (1,)], "element", [True, False, True, True, False]),
    "kernel": ([(4, 3, 3, 3), (6, 5, 1, 1), (13,)], "kernel", [True, True, False]),
    "block": ([(7, 5), (10, 11), (1, 1)], ("block", 3, 5), [True] * 3),
}


@pytest.mark.parametrize("case", list(DEVICE_FORM_CASES))
def test_device_form_matches_the_host_form(case):
    check_device_form_matches_host("triton", DEVICE, *DEVICE_FORM_CASES[case], steps=2, rtol=RTOL)


@pytest.mark.parametrize("case", ["element", "block"])
def test_device_form_skip_on_found_inf_writes_nothing(case):
    check_device_form_skip_writes_nothing("triton", DEVICE, *DEVICE_FORM_CASES[case])


def test_capturable_needs_a_kernel_backend():
    with pytest.raises(ValueError, match="capturable=True needs a kernel backend"):
        sparse_rda.RDA(make_params([(3, 3)], zero_fraction=0.2, device=DEVICE), backend="torch", capturable=True)
    # outside capturable mode the reference takes a tensor lr, as torch's optimizers do (read on the host)
    params = make_params([(3, 3)], zero_fraction=0.2, device=DEVICE)
    sparse_rda.RDA(params, lr=torch.tensor(1.0), backend="torch").step()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
    "cuda" not in sparse_rda.backends(), reason="extension built without CUDA kernels"))])
@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3, granularity="channel")), (sparse_rda.GRDA, dict(c=0.05, mu=0.55)),
])
def test_cuda_graph_replay_matches_eager_steps(opt_cls, options, backend):
    """A captured step replayed with new grads and lr gives the eager steps, on Triton and on the native CUDA
    kernels (their tensor lists travel in the launch arguments, so the graph holds no host copies)."""
    shapes = [(64, 32), (17,), (8, 4, 3, 3)] + [(5, 3)] * 40  # > 36 tensors: two launches per kernel natively
    params = make_params(shapes, zero_fraction=0.2, device=DEVICE)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    graphed = opt_cls(params, backend=backend, capturable=True, lr=torch.tensor(0.1, device="cuda"), **options)
    eager = opt_cls(copies, backend=backend, capturable=True, lr=torch.tensor(0.1, device="cuda"), **options)
    grads = [torch.randn_like(p) for p in params]
    for p, q, g in zip(params, copies, grads):
        p.grad, q.grad = g, g.clone()
    def warm_up():  # compiles, builds and caches the tables
        for _ in range(3):
            graphed.step()
            eager.step()

    graph = capture_after_warm_up(warm_up, graphed.step)
    for k in range(5):
        new = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, copies, new):
            p.grad.copy_(g)
            q.grad.copy_(g)
        graphed.param_groups[0]["lr"].fill_(0.1 / (k + 1))
        eager.param_groups[0]["lr"].fill_(0.1 / (k + 1))
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_on_gpu(dtype):
    params = make_params(SHAPES, dtype=dtype, zero_fraction=0.2, device=DEVICE)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = sparse_rda.RDA(params, backend="triton", lam=1e-3)
    ref = sparse_rda.RDA(copies, backend="torch", lam=1e-3)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        step_both(fused, ref, grads)
        for p, q in zip(params, copies):
            for key in ("T", "B", "A", "v"):
                assert fused.state[p][key].dtype == torch.float32
            assert_within_rounding_step(p.data, q.data)
