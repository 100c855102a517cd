"""One shape of bench/masked_matmul.py (its docstring says what is timed and why): the dense layer once, then per
sparsity a random tile mask, each product checked against the dense one and timed, and the targets met or missed."""

from __future__ import annotations

import math
import traceback
import warnings

import torch
import torch.nn.functional as F

import sparse_rda.nn as snn
from common import dtype_name, error_text
from masked_operands import TOLERANCE, masked_impl, random_occupancy, rel_err
from timing import free, time_adaptive

BLOCK = (64, 64)
TARGET_FACTOR = 1.25  # time <= 1.25 x (1 - s) x dense ...
TARGET_MAX_SPARSITY = 0.9  # ... for s <= 90%

warnings.filterwarnings("ignore", message=".*Sparse (BSR|CSR) tensor support is in beta.*")


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
            reasons.append(f"{label}: {error_text(e, 160)}")
            continue
        if not err <= tol:
            reasons.append(f"{label}: wrong result (rel err {err:.2e} > {tol:.0e})")
            continue
        return label, fn, err
    return None, None, reasons


def flops(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def bench_shape(name: str, mkn: tuple[int, int, int], sparsities, device: torch.device, dtype: torch.dtype,
                methods: list[str], quick: bool, use_triton: bool, seed: int) -> dict:
    m, k, n = mkn
    tol = TOLERANCE[dtype]
    gen = torch.Generator().manual_seed(seed)
    tiles = math.ceil(n / BLOCK[0]) * math.ceil(k / BLOCK[1])
    print(f"\n== {name}: M={m} tokens, K={k} -> N={n}, {tiles} tiles of {BLOCK[0]}x{BLOCK[1]}, "
          f"{dtype_name(dtype)}, {device}; masked_linear: {masked_impl(device, dtype)}")

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = randn(m, k)
    dy = randn(m, n)
    w_dense = randn(n, k, scale=k**-0.5)
    timed = lambda fn: time_adaptive(fn, device, quick, use_triton)  # noqa: E731
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
                skipped[key] = error_text(e)
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
                        skipped.setdefault(f"masked.{op}", error_text(e))
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
                    skipped[key] = f"unsupported: to_sparse_{layout}: {error_text(e, 160)}"
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
                        skipped[key] = error_text(e)
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
    return dict(name=name, m=m, k=k, n=n, block=list(BLOCK), dtype=dtype_name(dtype),
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
