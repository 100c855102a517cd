"""The fuzz of tests/fuzz_state.py (hypothesis: random bad state and grads through load_state_dict and step on every
CPU backend), run in a subprocess: a crash in a native kernel fails this test instead of killing the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

FUZZ = Path(__file__).resolve().parent / "fuzz_state.py"


def test_random_bad_state_steps_cleanly_or_is_refused_with_nothing_changed():
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a crash prints where
    done = subprocess.run([sys.executable, str(FUZZ), "--examples", "200"], capture_output=True, text=True,
                          env=env, timeout=900)
    report = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"fuzz exited with {done.returncode} (negative: killed by that signal):\n{report}"
    assert "outcomes:" in done.stdout and "refused at step" in done.stdout and "stepped" in done.stdout, report
