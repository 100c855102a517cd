#!/usr/bin/env python
"""Compiled vs eager optimizer step: ``torch.compile(opt.step)`` (inductor) against the eager step, side by side in
one run on a realistic parameter set, with lr changing every step (CosineRDA for RDA, CosineAnnealingLR for gRDA),
and the graphs dynamo compiled over the run (torch's own counter): they stop after the warm-up.

    python bench/compiled_step.py                    # resnet18, every backend that runs here, 100 steps
    python bench/compiled_step.py --quick            # a smoke run (small set, aot_eager, 12 steps)

Writes bench/results/compiled_step-<device>-<cpu-or-gpu-name>[-quick].{json,md}. Timing: the median over the
steps after the warm-up of one step plus the scheduler's step (what a training loop pays), time.perf_counter on
CPU, CUDA events on a GPU."""

from __future__ import annotations

import argparse
import time

import torch
from torch._dynamo.utils import counters

import common
import param_sets
from timing import stats, sync

import sparse_rda
from sparse_rda.schedules import CosineRDA

OPTIONS = {"RDA": dict(lr=1.0, lam=1e-6, momentum_time=9.5, weight_decay=5e-4), "GRDA": dict(lr=0.01, c=0.005, mu=0.55)}
WARM_UP = 8  # steps: the first compiles, the next ones see lr change (dynamo's automatic dynamic recompiles once)


def run_one(method: str, backend: str, compiled: bool, shapes, device, steps: int, compiler: str) -> dict:
    params = param_sets.make_params(shapes, device)
    cls = sparse_rda.RDA if method == "RDA" else sparse_rda.GRDA
    opt = cls(params, backend=backend, **OPTIONS[method])
    sched = CosineRDA(opt, steps) if method == "RDA" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(opt.step, backend=compiler) if compiled else opt.step
    times, compile_s = [], 0.0
    for k in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sched.step()
        sync(device)
        elapsed = time.perf_counter() - t0
        if k < WARM_UP:
            compile_s += elapsed
        else:
            times.append(elapsed * 1e3)
    graphs = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())
    return dict(method=method, backend=backend, mode=f"compiled ({compiler})" if compiled else "eager",
                graphs=graphs if compiled else None, graph_breaks=breaks if compiled else None,
                warm_up_s=compile_s, **stats(times))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = common.report_header("Compiled vs eager optimizer step", m) + [
        "",
        f"- command: `{report['command']}`",
        f"- set: {report['set']} ({report['numel'] / 1e6:.2f}M parameters in {report['tensors']} tensors, fp32); "
        f"{report['steps']} steps, lr changing every step (RDA: CosineRDA, gRDA: CosineAnnealingLR); time = one "
        f"step + the scheduler's step, median of the steps after the first {WARM_UP}",
        "- graphs: dynamo's `unique_graphs` over the whole run (one graph break is torch's LRScheduler wrapper "
        "around `opt.step`, which dynamo skips; the step itself is one graph)",
        "",
        "| method | backend | mode | ms / step (median) | 20% | 80% | vs eager | graphs | graph breaks | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        eager = next(x for x in report["results"] if x["method"] == r["method"] and x["backend"] == r["backend"]
                     and x["mode"] == "eager")
        lines.append(f"| {r['method']} | {r['backend']} | {r['mode']} | {r['ms']:.3f} | {r['ms_q20']:.3f} | "
                     f"{r['ms_q80']:.3f} | {eager['ms'] / r['ms']:.2f}x | {common.fmt(r['graphs'], 'd')} | "
                     f"{common.fmt(r['graph_breaks'], 'd')} | {r['warm_up_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    common.add_runner_args(ap)
    ap.add_argument("--set", default="resnet18", help=f"one of {', '.join(param_sets.SETS)}")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--backends", help="comma-separated (default: the kernel backends that run here, and torch)")
    ap.add_argument("--quick", action="store_true", help="resnet18-subset, aot_eager, 12 steps: a smoke run")
    args = ap.parse_args(argv)
    device = common.runner_device(args)
    name = "resnet18-subset" if args.quick else args.set
    steps, compiler = (12, "aot_eager") if args.quick else (args.steps, "inductor")
    available = [b for b in sparse_rda.backends() if b != "triton" or device.type == "cuda"]
    backends = common.csv(args.backends) if args.backends else available
    named = param_sets.named_shapes(name)
    shapes = [s for _, s in named]
    results = []
    for method in ("RDA", "GRDA"):
        for backend in backends:
            for compiled in (False, True):
                row = run_one(method, backend, compiled, shapes, device, steps, compiler)
                print(f"{method:5} {backend:7} {row['mode']:22} {row['ms']:9.3f} ms  graphs {row['graphs']}")
                results.append(row)
    machine = common.machine_info(device)
    common.note_load_end(machine)
    report = dict(machine=machine, command=common.command_line("compiled_step.py", argv), set=name,
                  numel=param_sets.total(named), tensors=len(named), steps=steps, results=results)
    if not args.no_save:
        common.save_report(args.out, "compiled_step", device, machine, "-quick" if args.quick else "", report,
                           markdown(report))
    return report


if __name__ == "__main__":
    main()
