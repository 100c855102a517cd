"""Smoke test of bench/sparse_training_cpu.py: --quick runs, checks SparseLinear's values against nn.Linear, and
writes a well-formed report."""

from __future__ import annotations

import json

import sparse_training_cpu


def test_quick_run(tmp_path):
    assert sparse_training_cpu.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("sparse_training_cpu-cpu-*-quick.json")
    report = json.loads(path.read_text())
    (row,) = report["rows"]
    assert row["rel_error"] < 1e-4 and row["live_tiles"] == [1] and row["tiles"] == [8]
    assert all(row["dense"][k] > 0 and row["sparse"][k] > 0 for k in ("fwd", "fwd_dx", "step"))
    assert "| small | 1 | 256 | 1/8 |" in path.with_suffix(".md").read_text()
