"""Did other processes compete for the CPU while we timed something? The examples print a time comparison only
when the answer is no for every side of it.

Linux: the machine's busy CPU time (/proc/stat, steal included) minus this process's own CPU time, per second
of wall time, is the number of cores other processes (or the hypervisor) took. Elsewhere the check is skipped
and says so.
"""

from __future__ import annotations

import os
import time

# More than this many cores busy with other work on average: a timing is not comparable with another one.
OTHERS_LIMIT = 0.25


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LoadMonitor:
    """``with LoadMonitor() as load: ...`` (or ``load = LoadMonitor().start(); ...; load.stop()``), then
    ``load.others_cores`` (None where it cannot be measured), ``load.loaded`` and ``load.describe()``."""

    def start(self) -> LoadMonitor:
        self._busy, self._own, self._wall = _busy_seconds(), time.process_time(), time.perf_counter()
        self.others_cores = None
        return self

    def stop(self) -> LoadMonitor:
        busy, wall = _busy_seconds(), time.perf_counter() - self._wall
        if busy is not None and self._busy is not None and wall > 0:
            own = time.process_time() - self._own
            self.others_cores = max(0.0, (busy - self._busy) - own) / wall
        return self

    def __enter__(self) -> LoadMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def loaded(self) -> bool:
        return self.others_cores is not None and self.others_cores > OTHERS_LIMIT

    def describe(self) -> str:
        if self.others_cores is None:
            return "machine load not measured (no /proc/stat)"
        return f"other processes used {self.others_cores:.2f} of {cpu_count()} CPU cores"


def busy_now_note(seconds: float = 0.5) -> str | None:
    """A warning when other processes take the CPU right now (measured over `seconds`, not the load average,
    which still counts the compile that `make demo` ran a moment ago), else None."""
    with LoadMonitor() as probe:
        time.sleep(seconds)
    if probe.loaded:
        return (f"warning: before training, {probe.describe()}: other work competes for the CPU, so times may "
                "not be comparable (the demo says so after each timing)")
    return None
