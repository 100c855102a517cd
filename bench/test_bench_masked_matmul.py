"""Smoke tests of the masked-matmul, launch-parameter sweep and train-step runners (bench/masked_matmul.py,
bench/tune_masked_matmul.py, bench/train_step.py) on CPU: tiny shapes, one or two reps, results files written.
`make test` runs them with the suite:

    python -m pytest bench/test_bench_masked_matmul.py -q

They check that the runners work end to end and that their bookkeeping (tile masks, correctness checks, target
marks, speed-up summary) is right; CPU timings mean nothing here (no GPU: masked_linear is the dense fallback,
or the Triton interpreter in the subprocess test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import masked_matmul
import masked_matmul_shape
import masked_operands
import train_step

HERE = Path(__file__).resolve().parent
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_random_occupancy_has_exactly_the_dead_fraction():
    gen = torch.Generator().manual_seed(0)
    for s in (0.0, 0.5, 0.9, 0.99, 1.0):
        occ = masked_operands.random_occupancy(300, 200, (64, 64), s, gen)  # ragged: 5 x 4 tiles
        assert occ.shape == (5, 4) and occ.dtype == torch.bool
        assert int((~occ).sum()) == round(s * 20)


def test_target_marks():
    dense = {"fwd": {"ms": 10.0}, "dx": {"ms": 10.0}, "dw": {"ms": 10.0}}

    def row(s, masked, bsr=None):
        res = {"masked.fwd": {"ms": masked}}
        if bsr is not None:
            res["bsr.fwd"] = {"ms": bsr}
        return {"sparsity": s, "results": res}

    t = masked_matmul_shape.targets(row(0.9, 1.2, bsr=2.0), dense)["fwd"]  # budget 1.25 x 0.1 x 10 = 1.25 ms
    assert t["status"] == "met" and t["budget_ms"] == pytest.approx(1.25) and t["vs_bsr"] == pytest.approx(2.0 / 1.2)
    assert masked_matmul_shape.targets(row(0.9, 1.3, bsr=2.0), dense)["fwd"]["status"] == "missed (time)"
    assert masked_matmul_shape.targets(row(0.5, 5.0, bsr=4.0), dense)["fwd"]["status"] == "missed (vs BSR)"
    t = masked_matmul_shape.targets(row(0.99, 5.0), dense)["fwd"]  # no time budget above 90%, no BSR row
    assert t["budget_ms"] is None and t["status"] == "—"


def test_masked_matmul_runner_smoke(tmp_path):
    report = masked_matmul.main(["--device", "cpu", "--shapes", "64x128x192", "--sparsities", "0,50,99",
                                 "--quick", "--out", str(tmp_path)])
    (shape,) = report["shapes"]
    assert (shape["m"], shape["k"], shape["n"]) == (64, 128, 192)
    assert [r["sparsity"] for r in shape["rows"]] == [0.0, 0.5, 0.99]
    assert [r["live_tiles"] for r in shape["rows"]] == [6, 3, 0]  # 3 x 2 tiles; round(.99 * 6) = 6 dead
    for op in ("fwd", "dx", "dw", "bwd"):
        assert shape["dense"][op]["ms"] > 0
    for row in shape["rows"]:
        for key in ("masked.fwd", "masked.dx", "masked.bwd", "masked.dw_live"):
            assert row["results"][key]["ms"] > 0, key
        for key in ("masked.fwd", "masked.dx", "masked.dw_live"):
            assert row["results"][key]["rel_err"] <= 1e-4, key  # checked against the dense product
        for layout in ("bsr", "csr"):  # torch.sparse runs fp32 on CPU; either way it is accounted for
            for op in ("fwd", "dx"):
                assert f"{layout}.{op}" in row["results"] or f"{layout}.{op}" in row["skipped"]
        assert set(row["targets"]) >= {"fwd", "dx", "dw_live"}
    (js,) = tmp_path.glob("masked_matmul-cpu-*-64x128x192*-quick.json")  # "-interp" under TRITON_INTERPRET=1
    saved = json.loads(js.read_text())
    assert saved["config"]["masked_impl"].startswith("dense F.linear fallback") or "interpreter" in saved["config"][
        "masked_impl"]
    md = js.with_suffix(".md").read_text()
    assert "NOT the benchmark" in md and "| 50% |" in md


@needs_triton
def test_masked_matmul_runner_in_the_interpreter(tmp_path):
    """The Triton kernels themselves (interpreter, fp32), checked against the dense products by the runner."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, str(HERE / "masked_matmul.py"), "--device", "cpu", "--shapes", "32x128x128",
           "--sparsities", "0,75", "--methods", "masked", "--quick", "--out", str(tmp_path)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=600)
    (js,) = tmp_path.glob("masked_matmul-cpu-*-interp-quick.json")
    report = json.loads(js.read_text())
    assert report["config"]["masked_impl"].startswith("triton interpreter")
    for row in report["shapes"][0]["rows"]:
        assert not row["skipped"], row["skipped"]
        for key in ("masked.fwd", "masked.dx", "masked.dw_live"):
            assert row["results"][key]["rel_err"] <= 1e-4


def test_train_step_runner_smoke(tmp_path):
    report = train_step.main(["--device", "cpu", "--d", "128", "--tokens", "64", "--quick", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in report["result"]["rows"]}
    assert set(rows) >= {train_step.DENSE_ELEMENT, train_step.DENSE_BLOCK, train_step.SPARSE_BLOCK,
                         train_step.LIVE_ONLY}
    sparse = rows[train_step.SPARSE_BLOCK]
    # d=128: fc1 [512, 128] and fc2 [128, 512], 16 tiles each; 90% dead -> round(14.4) = 14 dead per layer
    assert (sparse["live_tiles_start"], sparse["tiles"]) == (4, 32)
    assert sparse["live_tiles_end"] == sparse["live_tiles_start"], "dead tiles stay dead while timing"
    assert set(sparse["parts"]) == {"fwd_bwd", "opt_step", "refresh", "full_step"}
    assert rows[train_step.DENSE_ELEMENT]["optimizer"] == "RDA element"
    s = report["result"]["summary"]
    assert s["full_step_speedup"] > 0 and s["matmul_speedup"] > 0
    assert s["matmul_speedup_bound_dense_dw"] == pytest.approx(2.5)
    (js,) = tmp_path.glob("train_step-cpu-*-d128-t64*-quick.json")  # "-interp" under TRITON_INTERPRET=1
    assert "NOT the benchmark" in js.with_suffix(".md").read_text()


@needs_triton
def test_tuning_sweep_in_the_interpreter(tmp_path):
    """bench/tune_masked_matmul.py: each candidate checked against the dense products, timed, the best reported
    as a HOPPER_CONFIGS entry (interpreter: the times mean nothing); --candidates picks the configs."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, str(HERE / "tune_masked_matmul.py"), "--device", "cpu", "--quick", "--out", str(tmp_path),
           "--candidates", "16,4,2", "32,2,3"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=600)
    (js,) = tmp_path.glob("tune_masked_matmul-cpu-*-quick.json")
    (sweep,) = json.loads(js.read_text())["sweeps"]
    assert (sweep["side"], sweep["dtype"], sweep["key"]) == (16, "float32", [16, 4])
    assert [r["config"] for r in sweep["rows"]] == [[16, 4, 2], [32, 2, 3]] and not sweep["skipped"]
    assert all(r["rel_err"] <= 1e-4 and r["fwd_ms"] > 0 and r["dx_ms"] > 0 for r in sweep["rows"])
    assert sweep["best"] in sweep["rows"]
    assert "(16, 4): (" in js.with_suffix(".md").read_text()
