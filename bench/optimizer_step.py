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
- PAT-Lasso (torchao's PruneOptimizer with ProxLasso over fused SGD; skipped without torchao): SGD's streams on
  its latent copy, plus the weights written through the prox: 6s (24 B fp32).

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
import sys
import time
import traceback

import torch

import common
import param_sets
import accuracy_pat
from optimizer_step_methods import (GRDA_KW, METHODS, RDA_KW, REFERENCE_BACKEND, SGD_KW, bench_axpy, bench_copy,
                                    floor_bytes, make_pat, make_sgd, make_sparse, selected_backends)
from optimizer_step_report import markdown_report, markdown_table
from timing import free, time_fn, timer_label, use_triton_timer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
            free(device)
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
            free(device)

    # (b) torch SGD-momentum, (c) RDA and gRDA per backend
    jobs = [("SGD", None), ("PAT-Lasso", None)] + [(m, b) for m in ("RDA", "RDA-2:4", "GRDA") for b in backends]
    for method, backend in jobs:
        bpe = floor_bytes(method, itemsize)
        opt = None
        try:
            if method == "SGD":
                opt, label = make_sgd(params, device)
            elif method == "PAT-Lasso":
                try:
                    opt = make_pat(params)
                except ImportError as e:
                    skipped.append(dict(method=method, backend="torchao", reason=f"torchao not installed ({e})"))
                    print(f"  {method:<5} skipped: torchao is not installed")
                    continue
                label = f"torchao {accuracy_pat.pat_version()}"
                opt.step()  # the first step saves the latent copy: keep it out of the timing
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
            free(device)
    del params
    free(device)

    # ratios
    sgd = next((r for r in rows if r["method"] == "SGD"), None)
    for r in rows:
        c = copy_ms.get(r["bytes_per_elem"])
        r["pct_of_copy"] = 100.0 * c / r["ms"] if c else None
        ref = next((x for x in rows if x["method"] == r["method"] and x["backend"] == REFERENCE_BACKEND), None)
        r["speedup_vs_ref"] = ref["ms"] / r["ms"] if ref and r["method"] in ("RDA", "RDA-2:4", "GRDA") else None
        r["time_vs_sgd"] = r["ms"] / sgd["ms"] if sgd and r["method"] in METHODS else None
    return dict(name=name, numel=numel, tensors=len(named), dtype=common.dtype_name(dtype),
                results=rows, skipped=skipped)


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--sets", help=f"comma-separated, from {', '.join(param_sets.SETS)} "
                    "(default: resnet18 on CPU; resnet18,resnet50,transformer-1b on CUDA)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="parameter dtype (state is fp32)")
    ap.add_argument("--backends", help="comma-separated sparse_rda backends (default: all available; "
                    "triton on CPU only when named here)")
    ap.add_argument("--quick", action="store_true", help="few reps: a smoke run (< 1 minute on a 2-core CPU)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (CUDA: in units of one step's estimated time)")
    ap.add_argument("--reps", type=int, help="timed steps (CUDA: do_bench gets reps x one step's estimated time)")
    common.add_runner_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.runner_device(args)
    dtype = DTYPES[args.dtype]
    default_sets = "resnet18" if device.type == "cpu" else "resnet18,resnet50,transformer-1b"
    sets = common.csv(args.sets or default_sets)
    for s in sets:
        param_sets.named_shapes(s)  # unknown names fail before anything runs
    if device.type == "cpu":
        warmup, reps = (1, 3) if args.quick else (3, 15)
    else:
        warmup, reps = (3, 10) if args.quick else (10, 50)
    warmup = args.warmup if args.warmup is not None else warmup
    reps = max(1, args.reps if args.reps is not None else reps)
    use_triton = use_triton_timer(args, device)
    requested = [b.strip() for b in args.backends.split(",")] if args.backends else None
    backends, skipped_backends = selected_backends(requested, device)

    machine = common.machine_info(device)
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
        config=dict(command=common.command_line("optimizer_step.py", argv),
                    dtype=args.dtype, quick=args.quick, warmup=warmup, reps=reps,
                    timer=timer_label(device, use_triton),
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

    common.note_load_end(machine)
    if not args.no_save:
        suffix = "" if sets == default_sets.split(",") else "-" + "-".join(sets)
        suffix += "" if args.dtype == "fp32" else f"-{args.dtype}"
        suffix += (f"-threads{args.threads}" if args.threads else "") + ("-quick" if args.quick else "")
        common.save_report(args.out, "optimizer_step", device, machine, suffix, report, markdown_report(report))
    return report


if __name__ == "__main__":
    main()
