"""The native CUDA kernels (backend "cuda") against the reference on the GPU; skipped without one."""

import pytest
import torch

import sparse_rda
from sparse_rda import native
from helpers import (assert_state_close, assert_unchanged, assert_within_rounding_step, call_step,
                     check_given_max_A_is_the_steps_own, check_given_max_A_sets_om, check_max_A_op_matches_torch,
                     max_A_inputs, rda_contract_call, snapshot)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not native.has_kernels("cuda"), reason="extension built without CUDA kernels")]

SHAPES = [(7, 5), (13,), (4, 3, 3, 3), (1,), (300, 251), (64, 32, 3, 3)]


def make(shapes, dtype):
    return [torch.nn.Parameter((torch.randn(s) * 0.5).to(device="cuda", dtype=dtype)) for s in shapes]


@pytest.mark.parametrize("granularity", ["element", "kernel", "channel"])
@pytest.mark.parametrize("opt_cls, options", [
    (sparse_rda.RDA, dict(lr=0.8, lam=5e-4, averaging=0.4, weight_decay=1e-3)),
    (sparse_rda.GRDA, dict(lr=0.1, c=0.05, mu=0.55)),
])
def test_cuda_matches_the_reference_step_by_step(opt_cls, options, granularity):
    if opt_cls is sparse_rda.GRDA and granularity != "element":
        pytest.skip("gRDA has no granularity")
    if opt_cls is sparse_rda.RDA:
        options = {**options, "granularity": granularity}
    params = make(SHAPES, torch.float32)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = opt_cls(params, backend="cuda", **options)
    ref = opt_cls(copies, backend="torch", **options)
    for _ in range(30):
        for p, q in zip(params, copies):  # same inputs each step: compare one step at a time
            q.data.copy_(p.data)
            ref.state[q] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in fused.state[p].items()}
            if not ref.state[q]:
                del ref.state[q]
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        ref.step()
        for p, q in zip(params, copies):
            for key, value in fused.state[p].items():
                if isinstance(value, torch.Tensor):
                    assert_state_close(value, ref.state[q][key], 1e-5, key)
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5 * float(p.abs().max()))
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision_params(dtype):
    params = make(SHAPES, dtype)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = sparse_rda.RDA(params, backend="cuda", lam=1e-3)
    ref = sparse_rda.RDA(copies, backend="torch", lam=1e-3)
    grads = [torch.randn_like(p) for p in params]
    for p, q, g in zip(params, copies, grads):
        p.grad, q.grad = g, g.clone()
    fused.step()
    ref.step()
    for p, q in zip(params, copies):
        assert p.dtype == dtype and fused.state[p]["T"].dtype == torch.float32
        assert_state_close(fused.state[p]["T"], ref.state[q]["T"], 1e-5, "T")
        assert_within_rounding_step(p.detach(), q.detach())


def test_cuda_op_reads_device_scalars_and_skips_on_found_inf():
    """The op's capturable arguments: lr and averaging from a device tensor give the host path's step;
    found_inf set writes nothing."""
    shapes = [(300, 251), (13,)]
    params = make(shapes, torch.float32)
    grads = [torch.randn_like(p) for p in params]
    state = [[p.detach().float().clone() for p in params]] + [[torch.rand_like(p) for p in params] for _ in range(3)]
    copies = [p.detach().clone() for p in params]
    state_copies = [[t.clone() for t in ts] for ts in state]
    common = dict(penalized=[True, False], lam=1e-3, weight_decay=1e-4, max_factor=500.0, reweight=True,
                  granularity="element", maximize=False)
    lr, alpha, tau = 0.5, 0.3, 9.5
    beta = sparse_rda.scalars.decay(lr, tau)
    rda_contract_call("cuda", copies, grads, *state_copies, lr=lr, beta=beta, beta_b=beta, averaging=alpha, **common)
    lr_t = torch.tensor(lr, device="cuda")
    on_device = torch.stack([lr_t, torch.tensor(alpha, device="cuda"), *(sparse_rda.scalars.decay(lr_t, tau),) * 2])
    device_call = dict(lr=0.0, beta=0.0, beta_b=0.0, averaging=0.0, device=on_device, **common)
    rda_contract_call("cuda", params, grads, *state, found_inf=torch.zeros((), device="cuda"), **device_call)
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    before = [p.clone() for p in params]
    rda_contract_call("cuda", params, grads, *state, found_inf=torch.ones((), device="cuda"), **device_call)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_cuda_grda_op_takes_host_and_device_scalars():
    """gRDA's thresholds and GradScaler scalars either by value from the host or read on the device (capturable)
    give the CPU op's step, over 40 tensors: two launches, each reading its own slice of device thresholds; a
    set found_inf on either side writes nothing."""
    shapes = [(300, 251), (13,), (7, 5), (2, 2050)] * 10
    params = [torch.randn(s) * 0.5 for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    thresholds = torch.rand(len(shapes)) * 0.5

    def offset(t):  # a view one element into its storage: not aligned for packs, the kernels' scalar path
        view = torch.empty(t.numel() + 1, device=t.device)[1:].view(t.shape)
        return view.copy_(t)

    def step(device, l1, inv_scale, found_inf=None):
        ps, accs = [p.to(device) for p in params], [p.to(device) for p in params]
        ps[-1], accs[-1] = offset(ps[-1]), offset(accs[-1])
        counts = torch.ops.sparse_rda.grda_step_(ps, [g.to(device) for g in grads], accs, l1, 0.1, None, inv_scale,
                                                 found_inf)
        return ps, accs, counts

    ps_cpu, accs_cpu, _ = step("cpu", thresholds, torch.tensor(0.5))
    for l1, inv_scale in [(thresholds, torch.tensor(0.5)), (thresholds.cuda(), torch.tensor(0.5, device="cuda")),
                          (thresholds.double(), torch.tensor(0.5, device="cuda")),
                          (thresholds.double().cuda(), torch.tensor(0.5, dtype=torch.float64))]:
        ps, accs, counts = step("cuda", l1, inv_scale)
        for got, want in zip(ps + accs, ps_cpu + accs_cpu):
            torch.testing.assert_close(got.cpu(), want)
        assert counts.tolist() == [int(torch.count_nonzero(p)) for p in ps]
    for found_inf in (torch.ones(()), torch.ones((), device="cuda")):
        ps, accs, counts = step("cuda", thresholds, None, found_inf)
        assert all(torch.equal(p.cpu(), q) for p, q in zip(ps + accs, params + params))
        assert counts.tolist() == [int(torch.count_nonzero(p)) for p in params]


# The steps' max pass as its own op, and steps given max_A (test_native_ops.py has the same checks on CPU). 13
# copies of the shapes: more tensors than one launch takes (36), so each launch reads and writes its own slice.
MAX_A_CASES = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]
MAX_A_IDS = ["fp32", "device-form", "bf16"]


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
@pytest.mark.parametrize("dtype, device_form", MAX_A_CASES, ids=MAX_A_IDS)
def test_cuda_max_A_op_matches_torch(block, dtype, device_form):
    check_max_A_op_matches_torch("cuda", block=block, dtype=dtype, device_form=device_form, copies=13)


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
@pytest.mark.parametrize("dtype, device_form", MAX_A_CASES, ids=MAX_A_IDS)
def test_cuda_step_given_the_max_ops_output_is_its_own_step(block, dtype, device_form):
    check_given_max_A_is_the_steps_own("cuda", block=block, dtype=dtype, device_form=device_form, copies=13)


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
def test_cuda_given_max_A_sets_om(block):
    check_given_max_A_sets_om("cuda", block=block)


@pytest.mark.parametrize("block", [False, True], ids=["element", "block"])
def test_cuda_step_refuses_a_host_max_A_or_a_wrong_count(block):
    """The kernels read a given max_A on the device: a host one is refused (no copy), as one of the wrong count."""
    a = max_A_inputs("cuda", block=block)
    op = "rda_block_step_" if block else "rda_step_"
    n = len(a["params"])
    before = snapshot(a)
    for max_A, match in [(torch.ones(n), "max_A is on cpu, params on cuda:0"),
                         (torch.ones(n - 1, device="cuda"), f"max_A has {n - 1} values for {n} params")]:
        with pytest.raises(RuntimeError, match=f"{op}: {match}"):
            call_step(a, max_A)
        assert_unchanged(a, before, "a refused step")
