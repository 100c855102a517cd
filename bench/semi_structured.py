#!/usr/bin/env python
"""2:4 layers vs dense: NMLinear's semi-structured forward (sparse tensor cores) against ``F.linear`` (cuBLAS), the
compression that NMLinear pays once per weight update, and a training step's forward + backward, side by side.

    python bench/semi_structured.py            # GPU (sm_80+): transformer MLP shapes, bf16
    python bench/semi_structured.py --quick    # one shape, short timing
    python bench/semi_structured.py --device cpu --quick   # CPU: NMLinear is dense math there; checks the runner

Shapes (M tokens x K in_features -> N out_features, y = x @ W.T, W [N, K] with exactly 2 nonzeros per 4):
``mlp-up`` 8192 x 4096 -> 11008 and ``mlp-down`` 8192 x 11008 -> 4096 (a Llama-7B MLP), ``square-4096``; on CPU
``cpu-512`` (256 x 512 -> 512, fp32).

Timed (each on its own, one untimed call first):
- fwd dense: ``F.linear(x, W)``; fwd 2:4: ``F.linear(x, W_c)``, ``W_c`` the compressed semi-structured copy.
- compress: ``torch.sparse.to_sparse_semi_structured(W)`` (NMLinear: once per optimizer step, at the first forward).
- step dense / step 2:4: forward + backward (dX and dW, both dense in NMLinear) of ``nn.Linear`` vs ``NMLinear``,
  the 2:4 one recompressing every call (one forward per optimizer step: the worst case).
Every 2:4 product is checked against the dense one on the same weight (bf16 tolerance). Results go to
``bench/results/semi_structured-<device>-<name>[-quick].{json,md}``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import common
from timing import time_adaptive, timer_label, use_triton_timer
from sparse_rda.semi_structured import NMLinear, unsupported_reason

SHAPES = {"mlp-up": (8192, 4096, 11008), "mlp-down": (8192, 11008, 4096), "square-4096": (4096, 4096, 4096)}
CPU_SHAPES = {"cpu-512": (256, 512, 512)}


def two_four(n: int, k: int, device, dtype) -> torch.Tensor:
    w = torch.randn(n, k, device=device)
    keep = torch.rand(n, k, device=device).reshape(-1, 4).argsort(-1) < 2
    return (w * keep.reshape(n, k)).to(dtype)


def bench_shape(name, mkn, device, dtype, quick, use_triton) -> dict:
    m, k, n = mkn
    torch.manual_seed(0)
    w = two_four(n, k, device, dtype)
    x = torch.randn(m, k, device=device, dtype=dtype)
    reason = unsupported_reason(w)

    def timed(fn):
        return time_adaptive(fn, device, quick, use_triton)["ms"]

    row = dict(shape=name, m=m, k=k, n=n, semi_structured=reason is None, reason=reason)
    row["fwd_dense_ms"] = timed(lambda: F.linear(x, w))
    dense_layer = torch.nn.Linear(k, n, bias=False, device=device, dtype=dtype)
    nm_layer = NMLinear(k, n, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        dense_layer.weight.copy_(w)
        nm_layer.weight.copy_(w)
    xg = x.clone().requires_grad_()
    grad = torch.randn(m, n, device=device, dtype=dtype)

    def step(layer, recompress):
        if recompress:
            torch.autograd.graph.increment_version(layer.weight)  # as an optimizer step does
        layer(xg).backward(grad)
        layer.weight.grad = xg.grad = None

    row["step_dense_ms"] = timed(lambda: step(dense_layer, False))
    if reason is None:
        compressed = torch.sparse.to_sparse_semi_structured(w)
        expected, got = F.linear(x, w).float(), F.linear(x, compressed).float()
        row["max_error"] = float((got - expected).abs().max() / expected.abs().max())
        row["correct"] = row["max_error"] < 2e-2
        row["fwd_2_4_ms"] = timed(lambda: F.linear(x, compressed))
        row["compress_ms"] = timed(lambda: torch.sparse.to_sparse_semi_structured(w))
        row["step_2_4_ms"] = timed(lambda: step(nm_layer, True))
        assert nm_layer.kernel == "semi-structured"
    else:  # NMLinear is the dense matmul here
        row["step_2_4_ms"] = timed(lambda: step(nm_layer, True))
    return row


def markdown(report: dict) -> str:
    lines = common.report_header("2:4 semi-structured linear vs dense", report["machine"])
    c = report["config"]
    lines += [f"- command: `{c['command']}`; dtype {c['dtype']}; timer {c['timer']}", ""]
    lines += ["| shape | M x K -> N | fwd dense ms | fwd 2:4 ms | fwd speedup | compress ms | step dense ms | "
              "step 2:4 ms (recompressed) | step speedup | error |", "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in report["shapes"]:
        fwd = r.get("fwd_2_4_ms")
        lines.append(f"| {r['shape']} | {r['m']} x {r['k']} -> {r['n']} | {r['fwd_dense_ms']:.3f} | "
                     f"{common.fmt(fwd, '.3f')} | {common.fmt(fwd and r['fwd_dense_ms'] / fwd, '.2f', 'x')} | "
                     f"{common.fmt(r.get('compress_ms'), '.3f')} | {r['step_dense_ms']:.3f} | {r['step_2_4_ms']:.3f} | "
                     f"{r['step_dense_ms'] / r['step_2_4_ms']:.2f}x | "
                     f"{'%.1e' % r['max_error'] if 'max_error' in r else 'dense path: ' + str(r['reason'])} |")
    lines += ["", "fwd 2:4 excludes the compression; a training step pays it once per optimizer step (the step "
              "column includes it)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = common.parser(__doc__)
    ap.add_argument("--shapes", help="comma-separated names (default: all GPU shapes on CUDA, cpu-512 on CPU)")
    ap.add_argument("--quick", action="store_true", help="one shape, short timing")
    common.add_runner_args(ap)
    args = ap.parse_args(argv)
    device = common.runner_device(args)
    table = SHAPES if device.type == "cuda" else CPU_SHAPES
    names = common.csv(args.shapes) if args.shapes else (list(table)[:1] if args.quick else list(table))
    unknown = [x for x in names if x not in table]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown[0]!r}; use {', '.join(table)}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    use_triton = use_triton_timer(args, device)
    machine = common.machine_info(device)
    report = dict(machine=machine, shapes=[],
                  config=dict(command=common.command_line("semi_structured.py", argv), dtype=common.dtype_name(dtype),
                              quick=args.quick, timer=timer_label(device, use_triton)))
    start = time.perf_counter()
    for name in names:
        report["shapes"].append(bench_shape(name, table[name], device, dtype, args.quick, use_triton))
        print(report["shapes"][-1])
    report["seconds"] = round(time.perf_counter() - start, 1)
    common.note_load_end(machine)
    text = markdown(report)
    print(text)
    if not args.no_save:
        common.save_report(args.out, "semi_structured", device, machine, "-quick" if args.quick else "", report, text)
    return report


if __name__ == "__main__":
    main()
