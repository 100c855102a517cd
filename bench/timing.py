"""The bench runners' timers. Two policies, kept as they were measured with:

- ``time_fn`` (bench/optimizer_step.py): the caller gives the warm-up and reps (on CUDA in units of one call's
  estimated time, for ``triton.testing.do_bench``).
- ``time_adaptive`` (the masked-matmul runners, bench/train_step.py): reps picked from ``quick`` and a first call's
  time; calls slower than ``slow_ms`` get 3 reps timed with CUDA events.

On CUDA both prefer ``triton.testing.do_bench`` (median; it clears L2 between calls) and fall back to CUDA events;
on CPU both time each call with ``time.perf_counter`` after warm-up and report the median. Triton is imported only
when a CUDA timer asks for it: the CPU routes run without it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch

SLOW_MS = 100.0  # time_adaptive on CUDA: calls slower than this get 3 timed reps with CUDA events, not do_bench


def stats(times_ms: list[float], with_min: bool = True) -> dict:
    """Median, 20% and 80% quantiles (and the minimum) of per-call milliseconds."""
    q = statistics.quantiles(times_ms, n=5) if len(times_ms) >= 2 else [times_ms[0]] * 4
    low = dict(ms_min=min(times_ms)) if with_min else {}
    return dict(ms=statistics.median(times_ms), **low, ms_q20=q[0], ms_q80=q[3], reps=len(times_ms))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drops what the last measurement left behind, so the next one starts with the memory it had."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def do_bench_or_none():
    try:
        from triton.testing import do_bench
    except Exception:  # no triton, or one that cannot talk to this GPU
        return None
    return do_bench


def use_triton_timer(args: argparse.Namespace, device: torch.device) -> bool:
    """Whether the CUDA timings go through do_bench (the runners' --no-triton-timer says no)."""
    return device.type == "cuda" and not args.no_triton_timer and do_bench_or_none() is not None


def timer_label(device: torch.device, use_triton: bool, do_bench: str = "triton.testing.do_bench (median)",
                cpu: str = "time.perf_counter (median)") -> str:
    """The report's words for the timer that ran."""
    return do_bench if use_triton else ("CUDA events (median)" if device.type == "cuda" else cpu)


def time_cpu(fn, warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(stats(times), timer="perf_counter")


def cuda_event_times(fn, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls, timed with CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_cuda(fn, warmup: int, reps: int, use_triton: bool = True) -> dict:
    # one untimed call (state allocation on a first step), then a rough estimate to size the warm-up and reps
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    do_bench = do_bench_or_none() if use_triton else None
    if do_bench is not None:
        try:
            q20, q50, q80 = do_bench(
                fn, warmup=max(est_ms * warmup, 1.0), rep=max(est_ms * reps, 1.0), quantiles=[0.2, 0.5, 0.8]
            )
            return dict(ms=q50, ms_q20=q20, ms_q80=q80, timer="triton.testing.do_bench")
        except Exception as e:  # fall back to events
            print(f"  do_bench failed ({type(e).__name__}: {e}); using CUDA events", file=sys.stderr)
    return dict(stats(cuda_event_times(fn, warmup, reps)), timer="cuda events")


def time_fn(fn, device: torch.device, warmup: int, reps: int, use_triton: bool = True) -> dict:
    if device.type == "cuda":
        return time_cuda(fn, warmup, reps, use_triton)
    return time_cpu(fn, warmup, reps)


def time_adaptive(fn, device: torch.device, quick: bool = False, use_triton: bool = True, slow_ms: float = SLOW_MS,
                  min_reps: int = 1, cpu_reps: tuple[int, int] | None = None) -> dict:
    """Median milliseconds of fn() (one call before timing: compiles, allocates).

    CUDA: ``triton.testing.do_bench`` (it clears L2 before each call) with quantiles 0.2/0.5/0.8, over at least
    ``min_reps`` calls; calls slower than ``slow_ms`` get 3 reps timed with CUDA events (do_bench would spend ~8
    calls estimating and warming). CPU: ``time.perf_counter`` around each call, median of the reps
    (``cpu_reps`` = (warm-up, reps))."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    est_ms = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        do_bench = do_bench_or_none() if use_triton else None
        if do_bench is not None and est_ms <= slow_ms:
            try:
                warmup, rep = (10, 40) if quick else (25, 100)
                warmup, rep = max(warmup, 2 * est_ms), max(rep, min_reps * est_ms)
                q20, q50, q80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
                return dict(ms=q50, ms_q20=q20, ms_q80=q80, timer="triton.testing.do_bench")
            except Exception as e:  # fall back to events
                print(f"  do_bench failed ({type(e).__name__}: {e}); using CUDA events", file=sys.stderr)
        reps = 3 if est_ms > slow_ms else (10 if quick else 30)
        times = cuda_event_times(fn, 1 if est_ms > slow_ms else 3, reps)
        return dict(stats(times, with_min=False), timer="CUDA events")  # as recorded so far: no ms_min here
    warmup, reps = cpu_reps or ((0, 3) if quick else (1, 7))
    if est_ms > 2000:  # the interpreter on a larger shape: keep the smoke run short
        warmup, reps = 0, min(reps, 2)
    return time_cpu(fn, warmup, reps)
