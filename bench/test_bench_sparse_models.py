"""Smoke test of bench/sparse_models.py: --quick on the fake Fashion-MNIST and the example's small text, every
model trained, its checkpoints round-tripped, its latency before and after to_inference reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sparse_models

pytest.importorskip("safetensors")
TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_text.txt"


def test_quick_run_of_every_model(tmp_path, fake_data_dir):
    argv = ["--quick", "--data", str(fake_data_dir), "--text", str(TEXT), "--out", str(tmp_path)]
    assert sparse_models.main(argv) == 0
    (path,) = tmp_path.glob("sparse_models-cpu-*-quick.json")
    results = json.loads(path.read_text())
    assert list(results["models"]) == list(sparse_models.MODELS)
    for name, row in results["models"].items():
        assert row["sparse_max_abs_diff"] == 0.0, name  # the exact checkpoint gives the same outputs
        assert 0 < row["sparse_bf16_bytes"] <= row["sparse_bytes"], name
        for batch, lat in row["latency"].items():
            assert lat["dense_ms"] > 0 and lat["inference_ms"] > 0 and lat["max_abs_diff"] < 1e-3, (name, batch)
    assert results["models"]["lenet-300-100"]["sparse_bytes"] < 0.25 * results["models"]["lenet-300-100"][
        "torch_save_bytes"]
    assert "| lenet-300-100 |" in path.with_suffix(".md").read_text()
