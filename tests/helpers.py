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


def nm_groups(x: torch.Tensor, plan, fill=0.0) -> torch.Tensor:
    """x as [rows, groups, M] along its rows of plan.row elements (a row's short last group padded with fill)."""
    m = plan.nm[1]
    rows = x.reshape(x.shape[0], plan.row)
    groups = -(-plan.row // m)
    return torch.nn.functional.pad(rows, (0, groups * m - plan.row), value=fill).reshape(rows.shape[0], groups, m)


def assert_at_most_n_per_group(w: torch.Tensor, plan, what: str = "weights"):
    """Every group of M (plan.nm) along a row of w holds at most N nonzeros."""
    counts = (nm_groups(w, plan) != 0).sum(-1)
    assert counts.numel() == 0 or int(counts.max()) <= plan.nm[0], (
        f"{what}: a group holds {int(counts.max())} nonzeros, more than N = {plan.nm[0]}")


def assert_nm_weights_match(w: torch.Tensor, w_ref: torch.Tensor, T: torch.Tensor, threshold: torch.Tensor, plan,
                            rtol: float = RTOL_FP32, what: str = "weights", T_scale: torch.Tensor | None = None):
    """N:M weights (w = S_thr(T) kept to the N largest |S_thr(T)| per group): at most N nonzeros per group, and
    assert_weights_match's agreement in every group whose choice is clear (its N-th and N+1-th largest |S(T)|
    further apart than the errors allow); in a group whose choice is a near tie either choice is right, so there
    each nonzero must be its S(T)."""
    assert_at_most_n_per_group(w, plan, what)
    n = plan.nm[0]
    T64, thr = T.double(), torch.as_tensor(threshold).double().expand_as(T)
    scale = torch.maximum(T64.abs(), thr) + (T64.abs().max() if T_scale is None else T_scale.double())
    keys = nm_groups(torch.clamp_min(T64.abs() - thr, 0.0), plan, fill=-1.0)
    room = nm_groups(4 * rtol * scale, plan).amax(-1)
    ordered = keys.sort(-1, descending=True).values
    clear = (ordered[..., n - 1] - ordered[..., n] > room) if keys.shape[-1] > n else torch.ones_like(room, dtype=torch.bool)
    clear = clear[..., None].expand(keys.shape).reshape(keys.shape[0], -1)[:, : plan.row].reshape(T.shape)
    assert_weights_match(w[clear], w_ref[clear], T[clear], thr[clear], rtol, what,
                         None if T_scale is None else T_scale[clear])
    soft = torch.sign(T64) * torch.clamp_min(T64.abs() - thr, 0.0)
    err = torch.where(w != 0, (w.double() - soft).abs(), 0.0)[~clear]
    assert not (err > rtol * scale[~clear] + 1e-30).any(), f"{what}: a kept weight of a near-tie group is not S(T)"


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
    from sparse_rda import plan as plans

    group = ref.param_groups[0]
    block = plans.block_shape(group["granularity"]) is not None
    for i, (p, q, before) in enumerate(zip(fused.param_groups[0]["params"], group["params"], inputs)):
        mine, theirs = fused.state[p], ref.state[q]
        T_scale, v_scale = rda_error_scales(group, before, q.grad)
        for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
            assert_state_close(mine[key], theirs[key], rtol, f"tensor {i} {key}", scale)
        if not block:
            assert float(mine["step"]) == float(theirs["step"])
            tensor_plan, threshold = ref._plan(group, q), group["lam"] * theirs["B"]
            if tensor_plan.constrained:
                assert_nm_weights_match(p.data, q.data, theirs["T"], threshold, tensor_plan, rtol, f"tensor {i} w",
                                        T_scale)
            else:
                assert_weights_match(p.data, q.data, theirs["T"], threshold, rtol, f"tensor {i} w", T_scale)
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
                      occupancy=None, inv_scale=None, device=None, found_inf=None, max_A=None, function="rda_step",
                      **hyper):
    """One RDA step of ``backend`` on these tensors (one bucket: one param dtype, one grad dtype); hyper: lr, lam,
    beta, beta_b, averaging, weight_decay, max_factor, reweight, maximize. Returns the backend's counts; with
    ``function="rda_max_A"`` the backend's maxes instead (nothing stepped)."""
    from sparse_rda import dispatch, plan, scalars, step

    plans = tuple(plan.tensor_plan(p.shape, granularity, pen) for p, pen in zip(params, penalized))
    bucket, = plan.buckets(plans, tuple((p.dtype, g.dtype) for p, g in zip(params, grads)))
    means = [step.group_means(p, pl.group_size, None) if pl.grouped and pl.penalized else None
             for p, pl in zip(params, plans)]
    tensors = step.RdaTensors(list(params), list(grads), list(T), list(B), list(A), list(v),
                              list(occupancy) if occupancy is not None else [None] * len(params), means, max_A)
    s = scalars.RdaScalars(**hyper, inv_scale=inv_scale, device=device, found_inf=found_inf)
    return getattr(dispatch.backend(backend), function)(tensors, bucket, s)


# ----------------------------------------------------------------------------------------------------------
# RDA's scalars in the device form (capturable mode, steps traced by torch.compile), through the contract

# lam is not the default (1e-6), so a backend reading the device form's host lam (0) prunes nothing and fails
DEVICE_FORM_GROUP = dict(lr=0.8, lam=3e-2, averaging=0.3, momentum_time=9.5, reweight_time=4.0, weight_decay=1e-3,
                         max_factor=50.0, reweight=True, maximize=False)


def scalar_fields(s) -> dict:
    """An RdaScalars as rda_contract_call's keywords (the tensors themselves, not copies)."""
    import dataclasses

    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


def contract_inputs(shapes, granularity, device, dtype=torch.float32, seed=0, fresh=True):
    """[params, T, B, A, v, tile maps or None] for rda_contract_call: N(0, 0.5^2) weights, some exactly 0; a
    first step's state (T = w, the rest 0, every tile live) or, fresh=False, random state and maps."""
    from sparse_rda import plan

    gen = torch.Generator().manual_seed(seed)
    w = [torch.randn(s, generator=gen) * 0.5 for s in shapes]
    w = [torch.where(torch.rand(s, generator=gen) < 0.2, 0.0, x) for s, x in zip(shapes, w)]
    state = [[x.clone() for x in w]] + [[torch.zeros(s) if fresh else torch.rand(s, generator=gen) for s in shapes]
                                        for _ in range(3)]
    block = plan.block_shape(granularity)
    maps = None
    if block:
        grids = [plan.tile_grid(s, block) for s in shapes]
        maps = [torch.ones(g, dtype=torch.bool) if fresh else torch.rand(g, generator=gen) < 0.5 for g in grids]
        maps = [m.to(device) for m in maps]
    return [[x.to(device=device, dtype=dtype) for x in w], *[[x.to(device) for x in xs] for xs in state], maps]


def row_scaled_grads(params, gen):
    """Gradients growing down the rows of 2-D weights (1e-2 to 1), so that some tiles and elements die, some live."""
    return [torch.randn(p.shape, generator=gen).to(p) * (torch.logspace(-2, 0, p.shape[0])[:, None].to(p)
                                                         if p.dim() == 2 else 1.0) for p in params]


def check_device_form_matches_host(backend, device, shapes, granularity, penalized, steps=3, dtype=torch.float32,
                                   rtol=1e-5):
    """``steps`` contract calls with RDA's scalars in the device form (``rda_scalars(..., on_device=True)``, a zero
    found_inf) against the host form, teacher-forced from the same inputs: params, state, tile maps and counts
    agree: exactly on the native backends (the device form carries the 1 - x values rounded once from double, as
    the host path rounds them), within rtol on Triton (it computes 1 - x in float32 from the rounded values)."""
    from sparse_rda import plan, scalars

    if backend in ("cpu", "cuda"):
        rtol = 0.0

    host = scalars.rda_scalars(DEVICE_FORM_GROUP, None, None, False, torch.device(device))
    on_device = scalars.rda_scalars(DEVICE_FORM_GROUP, None, torch.zeros((), device=device), True,
                                    torch.device(device))
    assert on_device.device.numel() == 8 and on_device.lam == 0.0, "the device form's lam is on the device only"
    block = plan.block_shape(granularity) is not None
    mine = contract_inputs(shapes, granularity, device, dtype)
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        grads = row_scaled_grads(mine[0], gen)
        theirs = [None if xs is None else [x.clone() for x in xs] for xs in mine]
        counts = rda_contract_call(backend, mine[0], grads, *mine[1:5], occupancy=mine[5], penalized=penalized,
                                   granularity=granularity, **scalar_fields(on_device))
        expected = rda_contract_call(backend, theirs[0], grads, *theirs[1:5], occupancy=theirs[5],
                                     penalized=penalized, granularity=granularity, **scalar_fields(host))
        for i in range(len(shapes)):
            for name, xs, ys in zip("TBAv", mine[1:5], theirs[1:5]):
                assert_state_close(xs[i], ys[i], rtol, f"step {k} tensor {i} {name}")
            w, w_ref = mine[0][i], theirs[0][i]
            if block and dtype != torch.float32:
                assert_within_rounding_step(w, w_ref, f"step {k} tensor {i} w")
            elif block:
                assert_state_close(w, w_ref, rtol, f"step {k} tensor {i} w")
            else:
                assert_weights_match(w, w_ref, theirs[1][i], DEVICE_FORM_GROUP["lam"] * theirs[2][i], rtol,
                                     f"step {k} tensor {i} w")
            if block:
                assert torch.equal(mine[5][i], theirs[5][i]), f"step {k} tensor {i} map"
        assert counts.tolist() == expected.tolist() == [int(torch.count_nonzero(w)) for w in mine[0]]
    # with lam read as 0, w would be T as stored
    assert any(not torch.equal(w, T.to(w.dtype)) for w, T, pen in zip(mine[0], mine[1], penalized) if pen), "lam acts"
    if not block:
        assert any(int(c) < w.numel() for c, w, pen in zip(counts, mine[0], penalized) if pen), "lam prunes"


def check_device_form_skip_writes_nothing(backend, device, shapes, granularity, penalized, dtype=torch.float32):
    """found_inf = 1 in the device form: params, state and tile maps bit-identical (random state, which a step
    would change), and the counts are the unchanged weights' nonzeros."""
    from sparse_rda import scalars

    s = scalars.rda_scalars(DEVICE_FORM_GROUP, None, torch.ones((), device=device), True, torch.device(device))
    mine = contract_inputs(shapes, granularity, device, dtype, fresh=False)
    before = [None if xs is None else [x.clone() for x in xs] for xs in mine]
    grads = row_scaled_grads(mine[0], torch.Generator().manual_seed(1))
    counts = rda_contract_call(backend, mine[0], grads, *mine[1:5], occupancy=mine[5], penalized=penalized,
                               granularity=granularity, **scalar_fields(s))
    for name, xs, ys in zip(["params", "T", "B", "A", "v", "occupancy"], mine, before):
        for i, (x, y) in enumerate(zip(xs or [], ys or [])):
            assert torch.equal(x, y), f"{name}[{i}] changed on a skipped step"
    assert counts.tolist() == [int(torch.count_nonzero(w)) for w in mine[0]]
    assert any(int(c) < w.numel() for c, w in zip(counts, mine[0])), "the counts see the zeros"


def capture_after_warm_up(warm_up, step):
    """A CUDA graph of ``step()``, captured after ``warm_up()`` ran on a side stream (Triton compiles and the
    optimizers build their caches there, outside the capture), as torch's CUDA graph docs prescribe."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm_up()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def gpu_backends():
    """The kernel backends a GPU test runs: triton, and the native CUDA kernels (skipped when not built)."""
    import pytest

    import sparse_rda

    return ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
        "cuda" not in sparse_rda.backends(), reason="extension built without CUDA kernels"))]


# ----------------------------------------------------------------------------------------------------------
# The RDA steps' max pass as its own op (rda_max_A / rda_block_max_A) and steps given max_A, on CPU and CUDA

MAX_A_HYPER = dict(lr=0.5, lam=1e-2, beta=0.9, beta_b=0.8, averaging=0.3, weight_decay=1e-4, max_factor=50.0)
# element op: (shape, group size or None (element mode), penalized); the kernel and channel modes of a conv
MAX_A_SHAPES = [((7, 5), None, True), ((13,), None, False), ((4, 3, 3, 3), 9, True), ((6, 2, 3, 3), 18, True),
                ((33, 17), None, True)]
# block op (block (4, 8)): ragged tiles both ways, whole aligned rows (the CUDA kernels' packs), one tile
MAX_A_BLOCK = (4, 8)
MAX_A_BLOCK_SHAPES = [(13, 19), (16, 24), (3, 5)]


def max_A_hyper(device_form: bool, device):
    """(hyper, device_hyper): the host values, or in the device form the host ones 0 where the device tensor
    [lr, averaging, beta, beta_b, lam, 1 - averaging, 1 - beta, 1 - beta_b] holds them."""
    h = MAX_A_HYPER
    hyper = [h["lr"], h["lam"], h["beta"], h["beta_b"], h["averaging"], h["weight_decay"], h["max_factor"]]
    if not device_form:
        return hyper, None
    values = [h["lr"], h["averaging"], h["beta"], h["beta_b"], h["lam"], 1 - h["averaging"], 1 - h["beta"],
              1 - h["beta_b"]]
    return [0.0] * 5 + hyper[5:], torch.tensor(values, dtype=torch.float64).float().to(device)


def max_A_inputs(device, dtype=torch.float32, block=False, device_form=False, nonfinite=False, copies=1, seed=0):
    """The keyword arguments of an RDA op call (its max op's; a step's too): random weights and state, a
    first element, a group and a tile made NaN / inf with ``nonfinite``. Block weights are multiples of 1/8, so a
    tile's sum of squares is exact in float32 whatever the order of the sum."""
    from sparse_rda import step

    gen = torch.Generator().manual_seed(seed)
    specs = (MAX_A_BLOCK_SHAPES if block else MAX_A_SHAPES) * copies
    params, state = [], []
    for spec in specs:
        shape = spec if block else spec[0]
        w = (torch.randint(-16, 17, shape, generator=gen) / 8.0) if block else torch.randn(shape, generator=gen) * 0.5
        params.append(w)
        state.append([w.clone(), *(torch.rand(shape, generator=gen) for _ in range(3))])
    if nonfinite:
        params[0].view(-1)[0] = float("nan")  # |w| NaN (element), a NaN tile RMS (block)
        state[0][2].view(-1)[8] = float("inf")  # an inf A (block: the second tile's, on its first element)
        if not block:
            params[2].view(-1)[10] = float("inf")  # a group's mean |w| inf
            params[4].view(-1)[7] = float("-inf")
    params = [w.to(device=device, dtype=dtype) for w in params]
    hyper, device_hyper = max_A_hyper(device_form, device)
    args = dict(params=params, grads=[torch.randn(w.shape, generator=gen).to(w) for w in params],
                T=[s[0].to(device) for s in state], B=[s[1].to(device) for s in state],
                A=[s[2].to(device) for s in state], v=[s[3].to(device) for s in state], hyper=hyper,
                reweight=True, maximize=False, inv_scale=None, device_hyper=device_hyper,
                found_inf=torch.zeros((), device=device) if device_form else None)
    if block:
        from sparse_rda import plan

        args["occupancy"] = [torch.ones(plan.tile_grid(w.shape, MAX_A_BLOCK), dtype=torch.bool, device=device)
                             for w in params]
        args["block"] = list(MAX_A_BLOCK)
    else:
        sizes = [spec[1] for spec in specs]
        penalized = [spec[2] for spec in specs]
        args["group_means"] = [step.group_means(w, size, None) if size and pen else None
                               for w, size, pen in zip(params, sizes, penalized)]
        args["factors"] = [float(size or 1) ** 0.5 if pen else 0.0 for size, pen in zip(sizes, penalized)]
    return args


_ELEMENT_ORDER = ("params", "grads", "T", "B", "A", "v", "group_means", "factors", "hyper", "reweight", "maximize",
                  "inv_scale", "device_hyper", "found_inf")
_BLOCK_ORDER = ("params", "grads", "T", "B", "A", "v", "occupancy", "block", "hyper", "reweight", "maximize",
                "inv_scale", "device_hyper", "found_inf")


def max_A_op_args(a) -> tuple:
    """The positional arguments of the op (without max_A) for max_A_inputs' keywords."""
    return tuple(a[k] for k in (_BLOCK_ORDER if "block" in a else _ELEMENT_ORDER))


def call_max_A(a) -> torch.Tensor:
    op = torch.ops.sparse_rda.rda_block_max_A if "block" in a else torch.ops.sparse_rda.rda_max_A
    return op(*max_A_op_args(a))


def call_step(a, max_A=None) -> torch.Tensor:
    op = torch.ops.sparse_rda.rda_block_step_ if "block" in a else torch.ops.sparse_rda.rda_step_
    return op(*max_A_op_args(a), max_A)


_WRITTEN = ("params", "T", "B", "A", "v", "occupancy")


def snapshot(a) -> dict:
    return {k: [t.clone() for t in a[k]] for k in _WRITTEN if k in a}


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit for bit (NaN included, which torch.equal calls unequal)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.is_floating_point:
        view = {4: torch.int32, 2: torch.int16}[x.element_size()]
        return torch.equal(x.contiguous().view(view), y.contiguous().view(view))
    return torch.equal(x, y)


def assert_unchanged(a, before: dict, what: str):
    for key, tensors in before.items():
        for i, (got, want) in enumerate(zip(a[key], tensors)):
            assert same_bits(got, want), f"{what}: {key}[{i}] changed"


def expected_max_A(a) -> torch.Tensor:
    """The max over each tensor's finite values of this step's A, computed with torch in float32 (0 for an
    unpenalized tensor): beta_b A + (1 - beta_b) a, a = |w|, the group mean or (block) the tile RMS."""
    h = MAX_A_HYPER
    beta_b = torch.tensor(h["beta_b"], dtype=torch.float64).float()
    one_minus = torch.tensor(1 - h["beta_b"], dtype=torch.float64).float()
    out = []
    for i, (w, A) in enumerate(zip(a["params"], a["A"])):
        w, A = w.detach().cpu(), A.cpu()
        if "block" in a:
            br, bc = a["block"]
            rows, cols = w.shape
            tr, tc = -(-rows // br), -(-cols // bc)
            squares = torch.nn.functional.pad(w.double() ** 2, (0, tc * bc - cols, 0, tr * br - rows))
            ones = torch.nn.functional.pad(torch.ones(rows, cols, dtype=torch.float64),
                                           (0, tc * bc - cols, 0, tr * br - rows))
            sums, counts = (x.reshape(tr, br, tc, bc).sum(dim=(1, 3)) for x in (squares, ones))
            magnitude, A = torch.sqrt(sums / counts).float(), A[::br, ::bc]
        elif a["factors"][i] <= 0:
            out.append(torch.zeros((), dtype=torch.float32))
            continue
        elif a["group_means"][i] is not None:
            means = a["group_means"][i].cpu()
            magnitude = means.repeat_interleave(w.numel() // means.numel()).reshape(w.shape)
        else:
            magnitude = w.float().abs()
        new_A = beta_b * A + one_minus * magnitude
        out.append(torch.where(torch.isfinite(new_A), new_A, 0.0).amax().clamp_min(0.0))
    return torch.stack(out)


def assert_within_one_ulp(got: torch.Tensor, want: torch.Tensor, what: str = "max_A"):
    got, want = got.cpu(), want.cpu()
    lo, hi = torch.nextafter(want, torch.tensor(-float("inf"))), torch.nextafter(want, torch.tensor(float("inf")))
    bad = (got < lo) | (got > hi) | got.isnan()
    assert not bad.any(), f"{what}: {got[bad].tolist()} for {want[bad].tolist()} (more than 1 ulp off)"


def check_max_A_op_matches_torch(device, block=False, dtype=torch.float32, device_form=False, copies=1):
    """The max op: float32 [n] on the params' device, each tensor's max over its finite values of this step's A
    (torch's, within 1 ulp), 0 unpenalized, NaN / inf ignored, the same with and without reweight; nothing
    written. A set found_inf (a skipped step) gives zeros."""
    a = max_A_inputs(device, dtype, block=block, device_form=device_form, nonfinite=True, copies=copies)
    before = snapshot(a)
    got = call_max_A(a)
    assert got.dtype == torch.float32 and got.shape == (len(a["params"]),) and got.device == a["params"][0].device
    assert_unchanged(a, before, "the max op")
    assert_within_one_ulp(got, expected_max_A(a))
    assert bool((got > 0).any())
    assert same_bits(call_max_A({**a, "reweight": False}), got), "reweight does not change the max"
    if device_form:
        assert same_bits(call_max_A({**a, "found_inf": torch.ones((), device=device)}), torch.zeros_like(got))
        host = {**a, "device_hyper": None, "found_inf": None, "hyper": max_A_hyper(False, device)[0]}
        assert same_bits(call_max_A(host), got), "the device form's beta_b is the host's"
    return got


def check_given_max_A_is_the_steps_own(device, block=False, dtype=torch.float32, device_form=False, copies=1,
                                       max_dtype=torch.float32):
    """A step given max_A = the max op's output leaves params, state, maps and counts bit-identical to a step
    that takes its own max, from the same start."""
    mine = max_A_inputs(device, dtype, block=block, device_form=device_form, copies=copies)
    theirs = {**mine, **snapshot(mine)}
    max_A = call_max_A(mine).to(max_dtype)
    counts = call_step(mine, max_A)
    expected_counts = call_step(theirs)
    assert_unchanged(mine, snapshot(theirs), "a step given the op's max_A")
    assert torch.equal(counts, expected_counts)


def check_given_max_A_sets_om(device, block=False):
    """A step given another max (2x the true one) reweights with it: B = alpha B + lr om factor, om =
    M / (1 + (M - 1) A / given max), from the B before and the A after the step; and that differs from the B of a
    step taking its own max."""
    h = MAX_A_HYPER
    mine = max_A_inputs(device, block=block)
    own = {**mine, **snapshot(mine)}
    B_before = [B.clone() for B in mine["B"]]
    given = 2 * call_max_A(mine)
    call_step(mine, given)
    call_step(own)
    for i, (A, B, B0) in enumerate(zip(mine["A"], mine["B"], B_before)):
        A, B0 = A.double().cpu(), B0.double().cpu()
        if block:
            br, bc = mine["block"]
            B0 = B0[::br, ::bc].repeat_interleave(br, 0).repeat_interleave(bc, 1)[:A.shape[0], :A.shape[1]]
            factor = 1.0
        elif mine["factors"][i] <= 0:
            continue
        else:
            factor = mine["factors"][i]
        M = h["max_factor"]
        om = M / (1 + (M - 1) * A / float(given[i]))
        assert_state_close(B.cpu(), h["averaging"] * B0 + h["lr"] * om * factor, 1e-6, f"tensor {i} B")
        assert not torch.equal(B, own["B"][i]), f"tensor {i}: the given max changes om"
