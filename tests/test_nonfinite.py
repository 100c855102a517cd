"""One NaN/inf policy on every backend (docs/ALGORITHMS.md, "Non-finite values"): a non-finite gradient, weight or
state value stays in the weights it touches, as with SGD, and nowhere else. The reweighting's max A is over finite
values, an element (kernel, filter, tile) whose A is not finite goes unpenalized, a tile whose norm is not finite
is not shrunk, and the sparsity controller counts non-finite weights as nonzero.

Each case runs every CPU backend from the same start and compares: identical NaN / inf positions, finite values
within float tolerance of the reference, and, away from the poisoned unit, the values of a run without poison."""

import copy
import math

import pytest
import torch

import sparse_rda

BACKENDS = [b for b in ("torch", "cpu", "triton") if b in sparse_rda.backends()]
POISONS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
SHAPES = {"element": (20, 12), "kernel": (4, 3, 3, 3), "channel": (4, 3, 3, 3), ("block", 4, 4): (20, 12)}
# where the poison goes, and which: -inf behaves as inf except through a gradient's sign
CASES = [(where, poison) for where in ("grad", "w", "T", "v", "A", "B") for poison in ("nan", "inf")]
CASES.append(("grad", "-inf"))
# Triton's block step runs a program per tile, seconds per case in the interpreter: these cover its paths (a non-finite
# tile norm, tile A and tile threshold); the rest run on the other backends
TRITON_BLOCK_CASES = {("grad", "nan"), ("w", "inf"), ("A", "nan"), ("B", "nan")}


def poisoned_unit(shape, granularity, index) -> torch.Tensor:
    """The elements that share the poisoned element's magnitude (its kernel, filter or tile): bool mask."""
    unit = torch.zeros(shape, dtype=torch.bool)
    if granularity == "kernel":
        unit[index[0], index[1]] = True
    elif granularity == "channel":
        unit[index[0]] = True
    elif isinstance(granularity, tuple):
        r, c = index[0] // granularity[1] * granularity[1], index[1] // granularity[2] * granularity[2]
        unit[r:r + granularity[1], c:c + granularity[2]] = True
    else:
        unit[index] = True
    return unit


def run_rda(backend, granularity, where=None, poison=0.0, steps=2):
    """Two tensors in one group, two steps, then ``poison`` put into ``where`` (the grad, the weight, or a state
    entry through a checkpoint), then ``steps`` more. Returns the poisoned tensor, its state, the clean tensor and
    the poisoned index."""
    gen = torch.Generator().manual_seed(0)
    shape = SHAPES[granularity]
    w = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.05)
    other = torch.nn.Parameter(torch.randn(6, 5, generator=gen) * 0.05)
    opt = sparse_rda.RDA([w, other], lr=0.1, lam=2e-2, backend=backend, granularity=granularity)
    grads = [(torch.randn(shape, generator=gen), torch.randn(6, 5, generator=gen)) for _ in range(steps + 2)]
    # the element (tile) of least magnitude, so that the clean run's max A is not at the poison
    if isinstance(granularity, tuple):  # a tile's A and B are its first element's: poison that one
        block = granularity[1:]
        sums = sparse_rda.reference.tile_sums(w.detach() ** 2, block)
        tile = [int(i) for i in torch.nonzero(sums == sums.min())[0]]
        index = (tile[0] * block[0], tile[1] * block[1])
    else:
        index = tuple(int(i) for i in torch.nonzero(w.detach().abs() == w.detach().abs().min())[0])
    for k, (g_w, g_other) in enumerate(grads):
        w.grad, other.grad = g_w.clone(), g_other.clone()
        if k == 2 and where == "grad":
            w.grad[index] = poison
        elif k == 2 and where == "w":
            with torch.no_grad():
                w[index] = poison
        elif k == 2 and where is not None:  # a checkpoint carrying the poison
            saved = copy.deepcopy(opt.state_dict())
            saved["state"][0][where][index] = poison
            opt.load_state_dict(saved)
        opt.step()
    return w.detach(), opt.state[w], other.detach(), index


def assert_same_nonfinite_and_close(actual, expected, what):
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), f"{what}: NaN positions differ"
    assert torch.equal(torch.isinf(actual), torch.isinf(expected)), f"{what}: inf positions differ"
    assert torch.equal(actual[torch.isinf(actual)], expected[torch.isinf(expected)]), f"{what}: inf signs differ"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("granularity", list(SHAPES), ids=str)
@pytest.mark.parametrize("where, poison", CASES)
def test_rda_backends_agree_and_the_poison_stays_in_its_unit(granularity, poison, where):
    clean, _, clean_other, index = run_rda("torch", granularity)
    backends = [b for b in BACKENDS if b != "triton" or not isinstance(granularity, tuple)
                or (where, poison) in TRITON_BLOCK_CASES]
    results = {b: run_rda(b, granularity, where, POISONS[poison]) for b in backends}
    ref_w, ref_state, ref_other, ref_index = results["torch"]
    assert ref_index == index
    unit = poisoned_unit(ref_w.shape, granularity, index)
    for backend, (w, state, other, _) in results.items():
        assert_same_nonfinite_and_close(w, ref_w, f"{backend} weights")
        for key in ("T", "B", "A", "v"):
            assert_same_nonfinite_and_close(state[key], ref_state[key], f"{backend} {key}")
        # nothing outside the poisoned unit knows: the other tensor and the rest of this one are as without poison
        torch.testing.assert_close(other, clean_other, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w[~unit], clean[~unit], rtol=1e-5, atol=1e-6)
    if where == "A":  # an unknown magnitude: unpenalized (the element; in block mode its tile), w = T there
        spared = unit if isinstance(granularity, tuple) else poisoned_unit(ref_w.shape, "element", index)
        assert torch.isfinite(ref_w).all()
        assert torch.equal(ref_state["B"][spared], torch.zeros_like(ref_state["B"][spared]))
        assert torch.equal(ref_w[spared], ref_state["T"][spared])
    elif where != "B":  # like SGD: the poisoned weight is non-finite, its neighbours are not
        assert not torch.isfinite(ref_w[index])
        assert torch.isfinite(ref_w[~unit]).all()


def run_grda(backend, where=None, poison=0.0):
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(33, 17, generator=gen) * 0.05)
    opt = sparse_rda.GRDA([w], lr=0.1, c=0.02, mu=0.55, backend=backend)
    for k in range(5):
        w.grad = torch.randn(33, 17, generator=gen)
        if k == 2 and where == "grad":
            w.grad[3, 4] = poison
        elif k == 2 and where == "acc":
            saved = copy.deepcopy(opt.state_dict())
            saved["state"][0]["acc"][3, 4] = poison
            opt.load_state_dict(saved)
        opt.step()
    return w.detach(), opt.state[w]


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("where", ["grad", "acc"])
def test_grda_backends_agree_and_the_poison_stays_in_its_element(poison, where):
    clean, _ = run_grda("torch")
    ref_w, ref_state = run_grda("torch", where, POISONS[poison])
    for backend in BACKENDS:
        w, state = run_grda(backend, where, POISONS[poison])
        assert_same_nonfinite_and_close(w, ref_w, f"{backend} weights")
        assert_same_nonfinite_and_close(state["acc"], ref_state["acc"], f"{backend} acc")
        assert math.isfinite(float(state["l1"]))
    assert not math.isfinite(float(ref_w[3, 4]))
    rest = torch.ones_like(clean, dtype=torch.bool)
    rest[3, 4] = False
    assert torch.equal(ref_w[rest], clean[rest])


@pytest.mark.parametrize("opt_cls, options", [(sparse_rda.RDA, dict(lr=0.1, lam=1e-7)),
                                              (sparse_rda.GRDA, dict(lr=0.05, c=1e-4, mu=0.55))])
def test_the_sparsity_controller_counts_a_nan_weight_as_nonzero_and_steers_on(opt_cls, options, backend):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    side = torch.nn.Parameter(torch.randn(16, 16) * 0.1)  # outside the forward, so its NaN reaches no loss
    steps = 100
    opt = opt_cls([*model.parameters(), side], backend=backend, target_sparsity=0.9, total_steps=steps, **options)
    x = torch.randn(128, 32)
    y = x[:, :4].sum(1, keepdim=True)
    for k in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        side.grad = torch.randn(16, 16)
        if k == 20:
            side.grad[0, 0] = math.nan  # a NaN weight from here on
        opt.step()
    assert torch.isnan(side[0, 0]) and int(torch.isnan(side).sum()) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    scale = opt.param_groups[0]["lam" if opt_cls is sparse_rda.RDA else "c"]
    assert math.isfinite(scale) and scale > 0
    weights = [p.detach() for p in (*model.parameters(), side) if opt._is_penalized(opt.param_groups[0], p)]
    zeros = sum(int((p == 0).sum()) for p in weights)
    assert zeros / sum(p.numel() for p in weights) == pytest.approx(0.9, abs=0.02)
