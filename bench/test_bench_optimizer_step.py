"""pytest-benchmark: the RDA and gRDA step of every available backend vs torch SGD-momentum and a copy of the same
bytes, on a small ResNet-18-like parameter set on CPU. Run on demand (not part of the test suite in tests/):

    python -m pytest bench/ -q                          # timings table at the end
    python -m pytest bench/ -q --benchmark-disable      # each step once, as a smoke test
    python -m pytest bench/ --benchmark-group-by=group --benchmark-columns=min,median,max,rounds

Timings use BENCH_THREADS torch threads (default 1): single-core numbers stay stable on a small shared box,
where a multi-threaded op stalls a scheduler tick whenever another process holds the other core. The standalone
runner (bench/optimizer_step.py) measures the full sets with torch's default threads and writes bench/results/.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import optimizer_step
import optimizer_step_methods
import param_sets
import sparse_rda

SET = "resnet18-subset"
SHAPES = param_sets.shapes(SET)
NUMEL = param_sets.total(SHAPES)
DEVICE = torch.device("cpu")
DTYPE = torch.float32
ITEMSIZE = 4
GROUP = f"optimizer step, {SET} ({NUMEL / 1e6:.2f}M params), cpu fp32, {os.environ.get('BENCH_THREADS', '1')} thread(s)"
ROUNDS = 5


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def params():
    return param_sets.make_params(SHAPES, DEVICE, DTYPE)


def _measure(benchmark, fn, *, method: str, backend: str) -> None:
    bpe = optimizer_step_methods.floor_bytes(method, ITEMSIZE) if method != "copy" else int(backend.split()[0])
    benchmark.group = GROUP
    benchmark.extra_info.update(method=method, backend=backend, numel=NUMEL, bytes_per_elem=bpe)
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s (median)"] = round(bpe * NUMEL / stats.stats.median / 1e9, 2)


def _check(params) -> None:
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("bytes_per_elem", [optimizer_step_methods.floor_bytes("RDA", ITEMSIZE)])
def test_copy(benchmark, bytes_per_elem):
    """Baseline: copy_ of a flat buffer moving the RDA step's minimum bytes."""
    n = bytes_per_elem * NUMEL // 8
    src, dst = torch.ones(n), torch.zeros(n)
    _measure(benchmark, lambda: dst.copy_(src), method="copy", backend=f"{bytes_per_elem} B/elem")
    assert torch.equal(dst, src)


def test_sgd_momentum(benchmark, params):
    opt, label = optimizer_step_methods.make_sgd(params, DEVICE)  # fused where torch has it on CPU, else foreach
    _measure(benchmark, opt.step, method="SGD", backend=label)
    _check(params)


@pytest.mark.parametrize("backend", sparse_rda.backends())
@pytest.mark.parametrize("method", ["RDA", "GRDA"])
def test_sparse_step(benchmark, params, method, backend):
    if backend == "triton":
        pytest.skip("Triton on CPU runs in the interpreter: far too slow to benchmark")
    try:
        opt = optimizer_step_methods.make_sparse(method, params, backend)
    except ValueError as e:  # the backend cannot run on this device
        pytest.skip(str(e))
    opt.step()  # first step allocates the state: keep it out of the timing
    _measure(benchmark, opt.step, method=method, backend=backend)
    _check(params)
    assert opt.state[params[0]]["step"] >= 2


def test_pat_lasso_step(benchmark, params):
    """torchao PAT's Lasso over fused SGD: the peer's step, beside ours (skipped without torchao)."""
    pytest.importorskip("torchao.prototype.pat", reason="torchao is not installed (pip install --no-deps torchao)")
    opt = optimizer_step_methods.make_pat(params)
    opt.step()  # the first step saves the latent copy
    _measure(benchmark, opt.step, method="PAT-Lasso", backend="torchao")
    _check(params)
    assert all("latent" in opt.state[p] for p in params if p.dim() >= 2)


def test_param_sets():
    assert param_sets.total(param_sets.shapes("resnet18")) == 11_689_512
    assert param_sets.total(param_sets.shapes("resnet50")) == 25_557_032
    assert 1.0e9 <= param_sets.total(param_sets.shapes("transformer-1b")) <= 1.2e9
    ps = param_sets.make_params([(3, 4), (5,)], DEVICE, torch.bfloat16)
    assert [p.shape for p in ps] == [(3, 4), (5,)] and all(p.grad.dtype == torch.bfloat16 for p in ps)


def test_runner_smoke(tmp_path):
    """The standalone runner end to end on the small set: one rep, results files written."""
    report = optimizer_step.main(
        ["--device", "cpu", "--sets", f"{SET},transformer-1b", "--warmup", "0", "--reps", "1", "--quick",
         "--out", str(tmp_path)]
    )
    (s,) = report["sets"]
    assert [k["name"] for k in report["skipped_sets"]] == ["transformer-1b"]  # never allocated on CPU
    methods = {(r["method"], r["backend"]) for r in s["results"]}
    assert ("RDA", "torch") in methods and ("GRDA", "torch") in methods
    assert any(m == "SGD" for m, _ in methods) and any(m == "copy" for m, _ in methods)
    pat_skipped = [k for k in s["skipped"] if k["method"] == "PAT-Lasso"]
    assert any(m == "PAT-Lasso" for m, _ in methods) != bool(pat_skipped)  # a row, or skipped saying why
    assert all("torchao" in k["reason"] for k in pat_skipped)
    assert all(r["ms"] > 0 and r["gbps"] > 0 for r in s["results"])
    (js,) = tmp_path.glob("optimizer_step-cpu-*-quick.json")
    assert json.loads(js.read_text())["sets"][0]["name"] == SET
    assert js.with_suffix(".md").exists()
