"""Bad input: a clear error naming the parameter, raised before any tensor changes."""

import copy
import math
import warnings

import pytest
import torch

import sparse_rda


def fresh(shape=(4, 4)):
    p = torch.nn.Parameter(torch.randn(shape))
    p.grad = torch.randn(shape)
    return p


@pytest.mark.parametrize("name, value", [
    ("lr", -0.1), ("lr", math.nan), ("lr", math.inf), ("lam", -1e-6), ("lam", math.nan),
    ("momentum_time", -1.0), ("reweight_time", -2.0), ("max_factor", 0.5), ("averaging", 1.5),
    ("averaging", -0.1), ("weight_decay", -1.0), ("granularity", "block"), ("backend", "tpu"),
])
def test_rda_rejects_bad_hyper_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        sparse_rda.RDA([fresh()], **{name: value})


@pytest.mark.parametrize("name, value", [("lr", "fast"), ("lam", None), ("reweight", 1), ("maximize", "yes")])
def test_rda_rejects_wrong_types(name, value):
    with pytest.raises(TypeError, match=name):
        sparse_rda.RDA([fresh()], **{name: value})


@pytest.mark.parametrize("name, value", [("lr", -1.0), ("c", -0.001), ("c", math.inf), ("mu", 0.0), ("mu", -0.5)])
def test_grda_rejects_bad_hyper_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        sparse_rda.GRDA([fresh()], **{name: value})


@pytest.mark.parametrize("mu", [0.3, 0.5, 1.5])
def test_grda_warns_outside_the_papers_range(mu):
    with pytest.warns(UserWarning, match="mu"):
        sparse_rda.GRDA([fresh()], mu=mu)


def test_grda_in_range_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparse_rda.GRDA([fresh()], mu=0.51, c=0.001)


def test_unavailable_backend_is_named():
    from sparse_rda import dispatch

    for name in ("triton", "cuda", "cpu"):
        if name not in dispatch.installed():
            with pytest.raises(ValueError, match=f"backend='{name}' is not available in this installation"):
                sparse_rda.RDA([fresh()], backend=name)
        elif not dispatch._runs_on(name, torch.device("cpu")):
            with pytest.raises(ValueError, match=f"backend='{name}' cannot run on cpu tensors"):
                sparse_rda.RDA([fresh()], backend=name)


@pytest.mark.parametrize("opt_cls", [sparse_rda.RDA, sparse_rda.GRDA])
def test_complex_and_integer_params_are_rejected(opt_cls):
    with pytest.raises(TypeError, match="complex"):
        opt_cls([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])
    with pytest.raises(TypeError, match="floating"):
        opt_cls([torch.zeros(3, 3, dtype=torch.int64)])


@pytest.mark.parametrize("opt_cls", [sparse_rda.RDA, sparse_rda.GRDA])
def test_mixed_devices_in_a_group_are_rejected(opt_cls):
    with pytest.raises(ValueError, match="params: a param group must live on one device"):
        opt_cls([fresh(), torch.nn.Parameter(torch.empty(3, device="meta"))])


def snapshot(opt, params):
    """Values (not references) of the params, their grads and their state."""
    def copy(v):
        return v.clone() if isinstance(v, torch.Tensor) else v

    return ([copy(p.detach()) for p in params], [copy(p.grad) for p in params],
            {id(p): {k: copy(v) for k, v in opt.state[p].items()} for p in params})


def assert_untouched(opt, params, snap):
    """Every param, grad and state value as in `snap` (compared by value; no key added or dropped)."""
    weights, grads, states = snap
    for i, p in enumerate(params):
        assert same_value(p.detach(), weights[i]), f"params[{i}] changed"
        assert (p.grad is None) == (grads[i] is None) and (p.grad is None or same_value(p.grad, grads[i]))
        state = opt.state[p]
        assert state.keys() == states[id(p)].keys(), f"params[{i}]: state keys {sorted(state)}"
        for key, value in states[id(p)].items():
            assert same_value(state[key], value), f"params[{i}]: state[{key!r}] changed"


def same_value(a, b) -> bool:
    """Equal values (NaN equal to NaN), for tensors of any layout or device, or plain values."""
    if not isinstance(b, torch.Tensor):
        return type(a) is type(b) and (a == b or a != a and b != b)
    if not isinstance(a, torch.Tensor) or (a.layout, a.device, a.dtype, a.shape) != (b.layout, b.device, b.dtype,
                                                                                     b.shape):
        return False
    if b.is_meta:  # no values to compare
        return True
    if b.layout != torch.strided:
        a, b = a.to_dense(), b.to_dense()
    return torch.equal(a, b) or bool(((a == b) | (a != a) & (b != b)).all())


def two_stepped(opt_cls, backend, **options):
    """An optimizer over a 2-D weight and a bias, after one step (state exists), with new grads."""
    w, b = fresh((6, 8)), fresh((8,))
    opt = opt_cls([{"params": [w]}, {"params": [b], "penalize": False}], lr=0.1, backend=backend, **options)
    opt.step()
    w.grad, b.grad = torch.randn(6, 8), torch.randn(8)
    return opt, [w, b]


BAD_STATE = {
    "wrong shape": lambda state, key: state.__setitem__(key, torch.zeros(2, 2)),
    "float64": lambda state, key: state.__setitem__(key, state[key].double()),
    "missing": lambda state, key: state.pop(key),
    "not a tensor": lambda state, key: state.__setitem__(key, [0.0]),
}


@pytest.mark.parametrize("damage", list(BAD_STATE))
@pytest.mark.parametrize("opt_cls, key", [(sparse_rda.RDA, "T"), (sparse_rda.RDA, "v"), (sparse_rda.GRDA, "acc")])
def test_a_checkpoint_whose_state_does_not_fit_is_refused_before_any_change(opt_cls, key, damage, backend):
    """The heap corruption of issue 12: a checkpoint's mis-shaped state reached the native kernel. Now
    load_state_dict refuses it, and the optimizer keeps its own state and steps on."""
    opt, params = two_stepped(opt_cls, backend)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the live per-param dicts
    BAD_STATE[damage](saved["state"][0], key)
    snap = snapshot(opt, params)
    where = r"state_dict: param_groups\[0\]\['params'\]\[0\] \(shape \(6, 8\)\)"
    with pytest.raises(ValueError, match=rf"{where}: state\['{key}'\]"):
        opt.load_state_dict(saved)
    assert_untouched(opt, params, snap)
    opt.step()


def test_a_checkpoint_without_a_step_counter_is_refused(backend):
    opt, params = two_stepped(sparse_rda.RDA, backend)
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the live per-param dicts
    del saved["state"][1]["step"]
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] \(shape \(8,\)\): state\['step'\]"):
        opt.load_state_dict(saved)
    assert_untouched(opt, params, snap)


def test_a_checkpoint_with_a_tile_map_of_the_wrong_shape_is_refused(backend):
    opt, params = two_stepped(sparse_rda.RDA, backend, granularity=("block", 2, 4))
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the live per-param dicts
    saved["state"][0]["occupancy"] = torch.ones(1, 1, dtype=torch.bool)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"state\['occupancy'\] is torch.bool of shape \(1, 1\)"):
        opt.load_state_dict(saved)
    assert_untouched(opt, params, snap)


@pytest.mark.parametrize("opt_cls", [sparse_rda.RDA, sparse_rda.GRDA])
@pytest.mark.parametrize("grad, match", [
    (torch.ones(2, 2), r"grad: gradient of shape \(2, 2\) for a parameter of shape \(6, 8\)"),
    (torch.ones(6, 8, dtype=torch.int64), "grad: gradient of dtype torch.int64"),
], ids=["wrong shape", "integer"])
def test_a_grad_that_does_not_fit_fails_the_step_before_any_change(opt_cls, grad, match, backend):
    opt, params = two_stepped(opt_cls, backend)
    params[0].grad.data = grad  # .data bypasses autograd's own shape check, as the repro did
    snap = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.step()
    assert_untouched(opt, params, snap)


@pytest.mark.parametrize("opt_cls", [sparse_rda.RDA, sparse_rda.GRDA])
def test_sparse_gradient_fails_before_any_change(opt_cls):
    a, b = fresh(), fresh()
    opt = opt_cls([{"params": [a]}, {"params": [b]}], lr=0.1)
    opt.step()  # state exists
    a.grad = torch.randn(4, 4)
    b.grad = torch.randn(4, 4).to_sparse()
    weights = [a.detach().clone(), b.detach().clone()]
    states = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()} for p in (a, b)]
    with pytest.raises(RuntimeError, match="grad: sparse gradients are not supported"):
        opt.step()
    for p, w, st in zip((a, b), weights, states):
        assert torch.equal(p.data, w)
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v) if isinstance(v, torch.Tensor) else opt.state[p][k] == v


@pytest.mark.parametrize("opt_cls, key, value", [
    (sparse_rda.RDA, "lr", -1.0), (sparse_rda.RDA, "lam", math.nan), (sparse_rda.RDA, "granularity", "rows"),
    (sparse_rda.GRDA, "c", -1.0), (sparse_rda.GRDA, "mu", 0.0),
])
def test_bad_value_set_on_a_group_later_fails_the_step_before_any_change(opt_cls, key, value):
    a, b = fresh(), fresh()
    opt = opt_cls([{"params": [a]}, {"params": [b]}])
    opt.param_groups[1][key] = value
    weights = [a.detach().clone(), b.detach().clone()]
    with pytest.raises((ValueError, TypeError), match=key):
        opt.step()
    assert torch.equal(a.data, weights[0]) and torch.equal(b.data, weights[1])
    assert not opt.state[a] and not opt.state[b], "no state may be created by a failed step"


def test_a_rejected_param_group_is_not_added():
    opt = sparse_rda.RDA([fresh()])
    with pytest.raises(ValueError, match="lam"):
        opt.add_param_group({"params": [fresh()], "lam": -1.0})
    assert len(opt.param_groups) == 1


def test_nonfinite_gradients_propagate_and_grad_scaler_skips_them():
    # documented behaviour: a NaN/inf gradient makes that step's weights non-finite (like SGD); with
    # torch.amp.GradScaler the step is skipped when infs are found and nothing changes.
    p = fresh()
    opt = sparse_rda.RDA([p], lam=0.0, momentum_time=None)
    p.grad[0, 0] = math.nan
    opt.step()
    assert math.isnan(p.data[0, 0].item())

    q = torch.nn.Parameter(torch.randn(4, 4))
    opt = sparse_rda.RDA([q])
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before = q.detach().clone()
    scaler.scale((q * torch.tensor(math.inf)).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(q.data, before) and not opt.state[q]
