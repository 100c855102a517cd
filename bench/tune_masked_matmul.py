#!/usr/bin/env python
"""Sweep of the masked matmul's free launch parameters (BLOCK_M, num_warps, num_stages; kernels/masked_matmul.py
``HOPPER_CONFIGS``) for each (tile side, element size): the measurement behind those defaults.

    python bench/tune_masked_matmul.py                       # GPU: bf16 and fp32, 32/64/128 tiles, 4096^3, 90% dead
    python bench/tune_masked_matmul.py --sides 64 --dtypes bf16 --sparsity 50 --shape 8192x4096x16384
    TRITON_INTERPRET=1 python bench/tune_masked_matmul.py --device cpu --quick  # checks the sweep runs (no timing)

The sparsity tile is the kernel's W tile (kernels/masked_matmul.py), so the tile side is not a free parameter of the
matmul: it is what the optimizer prunes. What is free per tile side: the rows per program (BLOCK_M) and the pipeline
(num_warps, num_stages). For each candidate the forward and dX products (the kernel computes both) are checked
against the dense product, then timed; candidates that do not compile or do not fit in shared memory are listed
as skipped. The best by fwd + dX time is printed as a ``HOPPER_CONFIGS`` entry. Results:
``bench/results/tune_masked_matmul-<device>-<gpu or cpu>[-quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
import torch.nn.functional as F

import common
from masked_operands import TOLERANCE, masked_impl, random_occupancy, rel_err
from timing import free, time_adaptive, timer_label, use_triton_timer

try:
    from sparse_rda.kernels import masked_matmul as mm
except ImportError as err:  # the sweep tunes the Triton kernels' launch parameters: nothing to do without them
    sys.exit(f"tune_masked_matmul.py tunes the Triton kernels, which need triton ({err}): pip install triton")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CANDIDATES = list(itertools.product((32, 64, 128, 256), (4, 8), (2, 3, 4, 5)))  # BLOCK_M, num_warps, num_stages
QUICK_CANDIDATES = [(16, 4, 2), (32, 4, 2)]


def config_key(side: int, dtype: torch.dtype) -> tuple[int, int]:
    return min(side, 128), 2 if dtype.itemsize == 2 else 4


def sweep(side: int, dtype: torch.dtype, mkn: tuple[int, int, int], sparsity: float, device: torch.device,
          candidates, quick: bool, use_triton: bool) -> dict:
    """Every candidate config for one (tile side, dtype): checked, then timed; the best by fwd + dX."""
    m, k, n = mkn
    block = (side, side)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(m, n, generator=gen).to(device=device, dtype=dtype)
    occ = random_occupancy(n, k, block, sparsity, gen).to(device)
    w = (torch.randn(n, k, generator=gen).to(device=device, dtype=dtype) * k**-0.5
         * mm.expand_occupancy(occ, block, (n, k))).contiguous()
    with torch.no_grad():
        want_y, want_dx = F.linear(x, w), dy @ w
    xr = x.detach().requires_grad_()
    tol = TOLERANCE[dtype]
    key = config_key(side, dtype)
    default = mm.HOPPER_CONFIGS[key]
    rows, skipped = [], []
    try:
        for cfg in candidates:
            mm.HOPPER_CONFIGS[key] = cfg
            try:
                fwd = lambda: mm.masked_linear(x, w, None, occ, block)  # noqa: E731
                y = mm.masked_linear(xr, w, None, occ, block)
                dx = lambda: torch.autograd.grad(y, xr, dy, retain_graph=True)[0]  # noqa: E731
                with torch.no_grad():
                    errors = (rel_err(fwd(), want_y), rel_err(dx(), want_dx))
                if not max(errors) <= tol:
                    skipped.append(dict(config=cfg, reason=f"wrong result: rel err {max(errors):.2e} > {tol:.0e}"))
                    continue
                with torch.no_grad():
                    t_fwd = time_adaptive(fwd, device, quick, use_triton)["ms"]
                t_dx = time_adaptive(dx, device, quick, use_triton)["ms"]
                rows.append(dict(config=cfg, fwd_ms=t_fwd, dx_ms=t_dx, rel_err=max(errors)))
                print(f"  tile {side} {common.dtype_name(dtype):>8} BLOCK_M={cfg[0]:<3} warps={cfg[1]} "
                      f"stages={cfg[2]}: fwd {t_fwd:8.3f} ms  dX {t_dx:8.3f} ms")
            except Exception as e:  # out of shared memory, a compile error: the next candidate
                skipped.append(dict(config=cfg, reason=common.error_text(e, 160)))
            free(device)
    finally:
        mm.HOPPER_CONFIGS[key] = default
    best = min(rows, key=lambda r: r["fwd_ms"] + r["dx_ms"]) if rows else None
    current = next((r for r in rows if tuple(r["config"]) == tuple(default)), None)
    return dict(side=side, dtype=common.dtype_name(dtype), key=list(key), default=list(default),
                rows=rows, skipped=skipped, best=best, default_row=current)


def markdown_report(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = common.report_header("Masked matmul launch-parameter sweep", m) + [
        f"- command: `{cfg['command']}`",
        f"- M x K x N = {cfg['shape']}, {cfg['sparsity']:.0%} of the tiles dead; masked_linear: {cfg['masked_impl']}",
        f"- timing: {cfg['timer']}; ms is the median; best = least fwd + dX",
        "",
    ]
    if m["device"] != "cuda":
        out += ["**CPU run: the interpreter. These times say nothing about a GPU; this run only checks the "
                "sweep.**", ""]
    out += ["| tile | dtype | default (BLOCK_M, warps, stages) | default fwd + dX ms | best | best fwd + dX ms | "
            "candidates timed / skipped |", "|--:|---|---|--:|---|--:|--:|"]
    for s in report["sweeps"]:
        d, b = s["default_row"], s["best"]
        fmt = lambda r: "—" if r is None else f"{r['fwd_ms'] + r['dx_ms']:.3f}"  # noqa: E731
        out.append(f"| {s['side']} | {s['dtype']} | {tuple(s['default'])} | {fmt(d)} | "
                   f"{tuple(b['config']) if b else '—'} | {fmt(b)} | {len(s['rows'])} / {len(s['skipped'])} |")
    best = {tuple(s["key"]): tuple(s["best"]["config"]) for s in report["sweeps"] if s["best"]}
    out += ["", "As `HOPPER_CONFIGS` entries (paste after a GPU run):", "", "```python",
            *(f"    {k}: {v}," for k, v in sorted(best.items())), "```"]
    return "\n".join(out) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--sides", type=int, nargs="+", help="tile sides (default 32 64 128; quick: 16)")
    ap.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), help="default bf16 fp32 on CUDA, fp32 on CPU")
    ap.add_argument("--shape", help="MxKxN (default 4096x4096x4096 on CUDA, 64x64x64 on CPU)")
    ap.add_argument("--sparsity", type=float, default=90.0, help="percent of dead tiles (default 90)")
    ap.add_argument("--quick", action="store_true", help="two candidates only")
    ap.add_argument("--candidates", nargs="+", metavar="BLOCK_M,WARPS,STAGES",
                    help="the configs to time (default: all, or two with --quick), e.g. 64,4,3 128,4,5")
    common.add_runner_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.runner_device(args)
    on_gpu = device.type == "cuda"
    sides = args.sides or ([64] if args.quick and on_gpu else [16] if not on_gpu else [32, 64, 128])
    dtypes = [DTYPES[d] for d in (args.dtypes or (["bf16", "fp32"] if on_gpu else ["fp32"]))]
    shape = args.shape or ("4096x4096x4096" if on_gpu else "64x64x64")
    mkn = tuple(int(v) for v in shape.lower().split("x"))
    if len(mkn) != 3 or min(mkn) < 1:
        sys.exit(f"--shape {shape}: expected MxKxN")
    if not on_gpu and not mm.INTERPRETED:
        sys.exit("no GPU: run with TRITON_INTERPRET=1 to check the sweep in the interpreter")
    candidates = ([tuple(int(v) for v in c.split(",")) for c in args.candidates] if args.candidates else
                  QUICK_CANDIDATES if args.quick else CANDIDATES)
    if any(len(c) != 3 for c in candidates):
        sys.exit(f"--candidates {' '.join(args.candidates)}: expected BLOCK_M,WARPS,STAGES triples")
    use_triton = use_triton_timer(args, device)
    machine = common.machine_info(device)
    report = dict(machine=machine, config=dict(
        command=common.command_line("tune_masked_matmul.py", argv), shape=shape, sparsity=args.sparsity / 100,
        masked_impl=masked_impl(device, dtypes[0]), candidates=[list(c) for c in candidates],
        timer=timer_label(device, use_triton, cpu="time.perf_counter")))
    t0 = time.perf_counter()
    report["sweeps"] = [sweep(side, dtype, mkn, args.sparsity / 100, device, candidates, args.quick, use_triton)
                        for side in sides for dtype in dtypes]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    markdown = markdown_report(report)
    print("\n" + markdown)
    if not args.no_save:
        suffix = "-quick" if args.quick else ""
        common.save_report(args.out, "tune_masked_matmul", device, machine, suffix, report, markdown)
    return report


if __name__ == "__main__":
    main()
