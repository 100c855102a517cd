#!/usr/bin/env python
"""Masked-matmul benchmark: the block-sparse ``masked_linear`` vs dense ``F.linear`` (cuBLAS) vs torch's own sparse
layouts (BSR, CSR), forward and backward, at 0/50/75/90/95/99% dead 64 x 64 tiles, all measured side by side.

    python bench/masked_matmul.py                              # GPU: every shape and sparsity, bf16
    python bench/masked_matmul.py --shapes square-4096,mlp-up  # a subset (names below, or MxKxN)
    python bench/masked_matmul.py --quick                      # smoke run: one shape, four sparsities
    TRITON_INTERPRET=1 python bench/masked_matmul.py --quick   # CPU: the Triton kernels in the interpreter

Shapes (M tokens x K in_features -> N out_features; weight W is [N, K], y = x @ W.T):

- ``square-4096``: M = N = K = 4096;  ``square-8192``: M = N = K = 8192
- ``mlp-up``: 8192 tokens, 4096 -> 16384;  ``mlp-down``: 8192 tokens, 16384 -> 4096 (a d=4096 transformer MLP)
- on CPU: ``cpu-square-512``, ``cpu-mlp-up`` (256 tokens, 256 -> 1024), ``cpu-mlp-down`` (1024 -> 256), fp32.
  CPU numbers are NOT the benchmark: without a GPU ``masked_linear`` is the dense ``F.linear`` fallback (or the
  Triton interpreter under TRITON_INTERPRET=1, which is orders of magnitude slower); the CPU run only shows that
  the runner works end to end.

Per shape: a random weight (the dense layer: cuBLAS timed once), then per sparsity a random tile mask with exactly
round(s * tiles) dead tiles and the weight zeroed there. Timed (each on its own):

- fwd: ``y = x @ W.T``. masked: ``masked_linear`` (no grad); dense: ``F.linear``; BSR/CSR: the first of
  ``F.linear(x, S)``, ``torch.sparse.mm(S, x.T).T``, torch's Triton ``bsr_dense_mm`` that runs and is correct
  (the transposed variants return a transposed view: no copy is charged to them).
- dX: ``dY @ W``. masked and dense through autograd (``autograd.grad(y, x)``: the masked kernel over the live
  tiles, incl. building its tile lists); BSR/CSR as a product with the transposed weight in that layout.
- bwd: dX and the dense dW = dY.T @ X (what RDA needs to regrow tiles) through autograd: masked vs dense.
- dW live-only: ``masked_linear(..., dw_live_only=True)``'s gradient (only live tiles computed) vs dense dW.

Target (docs/DESIGN.md): masked fwd and dX time <= 1.25 x (1 - sparsity) x dense for sparsity <= 90%, and faster
than torch BSR (at every sparsity where BSR runs); the table marks each "met" or "missed". dW live-only is held to
the same time budget (no BSR comparison). bwd (with the dense dW) has no target: its dW cannot shrink.

Every product is checked against the dense product on the same (masked) weight; a wrong result is reported
instead of its time. Timing: on CUDA ``triton.testing.do_bench`` (median, L2 cleared between calls; CUDA events
with 3 reps for calls slower than 100 ms), on CPU ``time.perf_counter`` (median). Results go to
``bench/results/masked_matmul-<device>-<cpu-or-gpu-name>[-<shapes>][-<dtype>][-interp][-quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

import common
from masked_matmul_report import markdown_report, markdown_tables, summary
from masked_matmul_shape import BLOCK, TARGET_FACTOR, TARGET_MAX_SPARSITY, bench_shape
from masked_operands import masked_impl
from timing import free, timer_label, use_triton_timer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99)

# name: (M tokens, K in_features, N out_features)
SHAPES = {
    "square-4096": (4096, 4096, 4096),
    "square-8192": (8192, 8192, 8192),
    "mlp-up": (8192, 4096, 16384),
    "mlp-down": (8192, 16384, 4096),
}
CPU_SHAPES = {
    "cpu-square-512": (512, 512, 512),
    "cpu-mlp-up": (256, 256, 1024),
    "cpu-mlp-down": (256, 1024, 256),
}
QUICK = dict(cuda=(["square-4096"], (0.0, 0.5, 0.9, 0.99)), cpu=(["cpu-square-512"], (0.0, 0.5, 0.9, 0.99)))


def parse_shape(text: str, device: torch.device) -> tuple[str, tuple[int, int, int]]:
    if text in SHAPES:
        return text, SHAPES[text]
    if text in CPU_SHAPES:
        return text, CPU_SHAPES[text]
    parts = text.lower().split("x")
    if len(parts) == 3 and all(p.isdigit() and int(p) > 0 for p in parts):
        m, k, n = (int(p) for p in parts)
        return text.lower(), (m, k, n)
    raise SystemExit(f"--shapes: unknown shape {text!r}; use one of {', '.join([*SHAPES, *CPU_SHAPES])} or MxKxN "
                     "(tokens x in_features x out_features)")


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--shapes", help="comma-separated names or MxKxN (default: all GPU shapes on CUDA, the tiny "
                    "CPU shapes on CPU)")
    ap.add_argument("--sparsities", help="comma-separated percentages of dead tiles (default 0,50,75,90,95,99)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--methods", default="masked,bsr,csr", help="comma-separated from masked, bsr, csr (dense "
                    "always runs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: one shape, four sparsities, short timing")
    ap.add_argument("--seed", type=int, default=0)
    common.add_runner_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.runner_device(args)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    quick_shapes, quick_sparsities = QUICK[device.type]
    default_shapes = list(SHAPES) if device.type == "cuda" else list(CPU_SHAPES)
    shape_names = common.csv(args.shapes) if args.shapes else (quick_shapes if args.quick else default_shapes)
    shapes = [parse_shape(x, device) for x in shape_names]
    if args.sparsities:
        sparsities = [x / 100 for x in common.csv(args.sparsities, float)]
        if not all(0 <= s <= 1 for s in sparsities):
            sys.exit("--sparsities: percentages in [0, 100]")
    else:
        sparsities = list(quick_sparsities if args.quick else SPARSITIES)
    methods = common.csv(args.methods)
    for x in methods:
        if x not in ("masked", "bsr", "csr"):
            sys.exit(f"--methods: unknown {x!r}")
    use_triton = use_triton_timer(args, device)
    impl = masked_impl(device, dtype)

    machine = common.machine_info(device)
    if device.type == "cpu":
        print("NOTE: CPU run. These numbers are NOT the benchmark: masked_linear here is "
              f"{impl}. The benchmark is bf16 on a GPU (H200): python bench/masked_matmul.py --device cuda",
              file=sys.stderr)
        load = machine.get("load_average")
        if load and load[0] > 0.5 * machine["usable_cpus"]:
            print(f"warning: load average {load[0]} on {machine['usable_cpus']} CPUs: timings are inflated",
                  file=sys.stderr)
    print(f"{machine.get('gpu') or machine['cpu']}: torch {machine['torch']}, triton {machine['triton']}; "
          f"{common.dtype_name(dtype)}, masked_linear: {impl}")
    report = dict(
        machine=machine,
        config=dict(command=common.command_line("masked_matmul.py", argv), dtype=common.dtype_name(dtype),
                    block=list(BLOCK), quick=args.quick, sparsities=sparsities, methods=["dense", *methods],
                    masked_impl=impl, seed=args.seed,
                    timer=timer_label(device, use_triton, "triton.testing.do_bench (median; CUDA events for calls > "
                                                          "100 ms)"),
                    target=f"masked fwd/dX time <= {TARGET_FACTOR} x (1 - s) x dense for s <= "
                           f"{TARGET_MAX_SPARSITY:.0%}; faster than torch BSR"),
        shapes=[],
        skipped_shapes=[],
    )
    t_start = time.perf_counter()
    for name, mkn in shapes:
        try:
            result = bench_shape(name, mkn, sparsities, device, dtype, methods, args.quick, use_triton, args.seed)
        except Exception as e:  # e.g. out of memory: the other shapes still run
            traceback.print_exc()
            report["skipped_shapes"].append(dict(name=name, reason=f"{type(e).__name__}: {e}"))
            free(device)
            continue
        report["shapes"].append(result)
        print()
        print(markdown_tables(result))
    report["summary"] = summary(report)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    common.note_load_end(machine)
    print(f"\nsummary: {report['summary']} ({report['seconds']} s)")
    if device.type == "cpu":
        print("(CPU run: not the benchmark; see above)")
    if not args.no_save:
        suffix = "-" + "-".join(common.slug(x) for x in shape_names) if args.shapes else ""
        suffix += "" if dtype == (torch.bfloat16 if device.type == "cuda" else torch.float32) else f"-{args.dtype}"
        suffix += "-interp" if impl.startswith("triton interpreter") else ""
        suffix += "-quick" if args.quick else ""
        common.save_report(args.out, "masked_matmul", device, machine, suffix, report, markdown_report(report))
    return report


if __name__ == "__main__":
    main()
