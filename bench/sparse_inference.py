#!/usr/bin/env python
"""Sparse inference on CPU, side by side: one linear layer's forward (batch 1, 16 and 128) with its weight dense
(F.linear), as torch CSR, as torch BSR, and in this project's formats (CSRLinear's native kernel; SparseLinear's
live tiles for tile-sparse weights), at element and 64x64-tile sparsities; and the crossover sparsity above which
the CSR kernel beats dense, which ``sparse_rda.inference.CPU_CSR_CROSSOVER`` is set from.

    python bench/sparse_inference.py            # LLM MLP shapes, fp32 and bf16 (~12 min on 2 cores)
    python bench/sparse_inference.py --quick    # smoke run: small shapes, few reps
    python bench/sparse_inference.py --repick bench/results/sparse_inference-cpu-amd-epyc.json
                                                # relabel to_inference's picks after a rule change

Shapes (in -> out): 4096 -> 11008 and 11008 -> 4096 (a 7B LLM's MLP). Weights: normal values with a fraction of
the elements zero at random (element), or a fraction of the 64x64 tiles zero at random, the rest dense (tile).
Formats and what each call streams:
- dense: F.linear on the weight with its zeros (4 B fp32 / 2 B bf16 per weight);
- torch CSR / BSR: ``W.to_sparse_csr()`` / ``to_sparse_bsr`` (blocks 64x64 for tile sparsity, 4x4 for element
  sparsity) times x^T (MKL); CPU torch has no 16-bit sparse matmul, so for bf16 these run on fp32 copies
  (values and x upcast: what a user can do); int64 indices;
- ours CSR: ``CSRLinear`` (sparse_rda.csr: int16 column indices, values in the weight's dtype: 6 B / 4 B per
  nonzero);
- ours tiles: ``SparseLinear`` under no_grad (sparse_rda.cpu_tiles: a GEMM per live tile, fp32 tiles);
- to_inference: the format ``sparse_rda.to_inference(model, batch_size)`` picks for that weight, batch and dtype
  (its time is that format's row, not a separate run).
Cold caches: each format's call cycles through enough copies of its data (at least 128 MiB, 4x this CPU's L3) that
no call finds its weight in cache, as in a model whose layers do not fit in cache. Every format's output is
checked against dense (fp32 1e-4, bf16 2e-2 relative). Timing: time.perf_counter, median.
Results: bench/results/sparse_inference-cpu-<cpu>[-quick].{json,md}.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import common
import sparse_rda
from sparse_rda import inference
from timing import free, time_adaptive

SHAPES = {"4096->11008": (4096, 11008), "11008->4096": (11008, 4096)}
QUICK_SHAPES = {"512->1024": (512, 1024), "1024->512": (1024, 512)}
ELEMENT = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
QUICK_ELEMENT = (0.5, 0.95)
TILE = (0.9, 0.95)
BATCHES = (1, 16, 128)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
COLD_BYTES = 128 << 20
MAX_COPIES = 64


def sparse_weight(in_f: int, out_f: int, kind: str, zeros: float, gen: torch.Generator) -> torch.Tensor:
    """fp32 [out, in]: normal values with ``zeros`` of the elements (or of the 64x64 tiles) set to zero."""
    w = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)
    if kind == "element":
        keep = torch.rand(out_f, in_f, generator=gen) >= zeros
    else:
        rt, kt = -(-out_f // 64), -(-in_f // 64)
        live = torch.zeros(rt * kt, dtype=torch.bool)
        live[torch.randperm(rt * kt, generator=gen)[:max(1, round((1 - zeros) * rt * kt))]] = True
        keep = live.view(rt, kt).repeat_interleave(64, 0).repeat_interleave(64, 1)[:out_f, :in_f]
    return w.mul_(keep)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def torch_sparse(w: torch.Tensor, layout: str, blocksize):
    """(call(x), bytes): torch CSR or BSR of W (fp32: CPU torch has no 16-bit sparse matmul) times x^T."""
    with warnings.catch_warnings():  # "sparse CSR/BSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        s = w.float().to_sparse_csr() if layout == "csr" else w.float().to_sparse_bsr(blocksize)
    size = nbytes(s.crow_indices(), s.col_indices(), s.values())

    def call(x, b):
        return ((s @ x.float().t()).t() + b.float()).to(x.dtype)

    return call, size


def formats(w: torch.Tensor, b: torch.Tensor, kind: str) -> dict:
    """{format: (make() -> (call(x), bytes one call streams))} for this weight (in its dtype)."""
    def dense():
        wc = w.clone()
        return (lambda x: F.linear(x, wc, b)), nbytes(wc)

    def ours_csr():
        layer = inference.CSRLinear(w, b)
        return layer, nbytes(layer.crow, layer.col, layer.values)

    def ours_tiles():
        linear = nn.Linear(w.shape[1], w.shape[0], device="meta")
        linear.weight, linear.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        layer = sparse_rda.SparseLinear.from_linear(linear).eval()
        with torch.no_grad():
            layer(torch.zeros(1, w.shape[1], dtype=w.dtype))  # packs the live tiles
        return layer, int(layer.occupancy.sum()) * 64 * 64 * max(w.element_size(), 4)

    def torch_fmt(layout, blocksize=None):
        def make():
            call, size = torch_sparse(w, layout, blocksize)
            return (lambda x: call(x, b)), size
        return make

    out = {"dense": dense, "torch CSR": torch_fmt("csr"),
           "torch BSR": torch_fmt("bsr", (64, 64) if kind == "tile" else (4, 4)), "ours CSR": ours_csr}
    if kind == "tile":
        out["ours tiles"] = ours_tiles
    return out


def cold(make, cold_bytes: int):
    """One call per copy in turn, enough copies that together they hold ``cold_bytes`` (more than the caches)."""
    first, size = make()
    calls = [first] + [make()[0] for _ in range(min(MAX_COPIES, math.ceil(cold_bytes / max(size, 1))) - 1)]
    turn = itertools.cycle(calls)
    return (lambda x: next(turn)(x)), first, size, len(calls)


def run_weight(shape, dtype, kind, zeros, batches, quick, gen) -> list[dict]:
    in_f, out_f = shape
    w32 = sparse_weight(in_f, out_f, kind, zeros, gen)
    w = w32.to(dtype)
    b = (torch.randn(out_f, generator=gen) / 10).to(dtype)
    real_zeros = float((w == 0).float().mean())
    dead_tiles = float((~sparse_rda.nn.tile_occupancy(w)).float().mean())
    rows = []
    xs = {m: torch.randn(m, in_f, generator=gen).to(dtype) for m in batches}
    with torch.no_grad():
        want = {m: F.linear(xs[m].float(), w.float(), b.float()) for m in batches}
        picks = {m: inference.choose_format(w, m) for m in batches}
        for name, make in formats(w, b, kind).items():
            call, first, size, copies = cold(make, 0 if quick else COLD_BYTES)  # quick: warm, one copy
            for m in batches:
                got = first(xs[m]).float()
                err = float((got - want[m]).abs().max() / want[m].abs().max())
                if err > TOLERANCE[dtype]:
                    raise AssertionError(f"{name} {shape} {dtype} {kind} {zeros}: relative error {err:.2e}")
                t = time_adaptive(lambda: call(xs[m]), torch.device("cpu"), quick,
                                  cpu_reps=(2, 5) if quick else (3, 15) if m <= 16 else (1, 7))
                rows.append(dict(shape=f"{in_f}->{out_f}", dtype=common.dtype_name(dtype), kind=kind, zeros=zeros,
                                 real_zeros=real_zeros, dead_tiles=dead_tiles, batch=m, format=name, ms=t["ms"],
                                 ms_q20=t["ms_q20"], ms_q80=t["ms_q80"], bytes=size, copies=copies, rel_error=err,
                                 auto=picks[m][0]))
            del call, first
            free(torch.device("cpu"))
    return rows


AUTO_FORMAT = {"dense": "dense", "csr": "ours CSR", "tiles": "ours tiles"}


def speedups(rows: list[dict]) -> list[dict]:
    """Each row's speedup over dense of the same weight and batch; and to_inference's pick as its own row."""
    dense = {(r["shape"], r["dtype"], r["kind"], r["zeros"], r["batch"]): r["ms"] for r in rows if r["format"] == "dense"}
    out = []
    for r in rows:
        key = (r["shape"], r["dtype"], r["kind"], r["zeros"], r["batch"])
        out.append(dict(r, speedup=dense[key] / r["ms"]))
    for r in [r for r in out if r["format"] == AUTO_FORMAT.get(r["auto"])]:
        out.append(dict(r, format="to_inference", picked=r["auto"]))
    return out


def crossovers(rows: list[dict]) -> dict:
    """{dtype: {batch: lowest element sparsity at which ours CSR is at least dense's speed there and at every
    higher sparsity measured, on every shape}} (None: never)."""
    out: dict = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        for m in sorted({r["batch"] for r in rows}):
            per_shape = []
            for shape in sorted({r["shape"] for r in rows}):
                mine = sorted((r["zeros"], r["speedup"]) for r in rows if r["format"] == "ours CSR" and
                              r["kind"] == "element" and r["dtype"] == dtype and r["batch"] == m and r["shape"] == shape)
                at = None
                for z, s in reversed(mine):  # from the sparsest down, while CSR still wins
                    if s < 1.0:
                        break
                    at = z
                per_shape.append(at)
            out.setdefault(dtype, {})[m] = None if None in per_shape else max(per_shape)
    return out


def cell(name: str, r: dict | None) -> str:
    """A table cell: ms, speedup and the format's MB (to_inference's row repeats a format's: no MB)."""
    if r is None:
        return "—"
    unit = " ms" if name == "dense" else ""
    size = "" if name == "to_inference" else f", {r['bytes'] / 1e6:.1f} MB"
    return f"{r['ms']:.3f}{unit} ({r['speedup']:.2f}x{size})"


def markdown(report: dict) -> str:
    rows = report["rows"]
    out = common.report_header("Sparse inference on CPU: one linear layer's forward, side by side", report["machine"])
    out += [f"- command: `{report['command']}`; threads {report['threads']}; cold caches (each format cycles "
            f"through >= {COLD_BYTES >> 20} MiB of copies); ms: median forward; speedup over dense F.linear of the "
            "same weight; MB: the bytes of the weight as that format stores it (torch CSR/BSR: fp32 values, int64 "
            "indices)", ""]
    out += [f"- to_inference's picks: `CPU_CSR_CROSSOVER` {report['in_use']}, `CPU_CSR_SMALL_DENSE` "
            f"{report.get('small_dense', {})}" + (f" (relabeled {report['repicked']} from these timings with "
                                                  "`--repick`: a pick names one of the measured rows)"
                                                  if report.get("repicked") else ""), ""]
    names = list(dict.fromkeys(r["format"] for r in rows))
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        for m in dict.fromkeys(r["batch"] for r in rows):
            out += [f"## {dtype}, batch {m}", "", "| shape | zeros | " + " | ".join(names) + " | to_inference picks |",
                    "|---|---|" + "--:|" * len(names) + "---|"]
            for shape in dict.fromkeys(r["shape"] for r in rows):
                for kind, zeros in dict.fromkeys((r["kind"], r["zeros"]) for r in rows):
                    here = {r["format"]: r for r in rows if (r["dtype"], r["batch"], r["shape"], r["kind"],
                                                              r["zeros"]) == (dtype, m, shape, kind, zeros)}
                    if not here:
                        continue
                    label = f"{zeros:.0%} {'elements' if kind == 'element' else '64x64 tiles'}"
                    cells = [cell(n, here.get(n)) for n in names]
                    pick = here["dense"]["auto"]
                    out.append(f"| {shape} | {label} | " + " | ".join(cells) + f" | {pick} |")
            out.append("")
    out += ["## Crossover: the lowest element sparsity measured at which ours CSR is at least dense's speed there "
            "and above, on every shape", "", "| dtype | batch | crossover |", "|---|--:|--:|"]
    for dtype, by_batch in report["crossovers"].items():
        for m, z in by_batch.items():
            out.append(f"| {dtype} | {m} | {'never' if z is None else f'{z:.0%}'} |")
    return "\n".join(out) + "\n"


def rules_in_use() -> dict:
    return dict(in_use={d: [list(p) for p in inference.CPU_CSR_CROSSOVER.get(t, ())] for d, t in DTYPES.items()},
                small_dense={d: inference.CPU_CSR_SMALL_DENSE[t] for d, t in DTYPES.items()})


def repick(path: Path) -> int:
    """Rewrite a saved report's to_inference picks (and its .md) with the rules in use now: a pick names one of
    the measured formats of that weight and batch, so no timing changes."""
    report = json.loads(path.read_text())
    rows = [r for r in report["rows"] if r["format"] != "to_inference"]
    for r in rows:
        n_in, n_out = map(int, r["shape"].split("->"))
        r["auto"] = inference.cpu_format(r["real_zeros"], getattr(torch, r["dtype"]), r["batch"], n_in * n_out)[0]
    report.update(rows=speedups(rows), crossovers=crossovers(rows), repicked=time.strftime("%Y-%m-%d"),
                  **rules_in_use())
    common.write_json(path, report)
    path.with_suffix(".md").write_text(markdown(report))
    print(f"rewrote {path} and its .md")
    return 0


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repick", metavar="JSON", type=Path,
                    help="only rewrite a saved report's to_inference picks with the rules in use now")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated from fp32, bf16")
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.repick:
        return repick(args.repick)
    if any(d not in DTYPES for d in common.csv(args.dtypes)):
        sys.exit(f"--dtypes: choose from {', '.join(DTYPES)}")
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    patterns = [("element", z) for z in (QUICK_ELEMENT if args.quick else ELEMENT)] + \
               [("tile", z) for z in (TILE[:1] if args.quick else TILE)]
    machine = common.machine_info(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dname in common.csv(args.dtypes):
        for shape in shapes.values():
            for kind, zeros in patterns:
                new = run_weight(shape, DTYPES[dname], kind, zeros, BATCHES, args.quick, gen)
                rows += new
                dense = {r["batch"]: r["ms"] for r in new if r["format"] == "dense"}
                print(f"{dname} {shape[0]}->{shape[1]} {zeros:.0%} {kind}: " + "; ".join(
                    f"b{r['batch']} {r['format']} {dense[r['batch']] / r['ms']:.2f}x" for r in new
                    if r["format"] != "dense"), flush=True)
    common.note_load_end(machine)
    rows = speedups(rows)
    report = dict(machine=machine, command=common.command_line("sparse_inference.py", argv), threads=args.threads,
                  rows=rows, crossovers=crossovers(rows), **rules_in_use())
    text = markdown(report)
    print(text)
    if not args.no_save:
        common.save_report(args.out, "sparse_inference", torch.device("cpu"), machine, "-quick" if args.quick else "",
                           report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
