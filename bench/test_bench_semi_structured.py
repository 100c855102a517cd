"""Smoke test of the 2:4 runner (bench/semi_structured.py) on CPU: NMLinear is dense math there, so the run only
shows the runner works end to end and writes its results; the benchmark itself needs a GPU with sm_80+."""

from __future__ import annotations

import json

import semi_structured


def test_cpu_quick_run_writes_the_report(tmp_path):
    report = semi_structured.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    (row,) = report["shapes"]
    assert row["shape"] == "cpu-512" and not row["semi_structured"] and "CUDA" in row["reason"]
    assert row["fwd_dense_ms"] > 0 and row["step_dense_ms"] > 0 and row["step_2_4_ms"] > 0
    (json_path,) = tmp_path.glob("semi_structured-cpu-*-quick.json")
    assert json.loads(json_path.read_text())["shapes"] == report["shapes"]
    table = [line for line in json_path.with_suffix(".md").read_text().splitlines() if line.startswith("| cpu-512")]
    assert len(table) == 1 and "dense path" in table[0]
