"""The README's quick start runs as pasted and does what the README says it does."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


def test_quick_start_runs_as_pasted_and_reaches_its_target(tmp_path):
    out = subprocess.run([sys.executable, "-c", quick_start_code()], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    losses = [float(x) for x in re.findall(r"epoch \d+: loss ([\d.]+)", out.stdout)]
    assert len(losses) == 5 and losses[-1] < 0.7 * losses[0], out.stdout  # it trains
    (penalized,) = re.findall(r"total penalized .* ([\d.]+)%\n", out.stdout)
    assert abs(float(penalized) - 95.0) <= 0.5, out.stdout  # the sparsity asked for (DESIGN.md: within 0.5 point)


def test_demo_prints_what_the_readme_shows(tmp_path):
    """The README quotes the end of `make demo`: the demo (--quick here) prints the same table and sentences."""
    demo = README.parent / "examples" / "fashion_mnist_demo.py"
    out = subprocess.run([sys.executable, str(demo), "--quick", "--bench-runs", "5"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    section = README.read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    (quoted,) = re.findall(r"`make demo`.*?```\n(.*?)```", section, re.DOTALL)
    header, *_ = quoted.splitlines()
    assert header in out.stdout.splitlines(), header
    assert re.search(r"^RDA vs dense: [+-][\d.]+ points of test accuracy, keeping", out.stdout, re.MULTILINE)
    comparable = "Training step (median, timed alike, one run after the other): RDA takes"
    assert comparable in quoted and (comparable in out.stdout or "the training times are not comparable" in out.stdout)
    assert "time vs SGD" in out.stdout and "RDA backend=cpu" in out.stdout


def test_end_to_end_snippet_runs_as_pasted(tmp_path):
    """Train with target_sparsity, save_sparse, load_sparse, to_inference: the layers become CSR, outputs equal."""
    section = README.read_text().split("## From sparse training to a smaller, faster model", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "model.safetensors").exists()
    assert out.stdout.count("'csr: ") == 3, out.stdout  # every layer past the CPU crossover at batch 16
