"""Every step-kernel variant of one backend once, on small inputs, each checked against the reference backend run on
the CPU (so that a sanitizer run instruments only the kernels under test): the workload of `make gpu-check`'s
compute-sanitizer stage, where the whole test suite would take too long. Edge cases: several chunks, > 36 tensors
(two launches), ragged and odd sizes, 16-bit params of odd length, views at storage offset 1 (unaligned: the
scalar paths), grouped modes, block mode in even and ragged tiles, capturable device scalars with a skipped step.

    python tests/gpu/kernel_smoke.py --backend cuda [--only SUBSTRING,...]
    python tests/gpu/kernel_smoke.py --device cpu --backend cpu      (the same cases on the native CPU kernels)
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

import sparse_rda

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import check_capturable_grda_against_host  # noqa: E402

SHAPES = [(300, 251), (13,), (7, 5), (1,), (64, 32, 3, 3), (70001,)]
LIMIT = {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float16: 2e-2}  # max |diff| / max |w_ref|, per tensor


def make_params(shapes, dtype, device, unaligned=False):
    params = []
    for shape in shapes:
        if unaligned:  # storage offset 1: the data pointer is not 16-byte aligned
            numel = int(torch.Size(shape).numel())
            params.append(torch.nn.Parameter(torch.randn(numel + 1, device=device).to(dtype)[1:].view(shape)))
        else:
            params.append(torch.nn.Parameter((torch.randn(shape, device=device) * 0.5).to(dtype)))
    return params


def against_reference(opt_cls, shapes, device, backend, dtype=torch.float32, steps=2, unaligned=False, **options):
    params = make_params(shapes, dtype, device, unaligned)
    copies = [torch.nn.Parameter(p.detach().cpu().clone()) for p in params]
    fused, ref = opt_cls(params, backend=backend, **options), opt_cls(copies, backend="torch", **options)
    for _ in range(steps):
        for p, q in zip(params, copies):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.detach().cpu().clone()
        fused.step()
        ref.step()
    for p, q in zip(params, copies):
        diff = (p.detach().cpu().double() - q.detach().double()).abs().max().item()
        scale = max(q.detach().double().abs().max().item(), 1e-30)
        assert diff <= LIMIT[dtype] * scale, f"{tuple(p.shape)}: max |diff| {diff:.3e} vs max |w| {scale:.3e}"
    nnz = fused.nnz()
    assert all(nnz[p] == int(torch.count_nonzero(p)) for p in params), "nonzero counts differ"


def capturable_rda(device, backend):
    params = make_params(SHAPES, torch.float32, device)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lr = torch.tensor(0.5, device=device)
    fused = sparse_rda.RDA(params, backend=backend, capturable=True, lr=lr, lam=1e-3)
    host = sparse_rda.RDA(copies, backend=backend, lr=0.5, lam=1e-3)
    for _ in range(2):
        for p, q in zip(params, copies):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        host.step()
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    before = [p.detach().clone() for p in params]
    fused.found_inf = torch.ones((), device=device)  # what GradScaler hands a capturable group
    fused.step()
    del fused.found_inf
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "a skipped step changed the weights"


def cases(device, backend):
    """(name, case) pairs; main runs each case as it is yielded, so the lambdas see the loop values of their turn."""
    rda, grda = sparse_rda.RDA, sparse_rda.GRDA
    dtypes = (torch.float32, torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    for dtype in dtypes:
        n = str(dtype).removeprefix("torch.")
        yield f"RDA element {n}", lambda: against_reference(rda, SHAPES, device, backend, dtype, lam=1e-3,
                                                            averaging=0.3, weight_decay=1e-4)
        yield f"RDA element {n} unaligned", lambda: against_reference(rda, SHAPES, device, backend, dtype,
                                                                      unaligned=True, lam=1e-3)
        yield f"GRDA {n}", lambda: against_reference(grda, SHAPES, device, backend, dtype, lr=0.1, c=0.05, mu=0.55)
        yield f"GRDA {n} unaligned", lambda: against_reference(grda, SHAPES, device, backend, dtype, unaligned=True,
                                                               lr=0.1, c=0.05, mu=0.55)
        for block in ((64, 64), (4, 8), (3, 5)):
            yield f"RDA block {block} {n}", lambda: against_reference(
                rda, [(128, 192), (70, 45), (33, 17), (13,)], device, backend, dtype, lam=1e-3,
                granularity=("block", *block))
    for granularity in ("kernel", "channel"):
        yield f"RDA {granularity}", lambda: against_reference(
            rda, [(64, 32, 3, 3), (8, 3, 5, 5), (300, 251)], device, backend, lam=1e-3, granularity=granularity)
    yield "RDA no reweight, maximize", lambda: against_reference(rda, SHAPES, device, backend, lam=1e-3,
                                                                 reweight=False, maximize=True)
    yield "RDA 40 tensors (2 launches)", lambda: against_reference(rda, [(5, 3)] * 40 + [(70000,)], device, backend,
                                                                   lam=1e-3)
    yield "GRDA 40 tensors (2 launches)", lambda: against_reference(grda, [(5, 3)] * 40 + [(70000,)], device,
                                                                    backend, lr=0.1, c=0.05, mu=0.55)
    yield "RDA capturable (device lr, a skipped step)", lambda: capturable_rda(device, backend)
    yield "GRDA capturable", lambda: check_capturable_grda_against_host(make_params(SHAPES, torch.float32, device),
                                                                        backend)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--only", default="", help="comma-separated substrings of the case names to run")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    device = torch.device(args.device)
    failures = []
    for name, case in cases(device, args.backend):
        if only and not any(o in name for o in only):
            continue
        try:
            case()
            if device.type == "cuda":
                torch.cuda.synchronize()
            print(f"ok   {name}", flush=True)
        except Exception as err:  # report every case, then fail
            failures.append(name)
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
    print(f"{len(failures)} failures{': ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
