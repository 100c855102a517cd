#!/usr/bin/env python
"""SparseLinear's CPU matmul (sparse_rda.cpu_tiles) against nn.Linear in training, side by side: the forward, the
forward + dX, and the whole layer step (forward + dX + dW, dW dense as RDA needs it; and live-only dW as mask-based
methods use), at a fraction of dead 64x64 tiles.

    python bench/sparse_training_cpu.py             # the shapes below, 90% dead tiles, 1 and 2 threads
    python bench/sparse_training_cpu.py --quick     # smoke run: one small shape, few reps

Shapes (M rows x in -> out): the char transformer's MLP (examples/char_transformer.py's cpu config: batch 16 x
context 128 = 2048 rows; fc1 128 -> 512, fc2 512 -> 128, 16 tiles each, so 90% dead is 2 live tiles of 16:
87.5%) and its block (fc1, GELU, fc2); a d=512 MLP (512 -> 2048 -> 512, 256 tiles per weight). The dead tiles are
drawn at random (the same for both layers compared); both compute the same values (checked each run).
Results: bench/results/sparse_training_cpu-cpu-<cpu>[-quick].{json,md}.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

import common
from timing import time_adaptive

import sparse_rda

SHAPES = {"transformer-fc1": (2048, 128, 512), "transformer-fc2": (2048, 512, 128),
          "d512-fc1": (2048, 512, 2048), "d512-fc2": (2048, 2048, 512)}
BLOCKS = {"transformer-mlp": ("transformer-fc1", "transformer-fc2"), "d512-mlp": ("d512-fc1", "d512-fc2")}
QUICK_SHAPES = {"small": (256, 128, 256)}


def tile_sparse(in_f: int, out_f: int, dead: float, gen: torch.Generator) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    rt, kt = -(-out_f // 64), -(-in_f // 64)
    live = torch.zeros(rt * kt, dtype=torch.bool)
    live[torch.randperm(rt * kt, generator=gen)[:max(1, round((1 - dead) * rt * kt))]] = True
    keep = live.view(rt, kt).repeat_interleave(64, 0).repeat_interleave(64, 1)[:out_f, :in_f]
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer


def make_pair(names: tuple[str, ...], dead: float, seed: int = 0):
    """(dense model, SparseLinear model): the same weights; one layer, or fc1 -> GELU -> fc2."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers = []
    for name in names:
        m, k, n = SHAPES.get(name) or QUICK_SHAPES[name]
        layers.append(tile_sparse(k, n, dead, gen))
    dense = layers[0] if len(layers) == 1 else nn.Sequential(layers[0], nn.GELU(), layers[1])
    return dense, sparse_rda.sparsify(copy.deepcopy(dense)), (SHAPES.get(names[0]) or QUICK_SHAPES[names[0]])[0]


def timings(model: nn.Module, x: torch.Tensor, dy: torch.Tensor, quick: bool) -> dict:
    cpu = torch.device("cpu")
    params = list(model.parameters())
    xg = x.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_dx():  # the weights frozen: only dX flows back
        for p in params:
            p.requires_grad_(False)
        try:
            torch.autograd.grad(model(xg), (xg,), dy)
        finally:
            for p in params:
                p.requires_grad_(True)

    def step():
        torch.autograd.grad(model(xg), (xg, *params), dy)

    return {name: time_adaptive(fn, cpu, quick, cpu_reps=(2, 5) if quick else (3, 15))["ms"]
            for name, fn in (("fwd", fwd), ("fwd_dx", fwd_dx), ("step", step))}


def same_values(dense, sparse, x, dy) -> float:
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ga = torch.autograd.grad(dense(xa), (xa, *dense.parameters()), dy)
    gb = torch.autograd.grad(sparse(xb), (xb, *sparse.parameters()), dy)
    worst = max(float((a - b).abs().max() / max(float(a.abs().max()), 1e-30)) for a, b in zip(ga, gb))
    if worst > 1e-4:
        raise AssertionError(f"SparseLinear differs from nn.Linear by {worst:.2e} relative")
    return worst


def run_case(name, names, dead, threads, quick) -> dict:
    torch.set_num_threads(threads)
    dense, sparse, m = make_pair(names, dead)
    in_f = (SHAPES.get(names[0]) or QUICK_SHAPES[names[0]])[1]
    out_f = (SHAPES.get(names[-1]) or QUICK_SHAPES[names[-1]])[2]
    gen = torch.Generator().manual_seed(1)
    x, dy = torch.randn(m, in_f, generator=gen), torch.randn(m, out_f, generator=gen)
    error = same_values(dense, sparse, x, dy)
    live = [int(layer.occupancy.sum()) for layer in sparse.modules() if isinstance(layer, sparse_rda.SparseLinear)]
    tiles = [layer.occupancy.numel() for layer in sparse.modules() if isinstance(layer, sparse_rda.SparseLinear)]
    t_dense, t_sparse = timings(dense, x, dy, quick), timings(sparse, x, dy, quick)
    for layer in sparse.modules():
        if isinstance(layer, sparse_rda.SparseLinear):
            layer.dw_live_only = True
    t_live = timings(sparse, x, dy, quick)["step"]
    return dict(case=name, threads=threads, m=m, live_tiles=live, tiles=tiles, rel_error=error,
                dense=t_dense, sparse=t_sparse, sparse_step_live_dw=t_live,
                speedup={k: t_dense[k] / t_sparse[k] for k in t_dense}, speedup_step_live_dw=t_dense["step"] / t_live)


def markdown(report: dict) -> str:
    out = common.report_header("SparseLinear on CPU vs nn.Linear, training (sparse_rda.cpu_tiles)",
                               report["machine"])
    out += [f"- command: `{report['command']}`; {report['dead']:.0%} of the 64x64 tiles dead (drawn at random, "
            "at least one live), fp32; times are medians in ms (dense / SparseLinear, speedup)", "",
            "| case | threads | rows | live tiles | fwd | fwd + dX | step (dW dense) | step (dW live only) |",
            "|---|--:|--:|---|--:|--:|--:|--:|"]
    for r in report["rows"]:
        d, s, x = r["dense"], r["sparse"], r["speedup"]
        live = ", ".join(f"{a}/{b}" for a, b in zip(r["live_tiles"], r["tiles"]))
        cells = [f"{d[k]:.3f} / {s[k]:.3f} ({x[k]:.2f}x)" for k in ("fwd", "fwd_dx", "step")]
        cells.append(f"{d['step']:.3f} / {r['sparse_step_live_dw']:.3f} ({r['speedup_step_live_dw']:.2f}x)")
        out.append(f"| {r['case']} | {r['threads']} | {r['m']} | {live} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dead", type=float, default=0.9, help="fraction of dead tiles (default 0.9)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    cases = ({"small": ("small",)} if args.quick else
             {**{name: (name,) for name in SHAPES}, **BLOCKS})
    machine = common.machine_info(torch.device("cpu"))
    rows = []
    for threads in common.csv(args.threads, int):
        for name, names in cases.items():
            row = run_case(name, names, args.dead, threads, args.quick)
            rows.append(row)
            print(f"{name} ({threads} thr): " + ", ".join(f"{k} {row['speedup'][k]:.2f}x" for k in row["speedup"]),
                  flush=True)
    common.note_load_end(machine)
    report = dict(machine=machine, command=common.command_line("sparse_training_cpu.py", argv), dead=args.dead,
                  rows=rows)
    text = markdown(report)
    print(text)
    if not args.no_save:
        common.save_report(args.out, "sparse_training_cpu", torch.device("cpu"), machine,
                           "-quick" if args.quick else "", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
