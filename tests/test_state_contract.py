"""State that arrives from outside the constructor: checkpoints of another granularity or with bad options, copies,
state edited by hand between steps, tensor hyper-parameters (foreign and older checkpoints, Python-number counters
and the backend kept on load: tests/test_torch_optim_suite.py). Either it works exactly (compared by value with a run that never left
the process) or it fails with an error naming the group, the index and the key, with nothing changed."""

import copy
import io
import pickle

import pytest
import torch

import sparse_rda
from test_bad_input import assert_untouched, snapshot


def seeded_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 8, generator=g)), torch.nn.Parameter(torch.randn(8, generator=g))]


def grads_for(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in params]


def run(opt, params, steps, first_seed=0):
    for k in range(steps):
        for p, grad in zip(params, grads_for(params, first_seed + k)):
            p.grad = grad
        opt.step()


OPTIMIZERS = {
    "rda": lambda params, **kw: sparse_rda.RDA(params, lr=0.1, lam=1e-2, **kw),
    "rda-block": lambda params, **kw: sparse_rda.RDA(params, lr=0.1, lam=1e-2, granularity=("block", 2, 4), **kw),
    "grda": lambda params, **kw: sparse_rda.GRDA(params, lr=0.1, c=0.01, mu=0.55, **kw),
}


def stepped(name, backend, steps=3):
    params = seeded_params()
    opt = OPTIMIZERS[name](params, backend=backend)
    run(opt, params, steps)
    return opt, params


def assert_same_run(opt_a, params_a, opt_b, params_b, steps=3, first_seed=100):
    """Both optimizers continue from here on the same gradients: bit-identical weights and state."""
    run(opt_a, params_a, steps, first_seed)
    run(opt_b, params_b, steps, first_seed)
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        assert torch.equal(a, b), f"params[{i}] differ"
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key].cpu(), state_b[key].cpu()), f"params[{i}] state[{key!r}] differs"


# ----------------------------------------------------------------------------------------------------------
# Checkpoints of another granularity, with bad options or counters


@pytest.mark.parametrize("saved_as, loaded_as", [("element", ("block", 2, 4)), (("block", 2, 4), "element"),
                                                 (("block", 2, 4), ("block", 4, 4)), ("element", "kernel")])
def test_a_state_dict_of_another_granularity_is_refused(saved_as, loaded_as, backend):
    saved_params = seeded_params()
    saved = sparse_rda.RDA(saved_params, lr=0.1, granularity=saved_as, backend=backend)
    run(saved, saved_params, 2)
    params = seeded_params()
    opt = sparse_rda.RDA(params, lr=0.1, granularity=loaded_as, backend=backend)
    run(opt, params, 1)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[0\] was saved with granularity=.*build it with the saved one"):
        opt.load_state_dict(saved.state_dict())
    assert_untouched(opt, params, snap)
    assert opt.param_groups[0]["granularity"] == loaded_as


def test_a_granularity_through_json_is_the_same_granularity(backend):
    opt, params = stepped("rda-block", backend)
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0]["granularity"] = ["block", 2, 4]  # a tuple read back from JSON
    params_b = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt_b = OPTIMIZERS["rda-block"](params_b, backend=backend)
    opt_b.load_state_dict(saved)
    assert_same_run(opt, params, opt_b, params_b)


@pytest.mark.parametrize("key, value", [("lam", -1.0), ("lr", float("nan")), ("max_factor", 0.5),
                                        ("granularity", "rows"), ("reweight", "yes")])
def test_a_checkpoint_with_a_bad_option_is_refused_naming_it(key, value, backend):
    opt, params = stepped("rda", backend)
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0][key] = value
    snap = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=rf"state_dict: param_groups\[0\].*{key}"):
        opt.load_state_dict(saved)
    assert_untouched(opt, params, snap)
    assert opt.param_groups[0][key] != value


def test_a_counter_that_is_not_a_number_is_refused(backend):
    opt, params = stepped("grda", backend)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][1]["l1"] = "0.5"
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] \(shape \(8,\)\): state\['l1'\]"):
        opt.load_state_dict(saved)
    assert_untouched(opt, params, snap)


# ----------------------------------------------------------------------------------------------------------
# Copies


def pickled(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # pickle with torch's tensor storage
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj)), pickled],
                         ids=["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_copied_optimizer_steps_exactly_like_the_original(name, how, backend):
    opt, params = stepped(name, backend)
    opt_b, params_b = how((opt, params))  # together, as a trainer object is copied: the copy steps its own params
    assert all(a is not b for a, b in zip(params, params_b))
    assert_same_run(opt, params, opt_b, params_b)


def test_a_copy_keeps_the_sparsity_controller(backend):
    params = seeded_params()
    opt = sparse_rda.RDA(params, lr=0.1, lam=1e-4, target_sparsity=0.5, total_steps=20, backend=backend)
    run(opt, params, 10)
    opt_b, params_b = copy.deepcopy((opt, params))
    assert opt_b.param_groups[0]["lam"] == opt.param_groups[0]["lam"] != 1e-4
    assert_same_run(opt, params, opt_b, params_b, steps=10)


# ----------------------------------------------------------------------------------------------------------
# State edited by hand between steps: the next step checks it (by identity, so an untouched state costs nothing)


HAND_EDITS = {
    "wrong shape": (lambda s: s.__setitem__("T", torch.zeros(2, 2)),
                    r"state\['T'\] is torch.float32 of shape \(2, 2\)"),
    "float64": (lambda s: s.__setitem__("v", s["v"].double()), r"state\['v'\] is torch.float64"),
    "missing": (lambda s: s.pop("B"), r"state\['B'\] is missing"),
    "expanded": (lambda s: s.__setitem__("A", torch.zeros(1).expand(6, 8)), r"state\['A'\] is an expanded view"),
    "on meta": (lambda s: s.__setitem__("T", torch.empty(6, 8, device="meta")), r"state\['T'\] is on meta"),
    "number step": (lambda s: s.__setitem__("step", 3), r"state\['step'\] must be a one-element real tensor"),
}


@pytest.mark.parametrize("edit", list(HAND_EDITS))
def test_state_edited_by_hand_fails_the_next_step_before_any_change(edit, backend):
    params = seeded_params()
    bias_group_first = [{"params": [params[1]], "penalize": False}, {"params": [params[0]]}]
    opt = sparse_rda.RDA(bias_group_first, lr=0.1, lam=1e-2, backend=backend)
    run(opt, params, 2)
    damage, match = HAND_EDITS[edit]
    damage(opt.state[params[0]])
    for p, grad in zip(params, grads_for(params, 50)):
        p.grad = grad
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=rf"state of param_groups\[1\]\['params'\]\[0\] \(shape \(6, 8\)\): {match}"):
        opt.step()
    assert_untouched(opt, params, snap)  # the first group did not step either


def test_grda_state_edited_by_hand_fails_before_any_change(backend):
    opt, params = stepped("grda", backend)
    opt.state[params[1]]["acc"] = torch.zeros(3)
    for p, grad in zip(params, grads_for(params, 50)):
        p.grad = grad
    snap = snapshot(opt, params)
    where = r"state of param_groups\[0\]\['params'\]\[1\] \(shape \(8,\)\)"
    with pytest.raises(ValueError, match=rf"{where}: state\['acc'\]"):
        opt.step()
    assert_untouched(opt, params, snap)


def test_a_param_resized_under_its_state_fails_the_step(backend):
    opt, params = stepped("rda", backend)
    params[0].data = torch.zeros(3, 8)
    params[0].grad = torch.zeros(3, 8)
    with pytest.raises(ValueError, match=r"state\['T'\] is torch.float32 of shape \(6, 8\); the step needs .*\(3, 8\)"):
        opt.step()


def test_an_expanded_or_sparse_parameter_is_refused():
    with pytest.raises(ValueError, match=r"params: a parameter of shape \(4, 4\) is an expanded view"):
        sparse_rda.RDA([torch.zeros(1, 4).expand(4, 4)])
    with pytest.raises(TypeError, match=r"params: parameters must be dense tensors \(got layout torch.sparse_coo"):
        sparse_rda.GRDA([torch.nn.Parameter(torch.eye(3).to_sparse())])


# ----------------------------------------------------------------------------------------------------------
# Tensor hyper-parameters outside capturable mode, as torch's optimizers take them


@pytest.mark.parametrize("make, keys", [
    (lambda params, lr, backend: sparse_rda.RDA(params, lr=lr, averaging=lr * 0 + 0.5, backend=backend),
     ("lr", "averaging")),
    (lambda params, lr, backend: sparse_rda.GRDA(params, lr=lr, c=0.01, mu=0.55, backend=backend), ("lr",)),
], ids=["rda", "grda"])
def test_a_tensor_lr_steps_as_the_float_and_follows_a_scheduler(make, keys, backend):
    params_t, params_f = seeded_params(), seeded_params()
    opt_t = make(params_t, torch.tensor(0.1), backend)
    opt_f = make(params_f, 0.1, backend)
    assert all(isinstance(opt_t.param_groups[0][k], torch.Tensor) for k in keys)
    sched_t = torch.optim.lr_scheduler.StepLR(opt_t, step_size=2, gamma=0.5)
    sched_f = torch.optim.lr_scheduler.StepLR(opt_f, step_size=2, gamma=0.5)
    for k in range(5):
        run(opt_t, params_t, 1, first_seed=k)
        run(opt_f, params_f, 1, first_seed=k)
        sched_t.step()
        sched_f.step()
    assert float(opt_t.param_groups[0]["lr"]) == pytest.approx(opt_f.param_groups[0]["lr"])
    for a, b in zip(params_t, params_f):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the tensor lr is float32, the float a double


@pytest.mark.parametrize("lr, match, error", [
    (torch.tensor(-0.1), "lr must be in", ValueError),
    (torch.tensor([0.1, 0.2]), "lr must be a one-element floating tensor", TypeError),
    (torch.tensor(1), "lr must be a one-element floating tensor", TypeError),
])
def test_a_bad_tensor_lr_is_refused(lr, match, error):
    with pytest.raises(error, match=match):
        sparse_rda.RDA(seeded_params(), lr=lr)


def test_a_capturable_lr_on_another_device_is_refused_before_any_change():
    if "cpu" not in sparse_rda.backends():
        pytest.skip("needs the native CPU kernels (capturable groups need a kernel backend)")
    params = seeded_params()
    opt = sparse_rda.RDA(params, lr=torch.tensor(0.1), capturable=True, backend="cpu")
    run(opt, params, 1)
    opt.param_groups[0]["lr"] = torch.tensor(0.1, device="meta")
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"lr: a capturable group's lr tensor must be on the params' device cpu"):
        opt.step()
    assert_untouched(opt, params, snap)


@pytest.mark.parametrize("how", [copy.deepcopy, pickled], ids=["deepcopy", "torch.save"])
def test_a_copied_sparse_model_keeps_its_layers_tile_maps_linked_to_its_optimizer(how, backend):
    from sparse_rda import nn as snn

    torch.manual_seed(0)
    model = snn.sparsify(torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)),
                         block=(16, 16))
    opt = sparse_rda.RDA(sparse_rda.param_groups(model), lr=0.1, lam=5e-2, granularity=("block", 16, 16),
                         backend=backend)
    x = torch.randn(16, 48)

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()

    train(model, opt, 3)
    model_b, opt_b = how((model, opt))
    train(model, opt, 10)
    train(model_b, opt_b, 10)
    layers = [m for m in model_b.modules() if isinstance(m, snn.SparseLinear)]
    for layer in layers:
        assert snn.tile_map(layer.weight)[1] is layer.occupancy is opt_b.state[layer.weight]["occupancy"]
        assert torch.equal(layer.occupancy, snn.tile_occupancy(layer.weight, layer.block))
    for a, b in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    # a new optimizer on the copied model shares its maps too
    fresh = sparse_rda.RDA(sparse_rda.param_groups(model_b), granularity=("block", 16, 16), backend=backend)
    train(model_b, fresh, 1)
    assert all(fresh.state[layer.weight]["occupancy"] is layer.occupancy for layer in layers)
