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


class LaunchSpy:
    """Stands in for a kernel: records the ALIGNED of each launch, then launches it."""

    def __init__(self, kernel):
        self.kernel, self.aligned = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.aligned.append(kwargs["ALIGNED"])
            return self.kernel[grid](*args, **kwargs)
        return launch


def spy_on_step_kernels(monkeypatch):
    from sparse_rda.kernels import grda_step, rda_block_step, rda_step

    spies = []
    for module in (rda_step, grda_step, rda_block_step):
        spies.append(LaunchSpy(module._step_kernel))
        monkeypatch.setattr(module, "_step_kernel", spies[-1])
    return spies


def views_at(shapes, offset):
    """Parameters that are views ``offset`` elements into their storage (as a flat buffer's slices are), for an
    odd offset not 16-byte aligned."""
    params = []
    for p in make_params(shapes, zero_fraction=0.2, device=DEVICE):
        storage = torch.zeros(offset + p.numel(), device=DEVICE)
        storage[offset:] = p.detach().reshape(-1)
        params.append(torch.nn.Parameter(storage[offset:].view(p.shape)))
    return params


def steps_match_the_reference(opt_cls, fused, ref, params, steps):
    """``steps`` random-grad steps of both; RDA compared through its state, gRDA through its weights."""
    for _ in range(steps):
        grads = [torch.randn_like(p) for p in params]
        if opt_cls is sparse_rda.RDA:
            step_and_compare(fused, ref, grads, RTOL)
        else:
            step_both(fused, ref, grads)
            for p, q in zip(params, ref.param_groups[0]["params"]):
                torch.testing.assert_close(p, q, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("offset", [0, 1])
def test_aligned_and_unaligned_params_match_the_reference(offset, monkeypatch):
    """16-byte aligned tensors take the vector variants (ALIGNED), a param at an odd storage offset the scalar
    ones, in the element, gRDA and block kernels; sizes that are no multiple of BLOCK end in a masked tail (the
    (130, 44) weight: two full 2048-element chunks, then 1624 elements: one full block and a tail). The block
    kernels' vectors also need widths that are multiples of 4 (all of these)."""
    spies = spy_on_step_kernels(monkeypatch)
    shapes = [(130, 44), (33, 16), (7,), (16, 24)]
    for opt_cls, options in [(sparse_rda.RDA, dict(lam=1e-3, granularity="kernel", sparsify_1d=True)),
                             (sparse_rda.RDA, dict(lam=3e-2, granularity=("block", 4, 8))),
                             (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55))]:
        params = views_at(shapes, offset)
        assert all(p.data_ptr() % 16 == 4 * offset for p in params)
        fused, ref = beside_the_reference(opt_cls, params, "triton", **options)
        steps_match_the_reference(opt_cls, fused, ref, params, 3)
        nnz = fused.nnz()
        assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)
    rda, grda, block = (spy.aligned for spy in spies)
    assert rda and grda and block, "every kernel ran"
    assert set(rda + grda + block) == {offset == 0}, (rda, grda, block)


@pytest.mark.parametrize("granularity", ["kernel", "channel"])
def test_groups_that_straddle_blocks_and_chunks(granularity):
    """Group sizes below, near and above BLOCK (1024): kernel 9, 4, 49, 1 and channel 1152, 700, 147, 1023
    elements, whose groups cross 1024-element blocks and 2048-element chunks; each element's group is found
    without a division (rda_step._div_small)."""
    run_rda([(3, 128, 3, 3), (4, 175, 2, 2), (2, 3, 7, 7), (5, 1023, 1, 1)], 4, lr=0.8, lam=5e-4, averaging=0.4,
            granularity=granularity)


def test_group_index_without_division_is_exact():
    """_div_small's q // size = high word of q * ceil(2**32 / size), for every size below BLOCK and every q a
    block can ask (q < size + BLOCK); from BLOCK on, a compare (q spans two groups at most)."""
    import numpy as np

    from sparse_rda.kernels.rda_step import BLOCK, group_magic

    for size in range(2, BLOCK):
        q = np.arange(size + BLOCK, dtype=np.uint64)
        assert ((q * np.uint64(group_magic(size))) >> np.uint64(32) == q // np.uint64(size)).all(), size
    assert group_magic(1) == group_magic(BLOCK) == 0


def test_launches_run_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device, so every launcher enters tensor_table.on_device with the
    params' device first. Off a GPU: the guard for cuda:1 is a torch.cuda.device for index 1 (made, not
    entered), and the launchers pass it the params' device."""
    import contextlib

    from sparse_rda.kernels import grda_step, rda_block_step, rda_step, tensor_table

    guard = tensor_table.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(tensor_table.on_device(torch.device("cpu")), contextlib.nullcontext)
    seen = []

    def record(device):
        seen.append(device)
        return contextlib.nullcontext()

    for module in (rda_step, grda_step, rda_block_step):
        monkeypatch.setattr(module, "on_device", record)
    params = make_params([(8, 8), (5,)], zero_fraction=0.2, device=DEVICE)
    for opt in (sparse_rda.RDA(params[:1], backend="triton", granularity=("block", 4, 4)),
                sparse_rda.RDA(params, backend="triton"), sparse_rda.GRDA(params, backend="triton", c=0.01)):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert seen == [params[0].device] * 3


def test_tables_are_device_tensors_made_once(monkeypatch):
    """A step copies nothing from the host once its tables exist: the tile table (block mode) and the chunk table
    are cached per shapes, the address table per addresses; one a captured graph read is kept past the bound."""
    from sparse_rda.kernels import device_cache, rda_block_step, tensor_table

    device = torch.device(DEVICE)
    tiles = rda_block_step._tile_table([(9, 8), (4, 4)], (4, 4), device)
    assert rda_block_step._tile_table([(9, 8), (4, 4)], (4, 4), device) is tiles
    assert tiles.tolist() == [[0, r, c] for r in range(3) for c in range(2)] + [[1, 0, 0]]
    assert tensor_table.chunk_table([5000], device)[0] is tensor_table.chunk_table([5000], device)[0]

    monkeypatch.setattr(device_cache, "capturing", lambda: True)
    captured = tensor_table.float_table((0.25, 0.5), device)
    monkeypatch.setattr(device_cache, "capturing", lambda: False)
    for k in range(tensor_table._TABLES.bound + 1):
        tensor_table.float_table((float(k), 1.5), device)
    assert tensor_table.float_table((0.25, 0.5), device) is captured


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
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3, granularity="channel")),
    (sparse_rda.RDA, dict(lam=3e-2, granularity=("block", 64, 64))), (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_params_on_the_second_gpu_while_the_first_is_current(opt_cls, options):
    """The launches go to the params' device (cuda:1), not the current one (cuda:0): else illegal addresses."""
    with torch.cuda.device(0):
        params = make_params([(130, 64), (256, 192), (8, 4, 3, 3), (17,)], zero_fraction=0.2, device="cuda:1")
        fused, ref = beside_the_reference(opt_cls, params, "triton", **options)
        steps_match_the_reference(opt_cls, fused, ref, params, 5)
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0


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
