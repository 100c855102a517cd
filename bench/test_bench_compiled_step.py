"""The compiled-step runner's smoke run (bench/compiled_step.py --quick): every row measured, the report written,
and the compiled step's graphs bounded (two: the first step, which creates the state, and the steps after)."""

from __future__ import annotations

import json

import compiled_step


def test_quick_run_writes_the_report(tmp_path):
    report = compiled_step.main(["--quick", "--out", str(tmp_path)])
    rows = report["results"]
    assert {(r["method"], r["mode"].split()[0]) for r in rows} == {(m, k) for m in ("RDA", "GRDA")
                                                                   for k in ("eager", "compiled")}
    for r in rows:
        assert r["ms"] > 0 and r["reps"] == report["steps"] - compiled_step.WARM_UP
        if r["mode"] != "eager":
            assert r["graphs"] <= 2, r
    (js,) = tmp_path.glob("compiled_step-cpu-*-quick.json")
    assert json.loads(js.read_text())["set"] == "resnet18-subset"
    assert "| RDA |" in next(tmp_path.glob("*.md")).read_text()
