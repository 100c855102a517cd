#!/usr/bin/env python
"""Training-step benchmark: a transformer MLP block (d -> 4d -> d, GELU) trained with RDA, dense nn.Linear vs
SparseLinear with 90% of its 64 x 64 weight tiles dead, all measured side by side in one run.

    python bench/train_step.py                          # GPU: d=4096, 8192 tokens, bf16; CPU: d=256, 512 tokens
    python bench/train_step.py --quick                  # smoke run (GPU: d=2048, 4096 tokens)
    python bench/train_step.py --d 4096 --tokens 16384 --sparsity 95

Variants (same seed, same initial weights; the sparse ones have their dead tiles zeroed by ``set_mask``):

- ``dense + RDA element``: nn.Linear, ``RDA(granularity="element")`` on the device's fastest backend (``auto``:
  the native CUDA / Triton kernel on a GPU, the native CPU kernel on CPU): what a dense run uses. The baseline.
- ``dense + RDA block``: nn.Linear, ``RDA(granularity=("block", 64, 64))`` (backend ``--block-backend``,
  default ``auto``): the same optimizer as the sparse run.
- ``sparse + RDA block``: ``sparsify(model)`` (SparseLinear, masked matmul, dense dW so RDA can regrow tiles)
  at 90% dead tiles, ``RDA(granularity=("block", 64, 64))``; the step writes the layers' tile maps itself.
- ``sparse + RDA block (reference)``: the same on the reference backend (``backend="torch"``), when the block
  backend above is another one (e.g. Triton on a GPU).
- ``sparse, dW live-only`` (fwd + bwd only): SparseLinear(dw_live_only=True): the weight gradient on live tiles
  only (mask-style training without regrowth), to show what the dense dW costs.

Timed per variant: fwd + bwd (``loss = mean(y^2)``; the input requires grad, as inside a network, so both
layers compute dX), the optimizer step alone (gradients in place), and the full step (fwd, bwd, step); for
the sparse layers also ``refresh_occupancy`` alone, the pass over the weights a mask-based method without a
map-writing step would add. The target (docs/DESIGN.md, "sparse training step, 90% block sparsity: >= 2x
faster than the dense layer's step") is checked on the full step against the dense fused-RDA step.

Block RDA runs on the device's native block step (csrc/cuda/block_step_kernels.cu, one thread block per tile;
csrc/cpu/block_step_cpu.cpp) or the Triton one (kernels/rda_block_step.py) with ``--block-backend triton``; a row
with the reference block step (pure torch, dozens of passes over the fp32 state) is added for comparison. The
matmul part (fwd + bwd) and the optimizer part are also reported separately, with an ESTIMATE (not a measurement)
of the sparse step with a block step as fast as the fused element-wise one.
With RDA's tiles equal to the layer's, the step writes the SparseLinear's tile map itself (the map is shared), so
the full step has no refresh pass.
On CPU (no GPU) the SparseLinear matmul is its live-tile ATen path (sparse_rda.cpu_tiles; bench/sparse_training_cpu.py
is the CPU benchmark of it): CPU numbers here only show that the runner works; they are NOT the benchmark.

Timing: on CUDA ``triton.testing.do_bench`` (median, at least 10 calls), on CPU ``time.perf_counter`` (median).
Results: ``bench/results/train_step-<device>-<cpu-or-gpu-name>[-d<d>-t<tokens>][-s<sparsity>][-<dtype>]``
``[-quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch
from torch import nn

import common
import sparse_rda
from masked_operands import layer_impl, random_occupancy
from optimizer_step_methods import RDA_KW
from sparse_rda.nn import SparseLinear, refresh_occupancy, sparsify, tile_occupancy
from timing import free, time_adaptive, timer_label, use_triton_timer
from train_step_report import (DENSE_BLOCK, DENSE_ELEMENT, LIVE_ONLY, SPARSE_BLOCK, SPARSE_BLOCK_REF, markdown_report,
                               markdown_table, summarize)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BLOCK = (64, 64)
# RDA_KW: the house RDA settings (optimizer_step_methods.py); averaging 0: B = lr * om each step, so the thresholds
# do not grow while timing and the 90% dead tiles stay dead (their penalty weight is max_factor, their gradients tiny).
CONFIGS = {  # (d, tokens)
    ("cuda", False): (4096, 8192),
    ("cuda", True): (2048, 4096),
    ("cpu", False): (256, 512),
    ("cpu", True): (256, 256),
}


class MLP(nn.Module):
    def __init__(self, d: int, device, dtype):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d, d, device=device, dtype=dtype)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def make_model(d: int, device, dtype, seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(d, device, dtype)


def apply_tile_masks(model: nn.Module, sparsity: float, seed: int) -> None:
    """Exactly round(sparsity * tiles) random dead tiles in every SparseLinear (weights zeroed there)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, SparseLinear):
            n, k = module.weight.shape
            module.set_mask(random_occupancy(n, k, module.block, sparsity, gen))


def live_tiles(model: nn.Module) -> tuple[int, int]:
    live = total = 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            live += int(module.occupancy.sum())
            total += module.occupancy.numel()
        elif isinstance(module, nn.Linear):
            occ = tile_occupancy(module.weight, BLOCK)
            live += int(occ.sum())
            total += occ.numel()
    return live, total


def variants(block_backend: str) -> dict[str, tuple[str, str | None, str]]:
    """Variant key -> (model kind, optimizer granularity or None, backend option)."""
    return {
        DENSE_ELEMENT: ("dense", "element", "auto"),
        DENSE_BLOCK: ("dense", "block", block_backend),
        SPARSE_BLOCK: ("sparse", "block", block_backend),
        SPARSE_BLOCK_REF: ("sparse", "block", "torch"),
        LIVE_ONLY: ("sparse-live-only", None, ""),
    }


def make_optimizer(model: nn.Module, granularity: str, backend: str):
    """RDA over the model (weights penalized, biases not) and the backend its penalized group runs on."""
    gran = "element" if granularity == "element" else ("block", *BLOCK)
    opt = sparse_rda.RDA(sparse_rda.param_groups(model, **RDA_KW, granularity=gran, backend=backend))
    try:  # the backend that runs the step (the optimizer's own resolution)
        ran = opt._check_group(opt.param_groups[0])
    except Exception:
        ran = backend
    return opt, ran


def bench_variant(name: str, spec: tuple, cfg: dict, device, dtype, quick: bool, use_triton: bool) -> dict:
    """Times one variant's parts; returns a result row."""
    kind, granularity, backend = spec
    d, tokens, seed = cfg["d"], cfg["tokens"], cfg["seed"]
    model = make_model(d, device, dtype, seed)
    sparse = kind.startswith("sparse")
    if sparse:
        sparsify(model, block=BLOCK, dw_live_only=kind.endswith("live-only"))
        apply_tile_masks(model, cfg["sparsity"], seed)
    opt, ran = make_optimizer(model, granularity, backend) if granularity else (None, None)
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(tokens, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        x.grad = None
        loss = model(x).float().pow(2).mean()
        loss.backward()

    def step():
        opt.step()

    def refresh():
        refresh_occupancy(model)

    def full():  # the step writes the SparseLinear maps (shared with RDA's state): no refresh
        fwd_bwd()
        opt.step()

    timed = lambda fn: time_adaptive(fn, device, quick, use_triton, slow_ms=float("inf"), min_reps=10,  # noqa: E731
                                     cpu_reps=(1, 3) if quick else (2, 10))
    row = dict(variant=name, model="SparseLinear" if sparse else "nn.Linear",
               optimizer=None if opt is None else ("RDA element" if granularity == "element" else
                                                   "RDA block %dx%d" % BLOCK),
               backend=ran, parts={})
    row["live_tiles_start"], row["tiles"] = live_tiles(model)
    fwd_bwd()
    if opt is not None:
        opt.step()  # the first step allocates the state: keep it out of the timing
    row["parts"]["fwd_bwd"] = timed(fwd_bwd)
    print(f"  {name:<32} fwd+bwd   {row['parts']['fwd_bwd']['ms']:10.3f} ms")
    if opt is not None:
        row["parts"]["opt_step"] = timed(step)
        print(f"  {name:<32} opt step  {row['parts']['opt_step']['ms']:10.3f} ms  (backend {ran})")
        if sparse:
            row["parts"]["refresh"] = timed(refresh)
            print(f"  {name:<32} refresh   {row['parts']['refresh']['ms']:10.3f} ms")
        row["parts"]["full_step"] = timed(full)
        print(f"  {name:<32} full step {row['parts']['full_step']['ms']:10.3f} ms")
    row["live_tiles_end"], _ = live_tiles(model)
    row["weight_sparsity_end"] = sparse_rda.sparsity(model).penalized
    del model, opt, x
    free(device)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--d", type=int, help="model width (default: 4096 on CUDA, 2048 quick; 256 on CPU)")
    ap.add_argument("--tokens", type=int, help="tokens per step (default: 8192 on CUDA, 4096 quick; 512/256 on CPU)")
    ap.add_argument("--sparsity", type=float, default=90.0, help="percent of dead 64x64 tiles (default 90)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), help="parameter dtype (default bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--block-backend", default="auto", help="backend of the block-RDA variants (default auto; "
                    "a reference-backend row is added when this is not 'torch')")
    ap.add_argument("--quick", action="store_true", help="smoke run: smaller model, few reps")
    ap.add_argument("--seed", type=int, default=0)
    common.add_runner_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.runner_device(args)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    d0, t0 = CONFIGS[device.type, args.quick]
    d, tokens = args.d or d0, args.tokens or t0
    if not 0 <= args.sparsity <= 100:
        sys.exit("--sparsity: a percentage in [0, 100]")
    cfg = dict(d=d, tokens=tokens, sparsity=args.sparsity / 100, seed=args.seed)
    use_triton = use_triton_timer(args, device)
    impl = layer_impl(device, dtype)
    machine = common.machine_info(device)
    if device.type == "cpu":
        print(f"NOTE: CPU run. These numbers are NOT the benchmark: the SparseLinear matmul here is {impl}. "
              "The benchmark is the GPU run: python bench/train_step.py --device cuda", file=sys.stderr)
    print(f"{machine.get('gpu') or machine['cpu']}: torch {machine['torch']}, triton {machine['triton']}; MLP d={d}, "
          f"{tokens} tokens, {common.dtype_name(dtype)}, {args.sparsity:g}% dead tiles; "
          f"SparseLinear matmul: {impl}")
    report = dict(
        machine=machine,
        config=dict(command=common.command_line("train_step.py", argv),
                    **cfg, dtype=common.dtype_name(dtype), block=list(BLOCK), quick=args.quick,
                    masked_impl=impl, rda=RDA_KW, block_backend=args.block_backend,
                    timer=timer_label(device, use_triton, "triton.testing.do_bench (median, >= 10 calls)")),
    )
    rows, skipped = [], []
    t_start = time.perf_counter()
    for name, spec in variants(args.block_backend).items():
        if name == SPARSE_BLOCK_REF and rows and rows[-1]["variant"] == SPARSE_BLOCK and rows[-1]["backend"] == "torch":
            continue  # the block variants already ran on the reference
        try:
            rows.append(bench_variant(name, spec, cfg, device, dtype, args.quick, use_triton))
        except Exception as e:  # e.g. out of memory: the other variants still run
            traceback.print_exc()
            skipped.append(dict(variant=name, reason=common.error_text(e)))
            free(device)
    result = dict(rows=rows, skipped=skipped, summary=summarize(rows, cfg["sparsity"], device.type == "cuda"))
    report["result"] = result
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    common.note_load_end(machine)
    print()
    print(markdown_table(result))
    if device.type == "cpu":
        print("\n(CPU run: not the benchmark; see above)")
    if not args.no_save:
        suffix = "" if (args.d is None and args.tokens is None) else f"-d{d}-t{tokens}"
        suffix += "" if args.sparsity == 90.0 else f"-s{args.sparsity:g}"
        suffix += "" if dtype == (torch.bfloat16 if device.type == "cuda" else torch.float32) else f"-{args.dtype}"
        suffix += "-interp" if impl.startswith("triton interpreter") else ""
        suffix += "-quick" if args.quick else ""
        common.save_report(args.out, "train_step", device, machine, suffix, report, markdown_report(report))
    return report


if __name__ == "__main__":
    main()
