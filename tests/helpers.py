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


def backend_devices(*names):
    """The backend x device matrix as pytest params ``(backend, device)``: each named backend (default: all) on each
    device it runs on, CUDA pairs marked gpu, each skipped with the reason where this installation lacks the backend.
    Triton runs CPU tensors only under TRITON_INTERPRET=1 (else that pair is skipped)."""
    import pytest
    from sparse_rda import dispatch

    runs_on = {"torch": ("cpu", "cuda"), "cpu": ("cpu",), "triton": ("cpu", "cuda"), "cuda": ("cuda",)}
    params = []
    for name in names or tuple(runs_on):
        for device in runs_on[name]:
            marks = [pytest.mark.gpu] if device == "cuda" else []
            if name not in dispatch.installed():
                marks.append(pytest.mark.skip(reason=dispatch._MISSING[name]))
            elif device == "cpu" and not dispatch._runs_on(name, torch.device("cpu")):
                marks.append(pytest.mark.skip(reason=f"{name} runs CPU tensors only under TRITON_INTERPRET=1"))
            params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


def native_devices():
    """pytest params for the native backends' devices (the backend's name is its device's): "cpu" where the
    extension is built, "cuda" (marked gpu) where it has CUDA kernels."""
    import pytest

    return [pytest.param(p.values[0][1], marks=p.marks, id=p.id.split("-")[1]) for p in backend_devices("cpu", "cuda")]


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


def make_params(shapes, dtype=torch.float32, zero_fraction=0.0, device="cpu"):
    """Parameters of these shapes, N(0, 0.5^2), with about ``zero_fraction`` of them exactly 0."""
    params = []
    for shape in shapes:
        w = torch.randn(shape) * 0.5
        if zero_fraction:
            w[torch.rand(shape) < zero_fraction] = 0.0
        params.append(torch.nn.Parameter(w.to(device=device, dtype=dtype)))
    return params


def beside_the_reference(opt_cls, params, backend: str, **options):
    """(fused, ref): ``opt_cls`` on ``params`` with ``backend``, and on copies with the reference."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    return opt_cls(params, backend=backend, **options), opt_cls(copies, backend="torch", **options)


def compare_rda(fused, ref, inputs, rtol):
    """After step_both: the state within rtol (errors of sums judged against their terms) and the weights. In
    element modes the weights as the prox of T (the same zeros away from the threshold) and the step counts
    equal; in block mode fp32 weights within rtol, low-precision ones within a rounding step, and the same maps."""
    group = ref.param_groups[0]
    block = isinstance(group["granularity"], (tuple, list))
    for i, (p, q, before) in enumerate(zip(fused.param_groups[0]["params"], group["params"], inputs)):
        mine, theirs = fused.state[p], ref.state[q]
        T_scale, v_scale = rda_error_scales(group, before, q.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert_state_close(mine[key], theirs[key], rtol, f"tensor {i} {key}", scale)
        if not block:
            assert float(mine["step"]) == float(theirs["step"])
            assert_weights_match(p.data, q.data, theirs["T"], group["lam"] * theirs["B"], rtol, f"tensor {i} w",
                                 T_scale)
            continue
        if p.dtype == torch.float32:
            assert_state_close(p.data, q.data, rtol, f"tensor {i} w", T_scale)
        else:  # bf16 / fp16 weights: within one rounding step of the reference's
            assert_within_rounding_step(p.data, q.data, f"tensor {i} w")
        if "occupancy" in theirs:
            assert torch.equal(mine["occupancy"], theirs["occupancy"]), f"tensor {i} map"


def step_and_compare(fused, ref, grads, rtol):
    """One step of both from the same inputs (step_both), then compare_rda."""
    compare_rda(fused, ref, step_both(fused, ref, grads), rtol)


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


# ----------------------------------------------------------------------------------------------------------
# A backend called directly, through the contract (sparse_rda/step.py), as the optimizers call it


def rda_contract_call(backend: str, params, grads, T, B, A, v, *, penalized, granularity="element",
                      occupancy=None, inv_scale=None, device=None, found_inf=None, **hyper):
    """One RDA step of ``backend`` on these tensors (one bucket: one param dtype, one grad dtype); hyper: lr, lam,
    beta, beta_b, averaging, weight_decay, max_factor, reweight, maximize. Returns the backend's counts."""
    from sparse_rda import dispatch, plan, scalars, step

    plans = tuple(plan.tensor_plan(p.shape, granularity, pen) for p, pen in zip(params, penalized))
    bucket, = plan.buckets(plans, tuple((p.dtype, g.dtype) for p, g in zip(params, grads)))
    means = [step.group_means(p, pl.group_size, None) if pl.grouped and pl.penalized else None
             for p, pl in zip(params, plans)]
    tensors = step.RdaTensors(list(params), list(grads), list(T), list(B), list(A), list(v),
                              list(occupancy) if occupancy is not None else [None] * len(params), means)
    s = scalars.RdaScalars(**hyper, inv_scale=inv_scale, device=device, found_inf=found_inf)
    return dispatch.backend(backend).rda_step(tensors, bucket, s)
