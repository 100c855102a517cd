#!/usr/bin/env python
"""Optimizer-step benchmark: RDA and gRDA (every available backend) vs torch SGD-momentum vs a device copy of the
same minimum bytes, all measured side by side in one run on realistic parameter sets.

    python bench/optimizer_step.py                  # CPU: resnet18; GPU: resnet18, resnet50, transformer-1b
    python bench/optimizer_step.py --device cuda --sets transformer-1b --dtype bf16
    python bench/optimizer_step.py --quick          # a smoke run (< 1 minute on a 2-core CPU)

Per parameter set it prints a table (method/backend, ms per step, GB/s of the method's minimum bytes, % of the
copy bandwidth for those bytes, speed-up vs the reference backend, time relative to SGD) and writes JSON plus a
markdown table to ``bench/results/optimizer_step-<device>-<cpu-or-gpu-name>[-<sets>][-bf16][-threadsN][-quick]``
``.{json,md}`` (the sets appear in the name when they are not the device's default).

Minimum bytes per element and step (``floor_bytes``), for parameters of itemsize s (4 fp32, 2 bf16) and fp32
optimizer state:

- RDA: reads g, w, T, B, A, v and writes w, T, B, A, v: 3s + 32 (44 B fp32, 38 B bf16). The design's floor is
  2s + 32 (40 / 36 B) when w is recomputed as S(T_old) instead of read; we report against the larger figure.
  Unpenalized tensors (biases, norm scales: 0.01-0.2% of the elements in these sets) need no A and B, so the
  floor is overstated by under 0.1%.
- gRDA: reads g, acc and writes acc, w: 2s + 8 (16 B fp32, 12 B bf16).
- SGD with momentum (buffer in the parameter dtype): reads g, w, buf and writes w, buf: 5s (20 B fp32, 10 B bf16).

"copy" rows copy a flat buffer of (bytes / 2) bytes into another (reading and writing bytes/2 each), for each
distinct byte count; a method's "% of copy" is the copy's time for its bytes divided by the method's time.
An "axpy" row (x += y in place, same bytes as the RDA copy) shows what an in-place stream gets: on a CPU a
copy's destination lines are read before they are written (write-allocate), so in-place updates can beat the
copy's nominal GB/s and show more than 100% of copy.
Timing: on CUDA ``triton.testing.do_bench`` (median; it clears L2 between runs) when Triton is importable, CUDA
events after warm-up otherwise; on CPU ``time.perf_counter`` around each step after warm-up, median of the reps.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import param_sets  # noqa: E402

import sparse_rda  # noqa: E402

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("SGD", "RDA", "GRDA")
REFERENCE_BACKEND = "torch"

# Hyper-parameters: realistic values (they do not change the work done per element).
RDA_KW = dict(lr=1.0, lam=1e-6, momentum_time=9.5, weight_decay=5e-4)
GRDA_KW = dict(lr=0.01, c=0.005, mu=0.55)
SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


# ----------------------------------------------------------------------------------------------------------
# Byte floors


def floor_bytes(method: str, itemsize: int) -> int:
    """Minimum bytes moved per parameter element and step, parameters of ``itemsize`` bytes, fp32 state."""
    if method == "RDA":
        return 3 * itemsize + 32  # read g, w (2s) + T, B, A, v (16); write w (s) + T, B, A, v (16)
    if method == "GRDA":
        return 2 * itemsize + 8  # read g (s) + acc (4); write acc (4) + w (s)
    if method == "SGD":
        return 5 * itemsize  # read g, w, buf; write w, buf (buf in the parameter dtype)
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------------------
# Timing


def _stats(times_ms: list[float]) -> dict:
    q = statistics.quantiles(times_ms, n=5) if len(times_ms) >= 2 else [times_ms[0]] * 4
    return dict(ms=statistics.median(times_ms), ms_min=min(times_ms), ms_q20=q[0], ms_q80=q[3], reps=len(times_ms))


def time_cpu(fn, warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(_stats(times), timer="perf_counter")


def _do_bench():
    try:
        from triton.testing import do_bench
    except Exception:  # no triton, or one that cannot talk to this GPU
        return None
    return do_bench


def time_cuda(fn, warmup: int, reps: int, use_triton: bool = True) -> dict:
    # one untimed call (state allocation on a first step), then a rough estimate to size the warm-up and reps
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    do_bench = _do_bench() if use_triton else None
    if do_bench is not None:
        try:
            q20, q50, q80 = do_bench(
                fn, warmup=max(est_ms * warmup, 1.0), rep=max(est_ms * reps, 1.0), quantiles=[0.2, 0.5, 0.8]
            )
            return dict(ms=q50, ms_q20=q20, ms_q80=q80, timer="triton.testing.do_bench")
        except Exception as e:  # fall back to events
            print(f"  do_bench failed ({type(e).__name__}: {e}); using CUDA events", file=sys.stderr)
    return dict(_stats(cuda_event_times(fn, warmup, reps)), timer="cuda events")


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


def time_fn(fn, device: torch.device, warmup: int, reps: int, use_triton: bool = True) -> dict:
    if device.type == "cuda":
        return time_cuda(fn, warmup, reps, use_triton)
    return time_cpu(fn, warmup, reps)


# ----------------------------------------------------------------------------------------------------------
# Methods


def make_sgd(params, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """torch SGD-momentum, fused where this torch supports it on the device (one trial step checks), else foreach."""
    try:
        opt = torch.optim.SGD(params, **SGD_KW, fused=True)
        opt.step()
        return opt, "fused"
    except (RuntimeError, TypeError, ValueError) as e:
        print(f"  SGD fused=True unavailable on {device.type} ({e}); using foreach=True", file=sys.stderr)
    return torch.optim.SGD(params, **SGD_KW, foreach=True), "foreach"


def make_sparse(method: str, params, backend: str) -> torch.optim.Optimizer:
    if method == "RDA":
        return sparse_rda.RDA(params, **RDA_KW, backend=backend)
    return sparse_rda.GRDA(params, **GRDA_KW, backend=backend)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def bench_copy(nbytes: int, device: torch.device, warmup: int, reps: int, use_triton: bool) -> dict:
    """Copy nbytes/2 bytes from one flat buffer to another: nbytes moved in all."""
    n = max(1, nbytes // 2 // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)  # written once, so every page is mapped
    dst = torch.zeros(n, dtype=torch.float32, device=device)
    try:
        return time_fn(lambda: dst.copy_(src), device, warmup, reps, use_triton)
    finally:
        del src, dst
        _free(device)


def bench_axpy(nbytes: int, device: torch.device, warmup: int, reps: int, use_triton: bool) -> dict:
    """x += y in place over two flat buffers of nbytes/3 bytes each (reads x, y; writes x: nbytes moved). Unlike a
    copy it writes only lines it has just read, as an in-place optimizer step does: on a CPU a copy's destination
    is also read first (write-allocate), so a copy_ moves ~1.5x its nominal bytes and in-place updates can exceed
    100% of it."""
    n = max(1, nbytes // 3 // 4)
    x = torch.zeros(n, dtype=torch.float32, device=device)
    y = torch.ones(n, dtype=torch.float32, device=device)
    try:
        return time_fn(lambda: x.add_(y), device, warmup, reps, use_triton)
    finally:
        del x, y
        _free(device)


def selected_backends(requested: list[str] | None, device: torch.device) -> tuple[list[str], list[dict]]:
    """Backends to run and the ones skipped (with why). Triton on CPU runs in the interpreter and is far too slow
    for these sizes: it runs only when asked for by name (--backends triton)."""
    available = sparse_rda.backends()
    names = requested if requested else available
    run, skipped = [], []
    for b in names:
        if b not in available:
            skipped.append(dict(backend=b, reason=f"not available (available: {', '.join(available)})"))
        elif b == "triton" and device.type == "cpu" and not requested:
            skipped.append(dict(backend=b, reason="CPU would run the Triton interpreter; ask with --backends triton"))
        else:
            run.append(b)
    if REFERENCE_BACKEND in run:  # reference first, so speed-ups can be printed as rows arrive
        run.remove(REFERENCE_BACKEND)
        run.insert(0, REFERENCE_BACKEND)
    return run, skipped


def bench_set(name: str, device: torch.device, dtype: torch.dtype, backends: list[str], warmup: int, reps: int,
              use_triton: bool) -> dict:
    named = param_sets.named_shapes(name)
    numel = param_sets.total(named)
    itemsize = torch.empty((), dtype=dtype).element_size()
    print(f"\n== {name}: {numel / 1e6:.2f}M parameters in {len(named)} tensors, {dtype}, {device}")
    t0 = time.perf_counter()
    params = param_sets.make_params([s for _, s in named], device, dtype)
    print(f"  built params + grads in {time.perf_counter() - t0:.1f} s")
    rows: list[dict] = []
    skipped: list[dict] = []

    def record(row: dict) -> None:
        row["bytes"] = row["bytes_per_elem"] * numel
        row["gbps"] = row["bytes"] / (row["ms"] * 1e-3) / 1e9 if row.get("ms") else None
        rows.append(row)
        print(f"  {row['method']:<5} {row['backend']:<18} {row['ms']:10.3f} ms  {row['gbps']:8.1f} GB/s")

    # (a) copies of each distinct byte count
    copy_ms = {}
    for bpe in sorted({floor_bytes(m, itemsize) for m in METHODS}, reverse=True):
        try:
            r = bench_copy(bpe * numel, device, warmup, reps, use_triton)
        except Exception as e:
            skipped.append(dict(method="copy", backend=f"{bpe} B/elem", reason=f"{type(e).__name__}: {e}"))
            _free(device)
            continue
        copy_ms[bpe] = r["ms"]
        record(dict(method="copy", backend=f"copy_ ({bpe} B/elem)", bytes_per_elem=bpe, **r))

    # (a') an in-place stream of the largest byte count, for scale (see bench_axpy)
    bpe = max(copy_ms, default=None)
    if bpe is not None:
        try:
            r = bench_axpy(bpe * numel, device, warmup, reps, use_triton)
            record(dict(method="axpy", backend=f"x.add_(y) ({bpe} B/elem)", bytes_per_elem=bpe, **r))
        except Exception as e:
            skipped.append(dict(method="axpy", backend=f"{bpe} B/elem", reason=f"{type(e).__name__}: {e}"))
            _free(device)

    # (b) torch SGD-momentum, (c) RDA and gRDA per backend
    jobs = [("SGD", None)] + [(m, b) for m in ("RDA", "GRDA") for b in backends]
    for method, backend in jobs:
        bpe = floor_bytes(method, itemsize)
        opt = None
        try:
            if method == "SGD":
                opt, label = make_sgd(params, device)
            else:
                try:
                    opt = make_sparse(method, params, backend)
                except ValueError as e:  # the backend cannot run on this device
                    skipped.append(dict(method=method, backend=backend, reason=str(e)))
                    print(f"  {method:<5} {backend:<18} skipped: {e}")
                    continue
                label = backend
                opt.step()  # the first step allocates the state: keep it out of the timing
            r = time_fn(opt.step, device, warmup, reps, use_triton)
            record(dict(method=method, backend=label, bytes_per_elem=bpe, **r))
        except Exception as e:  # a failing backend must not take the rest of the run with it
            traceback.print_exc()
            skipped.append(dict(method=method, backend=backend or "torch", reason=f"{type(e).__name__}: {e}"))
        finally:
            del opt
            _free(device)
    del params
    _free(device)

    # ratios
    sgd = next((r for r in rows if r["method"] == "SGD"), None)
    for r in rows:
        c = copy_ms.get(r["bytes_per_elem"])
        r["pct_of_copy"] = 100.0 * c / r["ms"] if c else None
        ref = next((x for x in rows if x["method"] == r["method"] and x["backend"] == REFERENCE_BACKEND), None)
        r["speedup_vs_ref"] = ref["ms"] / r["ms"] if ref and r["method"] in ("RDA", "GRDA") else None
        r["time_vs_sgd"] = r["ms"] / sgd["ms"] if sgd and r["method"] in METHODS else None
    return dict(name=name, numel=numel, tensors=len(named), dtype=str(dtype).replace("torch.", ""),
                results=rows, skipped=skipped)


# ----------------------------------------------------------------------------------------------------------
# Machine info and output


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def save_report(out: str | Path, kind: str, device: torch.device, machine: dict, suffix: str, report: dict,
                markdown: str) -> None:
    """Writes <out>/<kind>-<device>-<gpu or cpu name><suffix>.{json,md}: the naming every runner shares."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{device.type}-{slug(machine.get('gpu') or machine['cpu'])}{suffix}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(f"\nwrote {out / stem}.json and .md")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_id() -> str | None:
    """Vendor, family, model and stepping from /proc/cpuinfo (names the part when "model name" is generic)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return None
    if "cpu family" not in fields:
        return None
    return (f"{fields.get('vendor_id', '?')} family {fields['cpu family']} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16") if f in have]
    except OSError:
        pass
    return []


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except Exception:
        return None


def machine_info(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        device=device.type,
        cpu=cpu_model(),
        cpu_id=cpu_id(),
        cpu_flags=cpu_flags(),
        logical_cpus=os.cpu_count(),
        usable_cpus=usable,
        torch_threads=torch.get_num_threads(),
        load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        triton=triton_version,
        sparse_rda=sparse_rda.__version__,
        backends=sparse_rda.backends(),
        git=git_revision(),
    )
    try:
        info["auto_backend"] = sparse_rda.dispatch.resolve("auto", device)
    except Exception:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / 2**30, 1),
                    gpu_capability=f"{prop.major}.{prop.minor}", gpu_sms=prop.multi_processor_count)
    return info


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def markdown_table(s: dict) -> str:
    lines = [
        "| method | backend | B/elem | ms/step | GB/s | % of copy | vs torch ref | time / SGD |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in s["results"]:
        lines.append(
            f"| {r['method']} | {r['backend']} | {r['bytes_per_elem']} | {_fmt(r['ms'], '.3f')} "
            f"| {_fmt(r['gbps'], '.1f')} "
            f"| {_fmt(r['pct_of_copy'], '.1f', '%')} | {_fmt(r['speedup_vs_ref'], '.2f', 'x')} "
            f"| {_fmt(r['time_vs_sgd'], '.2f', 'x')} |"
        )
    for k in s["skipped"]:
        lines.append(f"| {k.get('method', '')} | {k['backend']} | skipped: {k['reason']} | | | | | |")
    return "\n".join(lines)


def report_header(title: str, m: dict) -> list[str]:
    """The first lines of every runner's markdown report: what ran where, with which versions."""
    where = f"GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, sm {m['gpu_capability']}), " if m.get("gpu") else ""
    flags = f"; flags {', '.join(m['cpu_flags']) or 'n/a'}" if "cpu_flags" in m else ""
    backends = f" (backends {', '.join(m['backends'])}; auto -> {m.get('auto_backend')})" if "backends" in m else ""
    return [
        f"# {title}: {m['device']}, {m.get('gpu') or m['cpu']}",
        "",
        f"- date: {m['date']}; git {m['git']}",
        f"- machine: {where}CPU {m['cpu']} [{m.get('cpu_id')}] ({m['usable_cpus']} usable of {m['logical_cpus']} "
        f"logical CPUs, torch threads {m['torch_threads']}{flags}; load average {m.get('load_average')} at start, "
        f"{m.get('load_average_end')} at end)",
        f"- python {m['python']}, torch {m['torch']} (CUDA {m['torch_cuda']}), triton {m['triton']}, "
        f"sparse_rda {m['sparse_rda']}{backends}",
    ]


def markdown_report(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = report_header("Optimizer step", m) + [
        f"- command: `{cfg['command']}`",
        f"- timing: {cfg['timer']}, warm-up {cfg['warmup']}, reps {cfg['reps']}; ms/step is the median",
        "",
        "B/elem is the method's minimum bytes per parameter element and step (fp32 state): RDA 3s + 32 (44 B for "
        "fp32 params, reading w; 40 B if w is recomputed instead), gRDA 2s + 8, SGD-momentum 5s (s = param "
        "itemsize). GB/s = those bytes / time; % of copy = time of a copy_ moving the same bytes / time (on a "
        "CPU a copy also reads its destination, write-allocate, so in-place updates such as the axpy row can "
        "exceed 100%). "
        "vs torch ref = speed-up over the reference backend of the same optimizer; time / SGD = step time "
        "relative to torch SGD-momentum.",
    ]
    for s in report["sets"]:
        out += ["", f"## {s['name']}: {s['numel']:,} parameters, {s['tensors']} tensors, {s['dtype']}", "",
                markdown_table(s)]
    for k in report.get("skipped_sets", []):
        out += ["", f"## {k['name']}: skipped ({k['reason']})"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------


def add_runner_args(ap: argparse.ArgumentParser) -> None:
    """The options every bench runner shares: device, CPU threads, timer, where results go."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-triton-timer", action="store_true", help="CUDA: time with CUDA events, not do_bench")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder (default: bench/results)")
    ap.add_argument("--no-save", action="store_true", help="print only")


def runner_device(args: argparse.Namespace) -> torch.device:
    """The device the runner times on (exits with a message if it cannot), with --threads applied."""
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device}: no CUDA device is available")
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sets", help=f"comma-separated, from {', '.join(param_sets.SETS)} "
                    "(default: resnet18 on CPU; resnet18,resnet50,transformer-1b on CUDA)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="parameter dtype (state is fp32)")
    ap.add_argument("--backends", help="comma-separated sparse_rda backends (default: all available; "
                    "triton on CPU only when named here)")
    ap.add_argument("--quick", action="store_true", help="few reps: a smoke run (< 1 minute on a 2-core CPU)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (CUDA: in units of one step's estimated time)")
    ap.add_argument("--reps", type=int, help="timed steps (CUDA: do_bench gets reps x one step's estimated time)")
    add_runner_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = runner_device(args)
    dtype = DTYPES[args.dtype]
    default_sets = "resnet18" if device.type == "cpu" else "resnet18,resnet50,transformer-1b"
    sets = [s.strip() for s in (args.sets or default_sets).split(",") if s.strip()]
    for s in sets:
        param_sets.named_shapes(s)  # unknown names fail before anything runs
    if device.type == "cpu":
        warmup, reps = (1, 3) if args.quick else (3, 15)
    else:
        warmup, reps = (3, 10) if args.quick else (10, 50)
    warmup = args.warmup if args.warmup is not None else warmup
    reps = max(1, args.reps if args.reps is not None else reps)
    use_triton = device.type == "cuda" and not args.no_triton_timer and _do_bench() is not None
    requested = [b.strip() for b in args.backends.split(",")] if args.backends else None
    backends, skipped_backends = selected_backends(requested, device)

    machine = machine_info(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    load = machine["load_average"]
    if load and device.type == "cpu" and load[0] > 0.5 * machine["usable_cpus"]:
        print(f"warning: load average {load[0]} on {machine['usable_cpus']} CPUs: other processes compete for the "
              "cores and CPU timings will be inflated (multi-threaded ops stall a scheduler tick at each barrier; "
              "--threads 1 is steadier)", file=sys.stderr)
    print(f"{machine.get('gpu') or machine['cpu']}: torch {machine['torch']}, triton {machine['triton']}, "
          f"backends {backends}" + (f" (skipped: {skipped_backends})" if skipped_backends else ""))
    report = dict(
        machine=machine,
        config=dict(command="python bench/optimizer_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    dtype=args.dtype, quick=args.quick, warmup=warmup, reps=reps,
                    timer="triton.testing.do_bench (median)" if use_triton else
                    ("CUDA events (median)" if device.type == "cuda" else "time.perf_counter (median)"),
                    hyper=dict(RDA=RDA_KW, GRDA=GRDA_KW, SGD=SGD_KW), backends=backends,
                    skipped_backends=skipped_backends),
        sets=[],
        skipped_sets=[],
    )
    for s in sets:
        if device.type == "cpu" and s in param_sets.GPU_ONLY:
            reason = "GPU-only: too large to allocate on CPU"
            print(f"\n== {s}: skipped ({reason})")
            report["skipped_sets"].append(dict(name=s, reason=reason))
            continue
        result = bench_set(s, device, dtype, backends, warmup, reps, use_triton)
        for k in skipped_backends:
            result["skipped"].append(dict(method="RDA/GRDA", **k))
        report["sets"].append(result)
        print()
        print(markdown_table(result))

    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_save:
        suffix = "" if sets == default_sets.split(",") else "-" + "-".join(sets)
        suffix += "" if args.dtype == "fp32" else f"-{args.dtype}"
        suffix += (f"-threads{args.threads}" if args.threads else "") + ("-quick" if args.quick else "")
        save_report(args.out, "optimizer_step", device, machine, suffix, report, markdown_report(report))
    return report


if __name__ == "__main__":
    main()
