"""Comparisons with the tolerances of docs/ALGORITHMS.md section 5."""

from __future__ import annotations

import torch

RTOL_FP32 = 1e-6


def assert_state_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL_FP32, what: str = "",
                       scale: torch.Tensor | None = None):
    """Max relative error <= rtol. Relative to each element plus a floor: `scale` (the size of the terms summed
    into it, where a sum may cancel) or else rtol * max |expected|."""
    actual, expected = actual.double(), expected.double()
    if scale is None:
        floor = rtol * max(expected.abs().max().item(), 1e-30) if expected.numel() else 0.0
    else:
        floor = rtol * scale.double()
    err = (actual - expected).abs()
    bound = rtol * expected.abs() + floor
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {expected.numel()} elements off; worst error {err.max().item():.3g}, "
        f"at expected {expected.flatten()[err.flatten().argmax()].item():.6g}"
    )


def assert_within_rounding_step(actual: torch.Tensor, expected: torch.Tensor, what: str = "weights"):
    """Low-precision weights within one rounding step of the reference's: eps * |expected|, or the fixed
    subnormal spacing eps * smallest_normal below the normal range."""
    info = torch.finfo(actual.dtype)
    step = info.eps * expected.float().abs().clamp(min=info.smallest_normal)
    bad = (actual.float() - expected.float()).abs() > step
    assert not bad.any(), f"{what}: {int(bad.sum())} of {expected.numel()} elements beyond one rounding step"


def assert_weights_match(w: torch.Tensor, w_ref: torch.Tensor, T: torch.Tensor, threshold: torch.Tensor,
                         rtol: float = RTOL_FP32, what: str = "weights", T_scale: torch.Tensor | None = None):
    """w = S_thr(T): identical zero pattern except elements whose |T| is within 1e-6 relative of the threshold,
    and errors within rtol of the operands' size max(|T|, thr) plus T's own error scale (T_scale, the size of
    the terms summed into T; else max |T|): |T| - thr cancels, so w itself may be tiny."""
    T, threshold = T.double(), torch.as_tensor(threshold).double().expand_as(T)
    near = (T.abs() - threshold).abs() <= 1e-6 * threshold.abs()
    flipped = ((w == 0) != (w_ref == 0)) & ~near
    assert not flipped.any(), f"{what}: zero pattern differs at {int(flipped.sum())} elements away from the threshold"
    err = (w.double() - w_ref.double()).abs()
    T_scale = T.abs().max() if T_scale is None else T_scale.double()
    bad = err > rtol * (torch.maximum(T.abs(), threshold) + T_scale) + 1e-30
    assert not bad.any(), f"{what}: {int(bad.sum())} of {w.numel()} elements off; worst error {err.max().item():.3g}"


def rda_error_scales(group: dict, before: dict, grad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_scale, v_scale): the sizes of the terms summed into one step's T and v, from that step's inputs
    (weights "w", and state "T", "v" when the tensor had any; grad None when it had no gradient). Sums can
    cancel, so errors are judged against these, not against the (possibly tiny) results."""
    from sparse_rda.reference import decay

    lr, alpha = float(group["lr"]), float(group["averaging"])
    beta = decay(lr, group["momentum_time"])
    w0 = before["w"]
    T0 = before.get("T", w0)
    v0 = before.get("v", torch.zeros_like(w0))
    grad = torch.zeros_like(w0) if grad is None else grad
    v_scale = beta * v0.abs() + (1 - beta) * (grad.float().abs() + group["weight_decay"] * w0.abs())
    T_scale = alpha * T0.abs() + (1 - alpha) * w0.abs() + lr * v_scale
    return T_scale, v_scale


def native_devices():
    """pytest params for the native backends' devices: "cpu" where the extension is built, "cuda" (marked gpu)
    where it has CUDA kernels."""
    import pytest
    from sparse_rda import native

    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not native.has_kernels("cpu"), reason="extension not built")),
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not native.has_kernels("cuda"),
                                                                        reason="extension built without CUDA kernels")]),
    ]


# ----------------------------------------------------------------------------------------------------------
# Two optimizers stepped side by side from the same inputs


def state_copy(state):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def step_both(fused, ref, grads, **kwargs):
    """One step of both optimizers from the same weights and state (the fused one's)."""
    for p, q, g in zip(fused.param_groups[0]["params"], ref.param_groups[0]["params"], grads):
        q.data.copy_(p.data)
        ref.state[q] = state_copy(fused.state[p])
        if not ref.state[q]:
            del ref.state[q]
        p.grad, q.grad = g.clone(), g.clone()
    inputs = [{"w": p.detach().float().clone(), **state_copy(ref.state[q])}
              for p, q in zip(fused.param_groups[0]["params"], ref.param_groups[0]["params"])]
    fused.step(**kwargs)
    ref.step(**kwargs)
    return inputs


def compare_block_rda(fused, ref, inputs, rtol):
    """Block mode after step_both: state within rtol (errors of sums judged against their terms), fp32 weights
    too and low-precision ones within a rounding step, and the same tile maps."""
    group = ref.param_groups[0]
    for i, (p, q, before) in enumerate(zip(fused.param_groups[0]["params"], group["params"], inputs)):
        T_scale, v_scale = rda_error_scales(group, before, q.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert_state_close(fused.state[p][key], ref.state[q][key], rtol, f"tensor {i} {key}", scale)
        if p.dtype == torch.float32:
            assert_state_close(p.data, q.data, rtol, f"tensor {i} w", T_scale)
        else:  # bf16 / fp16 weights: within one rounding step of the reference's
            assert_within_rounding_step(p.data, q.data, f"tensor {i} w")
        if "occupancy" in ref.state[q]:
            assert torch.equal(fused.state[p]["occupancy"], ref.state[q]["occupancy"]), f"tensor {i} map"


def check_capturable_grda_against_host(params, backend: str) -> None:
    """gRDA with capturable=True (lr a tensor, counters and thresholds as tensors) against the host path on copies,
    15 steps with an lr change at step 8: thresholds, step counts and weights agree (the tensor lr is float32,
    0.03 -> 0.0299999993, the host's a double: 1e-8 apart)."""
    import pytest
    import sparse_rda

    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    device = params[0].device
    fused = sparse_rda.GRDA(params, backend=backend, capturable=True, lr=torch.tensor(0.1, device=device),
                            c=0.05, mu=0.55)
    ref = sparse_rda.GRDA(copies, backend=backend, lr=0.1, c=0.05, mu=0.55)
    for k in range(15):
        if k == 8:
            fused.param_groups[0]["lr"].fill_(0.03)
            ref.param_groups[0]["lr"] = 0.03
        for p, q in zip(params, copies):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        ref.step()
    for p, q in zip(params, copies):
        assert float(fused.state[p]["l1"]) == pytest.approx(float(ref.state[q]["l1"]), rel=1e-6)
        assert float(fused.state[p]["step"]) == float(ref.state[q]["step"])
        torch.testing.assert_close(p.data, q.data, rtol=1e-5, atol=1e-6)
