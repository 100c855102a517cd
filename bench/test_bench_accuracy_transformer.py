"""Smoke test of the transformer accuracy runner (bench/accuracy_transformer.py): every run in --quick on the
example's small text (the KJV corpus needs Debian's bible-kjv, which CI does not install), the JSON and markdown
written, a rerun training nothing, and each run at the sparsity it asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import accuracy_transformer

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_text.txt"


def test_quick_run_of_every_run(tmp_path):
    argv = ["--quick", "--text", str(TEXT), "--out", str(tmp_path)]
    assert accuracy_transformer.main(argv) == 0
    path = tmp_path / "accuracy-transformer-quick.json"
    results = json.loads(path.read_text())
    runs = {r["method"]: r for r in results["runs"]}
    assert list(runs) == accuracy_transformer.available_methods(list(accuracy_transformer.RUNS))
    assert len(runs) >= 13  # every run but PAT's (torchao is optional)
    for name, run in runs.items():
        target = accuracy_transformer.RUNS[name][1]
        slack = 0.13 if "block" in name else 0.02  # (1-layer quick model: 16 tiles, the controller's nearest tile)
        assert run["mlp_sparsity"] == pytest.approx(target, abs=slack), (name, run["mlp_sparsity"])
        assert 0 < run["val_loss"] < 10
    table = [line for line in path.with_suffix(".md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in table[1:]] == list(runs)
    assert accuracy_transformer.main(argv) == 0  # resumes: nothing left to train
    assert json.loads(path.read_text())["runs"] == results["runs"]
