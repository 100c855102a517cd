"""What bench/optimizer_step.py (and its pytest-benchmark twin) times: the three optimizers as it builds them, the
copy and axpy streams it holds them against, and each one's minimum bytes per element (see the runner's docstring
for why those floors)."""

from __future__ import annotations

import sys

import torch

import sparse_rda
from timing import free, time_fn

METHODS = ("SGD", "RDA", "RDA-2:4", "GRDA", "PAT-Lasso")  # RDA-2:4: granularity ("nm", 2, 4), the same bytes as RDA
# PAT-Lasso: torchao PAT's PruneOptimizer (ProxLasso on the >= 2-D tensors) over torch's fused SGD-momentum, the
# peer users would pick (bench/accuracy_pat.py; an optional dependency)
REFERENCE_BACKEND = "torch"

# Hyper-parameters: realistic values (they do not change the work done per element).
RDA_KW = dict(lr=1.0, lam=1e-6, momentum_time=9.5, weight_decay=5e-4)
GRDA_KW = dict(lr=0.01, c=0.005, mu=0.55)
SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def floor_bytes(method: str, itemsize: int) -> int:
    """Minimum bytes moved per parameter element and step, parameters of ``itemsize`` bytes, fp32 state."""
    if method in ("RDA", "RDA-2:4"):
        return 3 * itemsize + 32  # read g, w (2s) + T, B, A, v (16); write w (s) + T, B, A, v (16)
    if method == "GRDA":
        return 2 * itemsize + 8  # read g (s) + acc (4); write acc (4) + w (s)
    if method == "SGD":
        return 5 * itemsize  # read g, w, buf; write w, buf (buf in the parameter dtype)
    if method == "PAT-Lasso":
        return 6 * itemsize  # read g, latent, buf; write latent, buf, w (latent copy in the parameter dtype)
    raise ValueError(method)


def make_sgd(params, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """torch SGD-momentum, fused where this torch supports it on the device (one trial step checks), else foreach."""
    try:
        opt = torch.optim.SGD(params, **SGD_KW, fused=True)
        opt.step()
        return opt, "fused"
    except (RuntimeError, TypeError, ValueError) as e:
        print(f"  SGD fused=True unavailable on {device.type} ({e}); using foreach=True", file=sys.stderr)
    return torch.optim.SGD(params, **SGD_KW, foreach=True), "foreach"


def make_pat(params) -> torch.optim.Optimizer:
    """PAT's Lasso over fused SGD (foreach where fused is not supported); ImportError without torchao."""
    from torchao.prototype import pat

    weights = [p for p in params if p.dim() >= 2]
    groups = [dict(params=weights, prox_type="ProxLasso", group_type="ElemGrouper", reg_lambda=3.8e-4),
              dict(params=[p for p in params if p.dim() < 2])]
    try:
        base = torch.optim.SGD(groups, **SGD_KW, fused=True)
    except (RuntimeError, TypeError, ValueError):
        base = torch.optim.SGD(groups, **SGD_KW, foreach=True)
    return pat.PruneOptimizer(base, warmup_steps=0)


def make_sparse(method: str, params, backend: str) -> torch.optim.Optimizer:
    if method in ("RDA", "RDA-2:4"):
        nm = dict(granularity=("nm", 2, 4)) if method == "RDA-2:4" else {}
        return sparse_rda.RDA(params, **RDA_KW, **nm, backend=backend)
    return sparse_rda.GRDA(params, **GRDA_KW, backend=backend)


def bench_copy(nbytes: int, device: torch.device, warmup: int, reps: int, use_triton: bool) -> dict:
    """Copy nbytes/2 bytes from one flat buffer to another: nbytes moved in all."""
    n = max(1, nbytes // 2 // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)  # written once, so every page is mapped
    dst = torch.zeros(n, dtype=torch.float32, device=device)
    try:
        return time_fn(lambda: dst.copy_(src), device, warmup, reps, use_triton)
    finally:
        del src, dst
        free(device)


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
        free(device)


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
