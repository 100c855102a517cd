"""What the masked-matmul runners (bench/masked_matmul.py, bench/tune_masked_matmul.py) and bench/train_step.py
share: random tile maps with an exact dead fraction, the error measure and its tolerances, and what
``masked_linear`` runs on this machine."""

from __future__ import annotations

import math

import torch

import sparse_rda.nn as snn  # what SparseLinear runs: the Triton kernels, or the dense math

try:
    from sparse_rda.kernels import masked_matmul
except ImportError:  # no triton: masked_linear is the dense math
    masked_matmul = None

# max |got - want| / max |want| allowed: fp32 a few ulps of the sums; 16-bit: the output rounding (~2 ulps)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def masked_impl(device: torch.device, dtype: torch.dtype) -> str:
    """What ``masked_linear`` (the Triton op the matmul runners time) runs here: the kernels on CUDA, the interpreter
    on CPU fp32 under TRITON_INTERPRET=1, else its dense F.linear fallback."""
    device = torch.device(device)
    if masked_matmul is not None and device.type == "cuda":
        return "triton"
    if masked_matmul is not None and masked_matmul.INTERPRETED and device.type == "cpu" and dtype == torch.float32:
        return "triton interpreter (TRITON_INTERPRET=1)"
    return "dense F.linear fallback (no GPU and no TRITON_INTERPRET, or no triton)"


def layer_impl(device: torch.device, dtype: torch.dtype) -> str:
    """What a ``SparseLinear`` layer's matmul runs here (sparse_rda.nn.matmul_kernel): on CPU its live-tile ATen
    path (sparse_rda.cpu_tiles), elsewhere what masked_linear runs."""
    if snn.matmul_kernel(device) == "cpu-tiles":
        return "cpu-tiles (the live tiles in ATen matmuls, sparse_rda.cpu_tiles)"
    return masked_impl(device, dtype)


def random_occupancy(n: int, k: int, block, dead_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A tile map with exactly round(dead_fraction * tiles) dead tiles at random places (CPU bool)."""
    shape = (math.ceil(n / block[0]), math.ceil(k / block[1]))
    live = torch.ones(shape, dtype=torch.bool)
    live.view(-1)[torch.randperm(live.numel(), generator=gen)[: round(dead_fraction * live.numel())]] = False
    return live


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().float().item() if want.numel() else 0.0
    return (got.float() - want.float()).abs().max().item() / max(scale, 1e-30) if want.numel() else 0.0
