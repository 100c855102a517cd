"""Smoke test of bench/sparse_inference.py: --quick runs every format on small shapes, checks each against dense,
and reports speedups, to_inference's pick and the crossovers."""

from __future__ import annotations

import json

import torch

import sparse_inference


def test_quick_run_reports_every_format(tmp_path):
    assert sparse_inference.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("sparse_inference-cpu-*-quick.json")
    report = json.loads(path.read_text())
    rows = report["rows"]
    element = {r["format"] for r in rows if r["kind"] == "element"}
    assert element == {"dense", "torch CSR", "torch BSR", "ours CSR", "to_inference"}
    assert {r["format"] for r in rows if r["kind"] == "tile"} == element | {"ours tiles"}
    for r in rows:
        assert r["ms"] > 0 and r["rel_error"] <= sparse_inference.TOLERANCE[getattr(torch, r["dtype"])]
        assert abs(r["real_zeros"] - r["zeros"]) < 0.02 or r["kind"] == "tile"
    # ours CSR stores 6 B per fp32 nonzero, 4 B per bf16 one (plus 8 B per row)
    for r in rows:
        if r["format"] == "ours CSR":
            n_in, n_out = map(int, r["shape"].split("->"))
            nnz = round((1 - r["real_zeros"]) * n_in * n_out)
            per = 6 if r["dtype"] == "float32" else 4
            assert abs(r["bytes"] - (nnz * per + 8 * (n_out + 1))) <= per, r
    # the pick follows the crossover table in use
    for r in rows:
        if r["format"] == "to_inference":
            assert r["picked"] == r["auto"] and r["ms"] == next(
                q["ms"] for q in rows if q["format"] == sparse_inference.AUTO_FORMAT[r["auto"]] and
                all(q[k] == r[k] for k in ("shape", "dtype", "kind", "zeros", "batch")))
    assert set(report["crossovers"]) == {"float32", "bfloat16"}
    assert "## float32, batch 1" in path.with_suffix(".md").read_text()
