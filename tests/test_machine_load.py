"""examples/machine_load.py: the examples print a time comparison only when nothing else took the CPU."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from machine_load import OTHERS_LIMIT, LoadMonitor  # noqa: E402

BURN = "import time\nend = time.perf_counter() + 1.5\nwhile time.perf_counter() < end: pass\n"


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measured from /proc/stat (Linux)")
def test_another_process_burning_a_core_is_seen_and_our_own_work_is_not():
    with LoadMonitor() as own:  # this process busy: not "other processes"
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
    with LoadMonitor() as other:  # a child burning a core while this one sleeps
        child = subprocess.Popen([sys.executable, "-c", BURN])
        time.sleep(1.2)
    child.wait()
    assert other.loaded and other.others_cores > 0.5, other.describe()
    assert own.others_cores < other.others_cores - 0.4, (own.describe(), other.describe())
    assert "other processes used" in other.describe() and OTHERS_LIMIT == 0.25
