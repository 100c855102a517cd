"""The native extension's ops: schema and fake implementations (torch.library.opcheck), tracing by
torch.compile, non-contiguous and mixed-dtype inputs against the reference, and the max ops / a given max_A."""

import pytest
import torch

import sparse_rda
from sparse_rda import native
from helpers import (MAX_A_HYPER, assert_state_close, assert_weights_match, call_max_A,
                     check_capturable_grda_against_host, check_device_form_matches_host,
                     check_device_form_skip_writes_nothing, check_given_max_A_is_the_steps_own,
                     check_given_max_A_sets_om, check_max_A_op_matches_torch, max_A_inputs, native_devices,
                     rda_contract_call, rda_error_scales, same_bits, state_copy, step_both)

pytestmark = [pytest.mark.skipif(not native.has_kernels("cpu"), reason="native extension not built"),
              pytest.mark.triton_free]  # native CPU ops only


def rda_args(shapes, dtype=torch.float32):
    params = [torch.randn(s).to(dtype) for s in shapes]
    grads = [torch.randn(s).to(dtype) for s in shapes]
    T = [p.float().clone() for p in params]
    B, A, v = ([torch.rand(s) for s in shapes] for _ in range(3))
    factors = [1.0 if len(s) >= 2 else 0.0 for s in shapes]
    means = [None] * len(shapes)
    hyper = [0.5, 1e-3, 0.9, 0.8, 0.3, 1e-4, 500.0]  # lr, lam, beta, beta_b, averaging, weight_decay, max_factor
    return (params, grads, T, B, A, v, means, factors, hyper, True, False, None, None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_rda_step(dtype):
    torch.library.opcheck(torch.ops.sparse_rda.rda_step_.default, rda_args([(5, 7), (3,), (2, 3, 3, 3)], dtype))


def test_opcheck_grda_step():
    shapes = [(5, 7), (3,)]
    args = ([torch.randn(s) for s in shapes], [torch.randn(s) for s in shapes], [torch.randn(s) for s in shapes],
            torch.tensor([0.1, 0.0]), 0.05, None, torch.tensor(0.25), None)
    torch.library.opcheck(torch.ops.sparse_rda.grda_step_.default, args)


# gRDA's step counts and thresholds are float64 tensors, not Python numbers, so dynamo traces their updates
# instead of specializing on values that change every step: one graph, no recompiles.
@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3, weight_decay=1e-4)), (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_torch_compile_traces_the_step_without_graph_breaks(opt_cls, options):
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    compiled_opt = opt_cls(params, backend="cpu", **options)
    eager_opt = opt_cls(copies, backend="cpu", **options)
    for p, q in zip(params, copies):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    compiled_opt.step()  # state exists before tracing
    eager_opt.step()
    step = torch.compile(compiled_opt.step, backend="aot_eager", fullgraph=True)
    step()
    eager_opt.step()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            step()
            eager_opt.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_non_contiguous_params_match_the_reference():
    p = torch.nn.Parameter(torch.randn(7, 9).t())  # a transposed layout
    assert not p.is_contiguous()
    ref_p = torch.nn.Parameter(p.detach().clone())
    fused = sparse_rda.RDA([p], backend="cpu", lam=1e-3)
    ref = sparse_rda.RDA([ref_p], backend="torch", lam=1e-3)
    for _ in range(4):
        p.grad = torch.randn(9, 7)
        ref_p.grad = p.grad.clone()
        fused.step()
        ref.step()
    assert not p.is_contiguous()
    for key in ("T", "B", "A", "v"):
        assert_state_close(fused.state[p][key], ref.state[ref_p][key], 1e-5, key)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-6)


def test_float32_grads_on_bf16_params_match_the_reference():
    # (optimizers never see this pair, torch keeps grads in the param dtype; the ops accept it)
    shapes = [(4, 6), (5,)]
    w = [torch.randn(s).to(torch.bfloat16) for s in shapes]
    g = [torch.randn(s) for s in shapes]
    state = [[p.float().clone() for p in w]] + [[torch.zeros(s) for s in shapes] for _ in range(3)]
    w_ref, state_ref = [p.clone() for p in w], [[t.clone() for t in ts] for ts in state]
    options = dict(penalized=[True, False], lr=0.5, lam=1e-2, beta=0.9, beta_b=0.9, averaging=0.2, weight_decay=0.0,
                   max_factor=500.0, reweight=True, granularity="element", maximize=False)
    rda_contract_call("cpu", w, g, *state, **options)
    rda_contract_call("torch", w_ref, g, *state_ref, **options)
    for ts, ts_ref in zip(state, state_ref):
        for t, t_ref in zip(ts, ts_ref):
            torch.testing.assert_close(t, t_ref, rtol=1e-5, atol=1e-6)
    for p, p_ref in zip(w, w_ref):
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(p, p_ref, rtol=0, atol=0)


def test_nnz_comes_from_the_step():
    params = [torch.nn.Parameter(torch.randn(50, 40))]
    opt = sparse_rda.RDA(params, backend="cpu", lam=0.05)
    params[0].grad = torch.randn(50, 40)
    opt.step()
    assert opt._nnz, "the native step returns its counts"
    assert opt.nnz()[params[0]] == int(torch.count_nonzero(params[0])) < 2000


# ----------------------------------------------------------------------------------------------------------
# Capturable mode through the ops: lr / averaging / found_inf / gRDA thresholds as tensors, read by the CPU op
# or by the CUDA kernels (on a GPU)


def test_opcheck_capturable_arguments():
    args = rda_args([(5, 7), (3,)])
    torch.library.opcheck(torch.ops.sparse_rda.rda_step_.default,
                          args[:-2] + (torch.tensor([0.5, 0.3, 0.9, 0.9, 1e-3, 0.7, 0.1, 0.1]), torch.zeros(())))
    shapes = [(5, 7), (3,)]
    torch.library.opcheck(torch.ops.sparse_rda.grda_step_.default,
                          ([torch.randn(s) for s in shapes], [torch.randn(s) for s in shapes],
                           [torch.randn(s) for s in shapes], torch.tensor([0.1, 0.0]), 0.0, torch.tensor(0.05), None,
                           torch.zeros(())))


@pytest.mark.parametrize("device", native_devices())
def test_capturable_rda_matches_the_host_path_under_a_schedule(device):
    shapes = [(7, 5), (13,), (4, 3, 3, 3), (33, 17)]
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.5) for s in shapes]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    options = dict(lam=5e-4, weight_decay=1e-3, granularity="kernel")
    fused = sparse_rda.RDA(params, backend=device, capturable=True, lr=torch.tensor(0.8, device=device),
                           averaging=torch.tensor(0.0, device=device), **options)
    ref = sparse_rda.RDA(copies, backend=device, lr=0.8, **options)
    schedules = [sparse_rda.schedules.CosineRDA(opt, total_steps=30) for opt in (fused, ref)]
    for _ in range(12):
        inputs = step_both(fused, ref, [torch.randn_like(p) for p in params])
        group = ref.param_groups[0]
        for i, (p, q, before) in enumerate(zip(params, copies, inputs)):
            T_scale, v_scale = rda_error_scales(group, before, q.grad)
            # the decays come from float math on the op's side, from double on the host's: 1e-7 apart
            for key, scale in (("T", T_scale), ("B", None), ("A", None), ("v", v_scale)):
                assert_state_close(fused.state[p][key], ref.state[q][key], 1e-5, f"tensor {i} {key}", scale)
            assert_weights_match(p.data, q.data, ref.state[q]["T"], group["lam"] * ref.state[q]["B"], 1e-5,
                                 f"tensor {i} w", T_scale)
        for sched in schedules:
            sched.step()
    assert fused.state[params[0]]["step"].dtype == torch.float64
    assert float(fused.state[params[0]]["step"]) == 12


@pytest.mark.parametrize("device", native_devices())
@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lam=1e-3)), (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_capturable_skip_on_found_inf_writes_nothing(opt_cls, options, device):
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in [(6, 5), (4,)]]
    opt = opt_cls(params, backend=device, capturable=True, **options)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [state_copy(opt.state[p]) for p in params], [p.detach().clone() for p in params]
    opt.found_inf, opt.grad_scale = torch.ones((), device=device), torch.full((), 8.0, device=device)
    opt.step()
    for p, state, w in zip(params, *before):
        assert torch.equal(p.data, w)
        for key, value in state.items():
            assert torch.equal(opt.state[p][key], value), f"state {key} changed on a skipped step"
    nnz = opt.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)


@pytest.mark.parametrize("device", native_devices())
def test_capturable_grda_matches_the_host_path(device):
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in [(7, 5), (13,), (33, 17)]]
    check_capturable_grda_against_host(params, device)
    assert any(int((p == 0).sum()) for p in params), "the thresholds prune something"


# The device form through the element op (the block op's: test_block_rda.py): lam, lr, averaging and the decays
# read from the five-value tensor, the host values 0
ELEMENT_SHAPES = [(7, 5), (13,), (4, 3, 3, 3), (33, 17), (1,)]
ELEMENT_PENALIZED = [True, False, True, True, False]


@pytest.mark.parametrize("device", native_devices())
@pytest.mark.parametrize("granularity, dtype", [("element", torch.float32), ("kernel", torch.float32),
                                                ("element", torch.bfloat16)])
def test_device_form_matches_the_host_form(granularity, dtype, device):
    check_device_form_matches_host(device, device, ELEMENT_SHAPES, granularity, ELEMENT_PENALIZED, dtype=dtype)


@pytest.mark.parametrize("device", native_devices())
def test_device_form_skip_on_found_inf_writes_nothing(device):
    check_device_form_skip_writes_nothing(device, device, ELEMENT_SHAPES, "element", ELEMENT_PENALIZED)


# ----------------------------------------------------------------------------------------------------------
# The steps' max pass as its own op, and steps given max_A (a sharded tensor's max over every rank)


def block_op_args(dtype=torch.float32):
    shapes = [(5, 7), (9, 4)]
    params = [torch.randn(s).to(dtype) for s in shapes]
    return (params, [torch.randn(s).to(dtype) for s in shapes], [p.float().clone() for p in params],
            *([torch.rand(s) for s in shapes] for _ in range(3)),
            [torch.zeros(2, 4, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool)], [3, 2],
            [0.5, 1e-2, 0.9, 0.8, 0.3, 1e-4, 500.0], True, False, torch.tensor(0.5), None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_max_A_ops_and_steps_given_max_A(dtype):
    for max_op, step_op, args in [
        (torch.ops.sparse_rda.rda_max_A, torch.ops.sparse_rda.rda_step_, rda_args([(5, 7), (3,), (2, 3, 3, 3)], dtype)),
        (torch.ops.sparse_rda.rda_block_max_A, torch.ops.sparse_rda.rda_block_step_, block_op_args(dtype)),
    ]:
        torch.library.opcheck(max_op.default, args)
        torch.library.opcheck(step_op.default, args + (max_op(*args),))


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
@pytest.mark.parametrize("dtype, device_form", [(torch.float32, False), (torch.float32, True),
                                                (torch.bfloat16, False)], ids=["fp32", "device-form", "bf16"])
def test_max_A_op_matches_torch(block, dtype, device_form):
    check_max_A_op_matches_torch("cpu", block=block, dtype=dtype, device_form=device_form)


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
@pytest.mark.parametrize("dtype, device_form, max_dtype", [
    (torch.float32, False, torch.float32), (torch.bfloat16, False, torch.float32),
    (torch.float32, True, torch.float32), (torch.float32, False, torch.float64)],
    ids=["fp32", "bf16", "device-form", "fp64-max"])
def test_a_step_given_the_max_ops_output_is_its_own_step(block, dtype, device_form, max_dtype):
    check_given_max_A_is_the_steps_own("cpu", block=block, dtype=dtype, device_form=device_form, max_dtype=max_dtype)


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
def test_a_given_max_A_sets_om(block):
    check_given_max_A_sets_om("cpu", block=block)


def test_native_rda_max_A_through_the_contract():
    """native.rda_max_A in the contract's shape: the element op for an element bucket, the block op for a tiled
    one; native.rda_step hands tensors.max_A to the op."""
    from sparse_rda import plan, scalars, step

    s = scalars.RdaScalars(**MAX_A_HYPER, reweight=True, maximize=False)
    for granularity in ["element", ("block", 4, 8)]:
        a = max_A_inputs("cpu", block=granularity != "element")
        a = {k: v[:2] if k in ("params", "grads", "T", "B", "A", "v", "occupancy") else v for k, v in a.items()}
        if "block" not in a:  # both penalized, element mode (the plans' factors)
            a.update(group_means=[None, None], factors=[1.0, 1.0])
        plans = tuple(plan.tensor_plan(p.shape, granularity, True) for p in a["params"])
        bucket, = plan.buckets(plans, tuple((p.dtype, p.dtype) for p in a["params"]))
        tensors = step.RdaTensors(*(a[k] for k in ("params", "grads", "T", "B", "A", "v")),
                                  a.get("occupancy", [None, None]), [None, None])
        got = native.rda_max_A(tensors, bucket, s)
        assert same_bits(got, call_max_A(a))
        theirs = tensors._replace(**{k: [t.clone() for t in getattr(tensors, k)] for k in ("params", "T", "B", "A",
                                                                                         "v")})
        native.rda_step(tensors._replace(max_A=2 * got), bucket, s)
        native.rda_step(theirs, bucket, s)
        assert not torch.equal(tensors.B[0], theirs.B[0]), "the given max reaches the op"
