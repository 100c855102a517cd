"""The target_sparsity benchmark end to end on a tiny fake Fashion-MNIST (bench/conftest.py): both rules on RDA
and gRDA write a well-formed JSON and markdown table, the controller's runs end on the target, a rerun resumes
(trains nothing) and ``--report-only`` rebuilds the table from the JSON. About 5 s on one thread:

    python -m pytest bench/test_bench_target_sparsity.py -q
"""

from __future__ import annotations

import json

import target_sparsity


def test_both_rules_write_json_and_markdown_and_resume(fake_data_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--models", "lenet", "--runs", "rda:constant,grda:constant", "--targets", "90", "--epochs", "2",
            "--data", str(fake_data_dir), "--out", str(out), "--threads", "1"]
    assert target_sparsity.main(argv) == 0
    json_path, md_path = out / "target_sparsity-cpu.json", out / "target_sparsity-cpu.md"
    results = json.loads(json_path.read_text())
    runs = {(r["method"], r["rule"]): r for r in results["runs"]}
    assert sorted(runs) == [("grda", "before"), ("grda", "now"), ("rda", "before"), ("rda", "now")]
    for (method, rule), run in runs.items():
        assert run["steps"] == 32 and run["epochs"] == 2  # 2000 examples, batch 128
        assert 0.0 <= run["accuracy"] <= 1.0 and run["control_steps_after_ramp"] > 0
        if rule == "now":  # the controller snaps the last step onto the target
            assert abs(run["final_sparsity"] - 0.9) <= 0.005 and run["control_max_dev"] <= 0.005, run
    markdown = md_path.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| lenet |")]
    assert len(rows) == 4 and all(row.count("|") == 16 for row in rows)
    assert target_sparsity.main(argv) == 0  # resumes: every run is already there
    assert len(json.loads(json_path.read_text())["runs"]) == 4
    md_path.unlink()
    assert target_sparsity.main(["--report-only", "--out", str(out)]) == 0
    assert md_path.read_text() == markdown
