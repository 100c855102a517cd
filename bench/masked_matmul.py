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
import gc
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import common
import timing

import sparse_rda.nn as snn  # (what SparseLinear runs: the Triton kernels, or the dense math)

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BLOCK = (64, 64)
SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99)
TARGET_FACTOR = 1.25  # time <= 1.25 x (1 - s) x dense ...
TARGET_MAX_SPARSITY = 0.9  # ... for s <= 90%
SLOW_MS = 100.0  # CUDA: calls slower than this get 3 timed reps with CUDA events instead of do_bench

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
# max |got - want| / max |want| allowed: fp32 a few ulps of the sums; 16-bit: the output rounding (~2 ulps)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}

warnings.filterwarnings("ignore", message=".*Sparse (BSR|CSR) tensor support is in beta.*")


# ----------------------------------------------------------------------------------------------------------
# Timing (shared with bench/train_step.py)


def _stats(times_ms: list[float]) -> dict:
    q = statistics.quantiles(times_ms, n=5) if len(times_ms) >= 2 else [times_ms[0]] * 4
    return dict(ms=statistics.median(times_ms), ms_q20=q[0], ms_q80=q[3], reps=len(times_ms))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def do_bench_or_none():
    try:
        from triton.testing import do_bench
    except Exception:  # no triton, or one that cannot talk to this GPU
        return None
    return do_bench


def time_fn(fn, device: torch.device, quick: bool = False, use_triton: bool = True, slow_ms: float = SLOW_MS,
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
        times = timing.cuda_event_times(fn, 1 if est_ms > slow_ms else 3, reps)
        return dict(_stats(times), timer="CUDA events")
    warmup, reps = cpu_reps or ((0, 3) if quick else (1, 7))
    if est_ms > 2000:  # the interpreter on a larger shape: keep the smoke run short
        warmup, reps = 0, min(reps, 2)
    return timing.time_cpu(fn, warmup, reps)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def masked_impl(device: torch.device, dtype: torch.dtype) -> str:
    """What masked_linear runs here (sparse_rda.nn.matmul_kernel; the interpreter takes fp32 only)."""
    kind = snn.matmul_kernel(device)
    if kind == "triton-interpreter" and dtype != torch.float32:
        kind = "dense"
    return {"triton": "triton", "triton-interpreter": "triton interpreter (TRITON_INTERPRET=1)",
            "dense": "dense F.linear fallback (no GPU and no TRITON_INTERPRET, or no triton)"}[kind]


# ----------------------------------------------------------------------------------------------------------
# Operands


def random_occupancy(n: int, k: int, block, dead_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A tile map with exactly round(dead_fraction * tiles) dead tiles at random places (CPU bool)."""
    shape = (math.ceil(n / block[0]), math.ceil(k / block[1]))
    live = torch.ones(shape, dtype=torch.bool)
    live.view(-1)[torch.randperm(live.numel(), generator=gen)[: round(dead_fraction * live.numel())]] = False
    return live


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().float().item() if want.numel() else 0.0
    return (got.float() - want.float()).abs().max().item() / max(scale, 1e-30) if want.numel() else 0.0


def sparse_product(layout: str, mat: torch.Tensor, block):
    """The weight in torch's ``layout`` ('bsr' or 'csr') and the ways to compute ``a @ mat.T`` with it, in order
    of preference: [(label, fn(a))]."""
    with warnings.catch_warnings():  # "Sparse BSR/CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        s = mat.to_sparse_bsr(block) if layout == "bsr" else mat.to_sparse_csr()
    variants = [
        ("F.linear(x, S)", lambda a: F.linear(a, s)),
        ("torch.sparse.mm(S, x.T).T", lambda a: torch.sparse.mm(s, a.t()).t()),
    ]
    if layout == "bsr" and mat.is_cuda:
        try:
            from torch.sparse._triton_ops import bsr_dense_mm

            variants.append(("torch.sparse._triton_ops.bsr_dense_mm(S, x.T).T", lambda a: bsr_dense_mm(s, a.t()).t()))
        except Exception:
            pass
    return s, variants


def pick_variant(variants, a: torch.Tensor, want: torch.Tensor, tol: float):
    """The first variant that runs and matches ``want``: (label, fn, err), or (None, None, reasons)."""
    reasons = []
    for label, fn in variants:
        try:
            with torch.no_grad():
                got = fn(a)
            err = rel_err(got, want)
            del got
        except Exception as e:
            reasons.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        if not err <= tol:
            reasons.append(f"{label}: wrong result (rel err {err:.2e} > {tol:.0e})")
            continue
        return label, fn, err
    return None, None, reasons


# ----------------------------------------------------------------------------------------------------------
# One shape


def flops(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def bench_shape(name: str, mkn: tuple[int, int, int], sparsities, device: torch.device, dtype: torch.dtype,
                methods: list[str], quick: bool, use_triton: bool, seed: int) -> dict:
    m, k, n = mkn
    tol = TOLERANCE[dtype]
    gen = torch.Generator().manual_seed(seed)
    tiles = math.ceil(n / BLOCK[0]) * math.ceil(k / BLOCK[1])
    print(f"\n== {name}: M={m} tokens, K={k} -> N={n}, {tiles} tiles of {BLOCK[0]}x{BLOCK[1]}, "
          f"{str(dtype).replace('torch.', '')}, {device}; masked_linear: {masked_impl(device, dtype)}")

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = randn(m, k)
    dy = randn(m, n)
    w_dense = randn(n, k, scale=k**-0.5)
    timed = lambda fn: time_fn(fn, device, quick, use_triton)  # noqa: E731
    fl = flops(m, k, n)

    def entry(r: dict, live_frac: float = 1.0, err: float | None = None, impl: str | None = None) -> dict:
        r = dict(r, tflops=fl / (r["ms"] * 1e-3) / 1e12, live_tflops=fl * live_frac / (r["ms"] * 1e-3) / 1e12)
        if err is not None:
            r["rel_err"] = err
        if impl:
            r["impl"] = impl
        return r

    # dense layer (cuBLAS): its own dense random weight, once per shape
    dense = {}
    xr = x.detach().requires_grad_()
    wr = w_dense.detach().requires_grad_()
    with torch.no_grad():
        dense["fwd"] = entry(timed(lambda: F.linear(x, w_dense)), impl="F.linear")
    y = F.linear(xr, w_dense)
    dense["dx"] = entry(timed(lambda: torch.autograd.grad(y, xr, dy, retain_graph=True)), impl="autograd: dY @ W")
    y = F.linear(x, wr)
    dense["dw"] = entry(timed(lambda: torch.autograd.grad(y, wr, dy, retain_graph=True)), impl="autograd: dY.T @ X")
    y = F.linear(xr, wr)
    dense["bwd"] = entry(timed(lambda: torch.autograd.grad(y, (xr, wr), dy, retain_graph=True)),
                         impl="autograd: dX + dW")
    del y, xr, wr
    free(device)
    print("  dense (cuBLAS)" if device.type == "cuda" else "  dense (F.linear)",
          "  ".join(f"{op} {dense[op]['ms']:.3f} ms" for op in ("fwd", "dx", "dw", "bwd")))

    rows = []
    for s in sparsities:
        occ_cpu = random_occupancy(n, k, BLOCK, s, gen)
        live_frac = occ_cpu.float().mean().item()
        occ = occ_cpu.to(device)
        mask = snn.expand_occupancy(occ, BLOCK, (n, k))
        w = (w_dense * mask).contiguous()
        wt = w.t().contiguous()
        assert torch.equal(snn.tile_occupancy(w, BLOCK), occ), "a live tile of the random weight is all zero"
        with torch.no_grad():
            want_y = F.linear(x, w)
            want_dx = dy @ w
        row = dict(sparsity=s, live_tiles=int(occ_cpu.sum()), tiles=occ_cpu.numel(), results={}, skipped={})
        res, skipped = row["results"], row["skipped"]

        def record(method: str, op: str, fn, want=None, got=None, impl=None, live=live_frac):
            """Check (when want is given: got() must match it), then time fn."""
            key = f"{method}.{op}"
            try:
                err = None
                if want is not None:
                    err = rel_err(got(), want)
                    if not err <= tol:
                        skipped[key] = f"wrong result: rel err {err:.2e} > {tol:.0e}"
                        print(f"  s={s:.0%} {key}: {skipped[key]}")
                        return
                res[key] = entry(timed(fn), live, err, impl)
            except Exception as e:
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    free(device)
                skipped[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"  s={s:.0%} {key}: {skipped[key]}")

        if "masked" in methods:
            xr = x.detach().requires_grad_()
            wr = w.detach().requires_grad_()
            y = want_dw = None
            try:  # a forward that fails outside record() (building a graph) must not end the shape
                with torch.no_grad():
                    record("masked", "fwd", lambda: snn.masked_linear(x, w, None, occ, BLOCK),
                           want_y, lambda: snn.masked_linear(x, w, None, occ, BLOCK))
                y = snn.masked_linear(xr, w, None, occ, BLOCK)
                record("masked", "dx", lambda: torch.autograd.grad(y, xr, dy, retain_graph=True),
                       want_dx, lambda: torch.autograd.grad(y, xr, dy, retain_graph=True)[0])
                y = snn.masked_linear(xr, wr, None, occ, BLOCK)
                record("masked", "bwd", lambda: torch.autograd.grad(y, (xr, wr), dy, retain_graph=True),
                       impl="dX masked + dW dense")
                y = snn.masked_linear(x, wr, None, occ, BLOCK, dw_live_only=True)
                with torch.no_grad():
                    want_dw = (dy.t() @ x) * mask
                record("masked", "dw_live", lambda: torch.autograd.grad(y, wr, dy, retain_graph=True),
                       want_dw, lambda: torch.autograd.grad(y, wr, dy, retain_graph=True)[0])
            except Exception as e:
                traceback.print_exc()
                for op in ("fwd", "dx", "bwd", "dw_live"):
                    if f"masked.{op}" not in res:
                        skipped.setdefault(f"masked.{op}", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            del y, xr, wr, want_dw
            free(device)

        for layout in ("bsr", "csr"):
            if layout not in methods:
                continue
            for op, mat, a, want in (("fwd", w, x, want_y), ("dx", wt, dy, want_dx)):
                key = f"{layout}.{op}"
                try:
                    blk = BLOCK if op == "fwd" else BLOCK[::-1]
                    _s, variants = sparse_product(layout, mat, blk)
                except Exception as e:
                    reason = str(e).splitlines()[0][:160] if str(e) else ""
                    skipped[key] = f"unsupported: to_sparse_{layout}: {type(e).__name__}: {reason}"
                    print(f"  s={s:.0%} {key}: {skipped[key]}")
                    continue
                label, fn, err = pick_variant(variants, a, want, tol)
                if fn is None:
                    skipped[key] = "unsupported: " + "; ".join(err)
                    print(f"  s={s:.0%} {key}: {skipped[key]}")
                else:
                    def run(fn=fn, a=a):
                        with torch.no_grad():
                            return fn(a)

                    try:
                        res[key] = entry(timed(run), live_frac, err, label)
                    except Exception as e:
                        skipped[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                del _s, variants, fn
                free(device)

        row["targets"] = targets(row, dense)
        if device.type != "cuda":  # computed as on a GPU, but marked: these are not the benchmark's numbers
            for t in row["targets"].values():
                t["status"] += " (CPU)" if t["status"] != "—" else ""
        rows.append(row)
        print("  " + row_line(row, dense))
        del w, wt, mask, occ, want_y, want_dx
        free(device)
    del x, dy, w_dense
    free(device)
    return dict(name=name, m=m, k=k, n=n, block=list(BLOCK), dtype=str(dtype).replace("torch.", ""),
                dense=dense, rows=rows)


def targets(row: dict, dense: dict) -> dict:
    """Per masked op: the time budget 1.25 x (1 - s) x dense (s <= 90%), BSR's time, and met / missed."""
    s = row["sparsity"]
    out = {}
    for op, dense_op in (("fwd", "fwd"), ("dx", "dx"), ("dw_live", "dw")):
        r = row["results"].get(f"masked.{op}")
        if r is None:
            continue
        budget = TARGET_FACTOR * (1 - s) * dense[dense_op]["ms"] if s <= TARGET_MAX_SPARSITY + 1e-9 else None
        bsr = row["results"].get(f"bsr.{op}") if op != "dw_live" else None
        checks = {}
        if budget is not None:
            checks["time"] = r["ms"] <= budget
        if bsr is not None:
            checks["bsr"] = r["ms"] < bsr["ms"]
        if not checks:
            status = "—"
        elif all(checks.values()):
            status = "met"
        else:
            status = "missed (" + ", ".join({"time": "time", "bsr": "vs BSR"}[c] for c, ok in checks.items()
                                           if not ok) + ")"
        out[op] = dict(budget_ms=budget, vs_dense=r["ms"] / dense[dense_op]["ms"],
                       vs_bsr=(bsr["ms"] / r["ms"]) if bsr else None, status=status, **checks)
    return out


def row_line(row: dict, dense: dict) -> str:
    res = row["results"]

    def ms(key):
        return f"{res[key]['ms']:.3f}" if key in res else "—"

    t = row["targets"]
    return (f"s={row['sparsity']:>4.0%}  fwd masked {ms('masked.fwd')} bsr {ms('bsr.fwd')} csr {ms('csr.fwd')} "
            f"[{t.get('fwd', {}).get('status', '—')}]  dX masked {ms('masked.dx')} bsr {ms('bsr.dx')} "
            f"csr {ms('csr.dx')} [{t.get('dx', {}).get('status', '—')}]  bwd {ms('masked.bwd')}  "
            f"dW-live {ms('masked.dw_live')}")


# ----------------------------------------------------------------------------------------------------------
# Output


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def markdown_tables(shape: dict) -> str:
    dense = shape["dense"]
    lines = [
        f"dense (cuBLAS / F.linear, dense random weight): fwd {dense['fwd']['ms']:.3f} ms "
        f"({dense['fwd']['tflops']:.3g} TFLOP/s), dX {dense['dx']['ms']:.3f} ms, dW {dense['dw']['ms']:.3f} ms, "
        f"bwd (dX + dW) {dense['bwd']['ms']:.3f} ms",
        "",
    ]
    for op, title, dense_op in (("fwd", "Forward y = x @ W.T", "fwd"), ("dx", "Backward dX = dY @ W", "dx")):
        lines += [
            f"**{title}** (dense {dense[dense_op]['ms']:.3f} ms)",
            "",
            "| sparsity | live tiles | masked ms | x dense | target ms | BSR ms | CSR ms | masked vs BSR | target |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for row in shape["rows"]:
            res, sk, t = row["results"], row["skipped"], row["targets"].get(op, {})

            def cell(key):
                if key in res:
                    return f"{res[key]['ms']:.3f}"
                return "unsupported" if sk.get(key, "").startswith("unsupported") else ("error" if key in sk else "—")

            lines.append(
                f"| {row['sparsity']:.0%} | {row['live_tiles']}/{row['tiles']} | {cell(f'masked.{op}')} "
                f"| {_fmt(t.get('vs_dense'), '.3f')} | {_fmt(t.get('budget_ms'), '.3f')} | {cell(f'bsr.{op}')} "
                f"| {cell(f'csr.{op}')} | {_fmt(t.get('vs_bsr'), '.2f', 'x')} | {t.get('status', '—')} |")
        lines.append("")
    lines += [
        f"**Backward with weight gradient** (dense dX + dW {dense['bwd']['ms']:.3f} ms; dense dW alone "
        f"{dense['dw']['ms']:.3f} ms)",
        "",
        "| sparsity | masked bwd ms (dX + dense dW) | x dense bwd | dW live-only ms | x dense dW | target ms "
        "| target |",
        "|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in shape["rows"]:
        res, t = row["results"], row["targets"].get("dw_live", {})
        bwd, dwl = res.get("masked.bwd"), res.get("masked.dw_live")
        lines.append(
            f"| {row['sparsity']:.0%} | {_fmt(bwd and bwd['ms'], '.3f')} "
            f"| {_fmt(bwd and bwd['ms'] / dense['bwd']['ms'], '.3f')} | {_fmt(dwl and dwl['ms'], '.3f')} "
            f"| {_fmt(dwl and dwl['ms'] / dense['dw']['ms'], '.3f')} | {_fmt(t.get('budget_ms'), '.3f')} "
            f"| {t.get('status', '—')} |")
    notes = sorted({f"{k}: {v}" for row in shape["rows"] for k, v in row["skipped"].items()})
    impls = sorted({f"{k}: {r['impl']}" for row in shape["rows"] for k, r in row["results"].items()
                    if k.split(".")[0] in ("bsr", "csr") and "impl" in r})
    if impls:
        lines += ["", "torch.sparse calls used: " + "; ".join(impls)]
    if notes:
        lines += ["", "Not timed:", ""] + [f"- {x}" for x in notes]
    return "\n".join(lines)


def summary(report: dict) -> dict:
    counts = {}
    for shape in report["shapes"]:
        for row in shape["rows"]:
            for op, t in row["targets"].items():
                if t["status"] != "—":
                    key = "met" if t["status"].startswith("met") else "missed"
                    counts.setdefault(op, {"met": 0, "missed": 0})[key] += 1
    return counts


def markdown_report(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = common.report_header("Masked matmul", m) + [
        f"- command: `{cfg['command']}`",
        f"- dtype {cfg['dtype']}, tiles {BLOCK[0]}x{BLOCK[1]}, no bias; masked_linear runs: {cfg['masked_impl']}",
        f"- timing: {cfg['timer']}; ms is the median",
        "",
    ]
    if m["device"] != "cuda":
        out += ["**CPU run: these numbers are NOT the benchmark.** Without a GPU masked_linear is the dense "
                "F.linear fallback (or the Triton interpreter under TRITON_INTERPRET=1); this run only shows that "
                "the runner works. The benchmark is the H200 bf16 run.", ""]
    out += [
        f"Target (docs/DESIGN.md): masked time <= {TARGET_FACTOR} x (1 - sparsity) x dense for sparsity <= "
        f"{TARGET_MAX_SPARSITY:.0%} (\"target ms\"), and faster than torch BSR; \"met\" needs both where they "
        "apply. x dense = masked time / dense time (the dense layer: a dense random weight, cuBLAS). BSR/CSR: "
        "torch.sparse with the same masked weight; 'unsupported' = no call of that layout ran (reasons below).",
    ]
    s = report.get("summary") or {}
    if s:
        out += ["", "Summary: " + "; ".join(f"{op}: {c['met']} met, {c['missed']} missed" for op, c in s.items())]
    for shape in report["shapes"]:
        out += ["", f"## {shape['name']}: M={shape['m']}, K={shape['k']} -> N={shape['n']}, {shape['dtype']}", "",
                markdown_tables(shape)]
    for k in report.get("skipped_shapes", []):
        out += ["", f"## {k['name']}: skipped ({k['reason']})"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
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
    shape_names = [x.strip() for x in args.shapes.split(",") if x.strip()] if args.shapes else (
        quick_shapes if args.quick else default_shapes)
    shapes = [parse_shape(x, device) for x in shape_names]
    if args.sparsities:
        sparsities = [float(x) / 100 for x in args.sparsities.split(",") if x.strip()]
        if not all(0 <= s <= 1 for s in sparsities):
            sys.exit("--sparsities: percentages in [0, 100]")
    else:
        sparsities = list(quick_sparsities if args.quick else SPARSITIES)
    methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    for x in methods:
        if x not in ("masked", "bsr", "csr"):
            sys.exit(f"--methods: unknown {x!r}")
    use_triton = device.type == "cuda" and not args.no_triton_timer and do_bench_or_none() is not None
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
          f"{str(dtype).replace('torch.', '')}, masked_linear: {impl}")
    report = dict(
        machine=machine,
        config=dict(command="python bench/masked_matmul.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    dtype=str(dtype).replace("torch.", ""), block=list(BLOCK), quick=args.quick,
                    sparsities=sparsities, methods=["dense", *methods], masked_impl=impl, seed=args.seed,
                    timer=("triton.testing.do_bench (median; CUDA events for calls > 100 ms)" if use_triton else
                           "CUDA events (median)" if device.type == "cuda" else "time.perf_counter (median)"),
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
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nsummary: {report['summary']} ({report['seconds']} s)")
    if device.type == "cpu":
        print("(CPU run: not the benchmark; see above)")
    if not args.no_save:
        suffix = "-" + "-".join(common.slug(x) for x in shape_names) if args.shapes else ""
        suffix += "" if dtype == (torch.bfloat16 if device.type == "cuda" else torch.float32) else f"-{args.dtype}"
        suffix += "-interp" if impl.startswith("triton interpreter") else ""
        suffix += "-quick" if args.quick else ""
        common.save_report(args.out, "masked_matmul", device, machine, suffix, report,
                                   markdown_report(report))
    return report


if __name__ == "__main__":
    main()
