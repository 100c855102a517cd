"""Block granularity (docs/ALGORITHMS.md section 3): tile RMS reweighting, the group prox, whole zero tiles, and
the occupancy map the step writes."""

import math

import pytest
import torch

import sparse_rda
from sparse_rda import native, plan, reference
from helpers import (beside_the_reference, check_device_form_matches_host, check_device_form_skip_writes_nothing,
                     native_devices, step_and_compare)

RTOL = 1e-5  # docs/ALGORITHMS.md section 5: fused kernel vs the fp32 reference


def test_group_prox_by_hand():
    # one 2x2 tile with norm 5 and threshold .5: scale 1 - .5 * sqrt(4) / 5 = .8; a tile below its threshold dies
    T = torch.tensor([[3.0, 4.0, 0.1], [0.0, 0.0, -0.1]])
    threshold = torch.full_like(T, 0.5)
    w, live = reference.group_soft_threshold(T, threshold, (2, 2))
    torch.testing.assert_close(w, torch.tensor([[2.4, 3.2, 0.0], [0.0, 0.0, 0.0]]))
    assert live.tolist() == [[True, False]]


def test_tile_rms_on_ragged_edges():
    w = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [3.0, 4.0, 0.0]])
    a = reference.magnitude(w, plan.tensor_plan(w.shape, ("block", 2, 2), penalized=True))
    # tiles: [[1,1],[1,1]] rms 1; [[2],[2]] rms 2; [[3,4]] rms sqrt(12.5); [[0]] rms 0
    expected = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [math.sqrt(12.5)] * 2 + [0.0]])
    torch.testing.assert_close(a, expected)


def test_block_rda_prunes_whole_tiles_and_the_map_follows_the_weights():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 7) * 0.3)
    bias = torch.nn.Parameter(torch.randn(10))
    opt = sparse_rda.RDA([w, bias], lr=0.5, lam=5e-3, granularity=("block", 4, 3))
    for _ in range(40):
        w.grad, bias.grad = torch.randn_like(w) * 0.1, torch.randn_like(bias)
        opt.step()
        live = opt.state[w]["occupancy"]
        assert live.shape == (3, 3)
        assert torch.equal(live, reference.tile_sums((w.data != 0).float(), (4, 3)) > 0), "map matches the weights"
        dead = ~reference.tile_broadcast(live, w.shape, (4, 3))
        assert (w.data[dead] == 0).all()
        B = opt.state[w]["B"]
        assert torch.equal(B, reference.tile_broadcast(B[::4, ::3], w.shape, (4, 3))), "one threshold per tile"
    assert not live.all() and live.any(), "some tiles die, some live"
    assert "occupancy" not in opt.state[bias] and (bias.data != 0).all()


def test_block_granularity_is_checked():
    p = torch.nn.Parameter(torch.randn(4, 4))
    for bad in [("block", 0, 4), ("block", 2), ("tiles", 2, 2), ("block", 2.0, 2)]:
        with pytest.raises(ValueError, match="granularity"):
            sparse_rda.RDA([p], granularity=bad)
    opt = sparse_rda.RDA([p], granularity=("block", 2, 2))
    p.grad = torch.randn(4, 4)
    opt.step()  # auto -> the native CPU step when built, else the reference


NATIVE_DEVICES = native_devices()


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [(4, 8), (3, 5), (64, 64)])
def test_native_block_step_matches_the_reference(block, dtype, device):
    """csrc/cpu/block_step_cpu.cpp and csrc/cuda/block_step_kernels.cu for the 2-D weights (ragged tiles, a
    transposed one; rows a multiple of 4 or not, which the CUDA kernel reads as 16-byte packs or one by one),
    the element step for the rest, teacher-forced against the reference for 30 steps."""
    shapes = [(7, 5), (13,), (33, 17), (1, 1), (4, 3, 3, 3), (16, 24), (130, 72)]
    params = [torch.nn.Parameter((torch.randn(s) * 0.5).to(device=device, dtype=dtype)) for s in shapes]
    params.append(torch.nn.Parameter((torch.randn(11, 6) * 0.5).to(device=device, dtype=dtype).t()))
    fused, ref = beside_the_reference(sparse_rda.RDA, params, device, lr=0.8, lam=3e-2, averaging=0.3,
                                      weight_decay=1e-3, granularity=("block", *block))
    for k in range(30):
        # gradients growing down the rows (1e-2 to 1), so that tiles of every size both die and live
        grads = [torch.randn_like(p) * (torch.logspace(-2, 0, p.shape[0], device=device, dtype=p.dtype)[:, None] if p.dim() == 2
                                        else 1.0) for p in params]
        step_and_compare(fused, ref, grads, RTOL)
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params), "nnz counted in the step"
    maps = [fused.state[p]["occupancy"] for p in params if "occupancy" in fused.state[p]]
    assert any(not m.all() for m in maps) and any(m.any() for m in maps), "some tiles die, some live"
    assert not params[-1].is_contiguous()


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_native_block_step_over_more_tensors_than_one_launch_takes(device):
    """80 weights: the CUDA launcher passes 36 tensors per launch (csrc/cuda/block_step_kernels.cu), so the
    tensors, their per-tensor max of A and their counts are split over three launches."""
    gen = torch.Generator().manual_seed(1)
    shapes = [tuple(int(x) for x in torch.randint(1, 40, (2,), generator=gen)) for _ in range(80)]
    params = [torch.nn.Parameter((torch.randn(s) * 0.5).to(device)) for s in shapes]
    fused, ref = beside_the_reference(sparse_rda.RDA, params, device, lr=0.8, lam=2e-2, averaging=0.3,
                                      granularity=("block", 8, 8))
    for _ in range(5):
        grads = [torch.randn_like(p) * (1 + i % 7) / 7 for i, p in enumerate(params)]
        step_and_compare(fused, ref, grads, RTOL)
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("options", [dict(reweight=False), dict(maximize=True, momentum_time=None)])
def test_native_block_options_and_grad_scale(options, device):
    params = [torch.nn.Parameter(torch.randn(9, 10, device=device) * 0.5)]
    fused, ref = beside_the_reference(sparse_rda.RDA, params, device, lr=0.5, lam=2e-2, granularity=("block", 4, 4),
                                      **options)
    for opt in (fused, ref):
        opt.grad_scale = torch.tensor(1024.0, device=device)  # as torch.amp.GradScaler hands it over
    for _ in range(10):
        grads = [torch.randn_like(p) * 1024 for p in params]
        step_and_compare(fused, ref, grads, RTOL)


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("device_form", [False, True], ids=["host", "device-form"])
def test_opcheck_rda_block_step(device, device_form):
    shapes = [(5, 7), (9, 4)]
    params = [torch.randn(s, device=device) for s in shapes]
    # the device form: [lr, averaging, beta, beta_b, lam, 1 - x of the first three] and found_inf on the device,
    # the host values 0
    hyper = [0.0, 0.0, 0.0, 0.0, 0.0, 1e-4, 500.0] if device_form else [0.5, 1e-2, 0.9, 0.8, 0.3, 1e-4, 500.0]
    device_args = ((torch.tensor([0.5, 0.3, 0.9, 0.8, 1e-2, 0.7, 0.1, 0.2], device=device),
                    torch.zeros((), device=device))
                   if device_form else (None, None))
    args = (params, [torch.randn(s, device=device) for s in shapes], [p.clone() for p in params],
            *([torch.rand(s, device=device) for s in shapes] for _ in range(3)),
            [torch.zeros(2, 4, dtype=torch.bool, device=device), torch.zeros(3, 2, dtype=torch.bool, device=device)],
            [3, 2], hyper, True, False, torch.tensor(0.5, device=device), *device_args)
    torch.library.opcheck(torch.ops.sparse_rda.rda_block_step_.default, args)


# The device form through the block op: ragged tiles ((3, 5) on odd shapes), a tile as large as a weight
BLOCK_SHAPES = [(7, 5), (33, 17), (16, 24), (1, 1)]


@pytest.mark.parametrize("device", NATIVE_DEVICES)
@pytest.mark.parametrize("block, dtype", [((3, 5), torch.float32), ((4, 8), torch.float32), ((3, 5), torch.float16),
                                          ((64, 64), torch.float32)])
def test_native_block_device_form_matches_the_host_form(block, dtype, device):
    check_device_form_matches_host(device, device, BLOCK_SHAPES, ("block", *block), [True] * len(BLOCK_SHAPES),
                                   dtype=dtype)


@pytest.mark.parametrize("device", NATIVE_DEVICES)
def test_native_block_device_form_skip_on_found_inf_writes_nothing(device):
    check_device_form_skip_writes_nothing(device, device, BLOCK_SHAPES, ("block", 3, 5), [True] * len(BLOCK_SHAPES))


def test_block_state_round_trips_through_a_weights_only_checkpoint():
    import io

    p = torch.nn.Parameter(torch.randn(6, 6))
    opt = sparse_rda.RDA([p], lam=1e-2, granularity=("block", 3, 3))
    p.grad = torch.randn(6, 6)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = sparse_rda.RDA([q], lam=1e-2, granularity=("block", 3, 3))
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["granularity"] == ("block", 3, 3)
    assert opt2.state[q]["occupancy"].dtype == torch.bool
    assert torch.equal(opt2.state[q]["occupancy"], opt.state[p]["occupancy"])
