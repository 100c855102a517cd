"""From a trained sparse model to a faster one: :func:`to_inference` swaps each linear layer whose weight is sparse
enough for a module that keeps only its nonzeros, in the format that is fastest on the weight's device.

Formats (each layer's choice is in the returned report):

- ``"csr"``: :class:`CSRLinear`, the nonzeros by output row (sparse_rda.csr; a native CPU kernel, reading 6 bytes
  per fp32 nonzero and 4 per bf16 one against dense's 4 or 2 per weight). Chosen on CPU above the measured
  crossover sparsity for the dtype and batch size (:data:`CPU_CSR_CROSSOVER`, bench/results/sparse_inference-*),
  except for layers small enough that a call's fixed cost outweighs the zeros (:data:`CPU_CSR_SMALL_DENSE`).
- ``"semi-structured"``: a 2:4 weight as torch's semi-structured sparse tensor (CUDA sm_80+, fp16/bf16:
  sparse_rda.semi_structured.to_semi_structured's conversion).
- ``"tiles"``: :class:`sparse_rda.SparseLinear`, whose Triton matmul skips all-zero 64x64 tiles (CUDA), chosen
  when at least :data:`CUDA_TILE_MIN_DEAD` of the tiles are dead.
- ``"dense"``: the layer as it is.

The GPU rules are not measured yet (no GPU has been lent; bench/sparse_inference.py runs in make gpu-check):
semi-structured for a 2:4 weight, tiles past the dead-tile fraction above, dense otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from . import csr
from .nn import SparseLinear, swap_modules, tile_occupancy
from .semi_structured import compress_2_4, is_2_4, unsupported_reason

FORMATS = ("auto", "dense", "csr", "tiles", "semi-structured")

# The lowest zero fraction at which CSRLinear beat F.linear on CPU at every higher sparsity measured, on both LLM
# MLP shapes, by (dtype, batch size at most), the higher of two runs (they moved by one grid step):
# bench/results/sparse_inference-cpu-amd-epyc.md (2-vCPU EPYC Zen 4, 2 threads, cold caches, 2026-12-03, CSR
# kernels v4 and v5; that run alone: fp32 50/50/70%, bf16 80/80/95%). Batches above 128 use the batch-128 row.
CPU_CSR_CROSSOVER = {
    torch.float32: ((1, 0.6), (16, 0.5), (128, 0.7)),
    torch.bfloat16: ((1, 0.8), (16, 0.8), (128, 0.95)),
}
# Below batch 16, a layer of at most this many weights stays dense on CPU whatever its zeros: the CSR call's fixed
# cost (a custom op's dispatch, ~1-2 us over F.linear's) is more than its zeros save there (measured at batch 1:
# bench/results/csr_small_layers-cpu-amd-epyc.md; at batch 16 CSR won on every layer of 1000+ weights).
CPU_CSR_SMALL_DENSE = {torch.float32: 65536, torch.bfloat16: 4096}
CUDA_TILE_MIN_DEAD = 0.75  # not measured: the masked matmul's tile overheads make fewer dead tiles a loss


class CSRLinear(nn.Module):
    """``y = x W^T + b`` from W's nonzeros only (CSR by output row), for inference: no gradient flows through it.
    Buffers ``crow``, ``col``, ``values`` (and ``bias``) move with ``.to()`` and are in the state dict."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        packed = csr.pack_csr(weight.detach())
        self.register_buffer("crow", packed.crow)
        self.register_buffer("col", packed.col)
        self.register_buffer("values", packed.values)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CSRLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("CSRLinear is for inference: no gradient flows through it (run under "
                               "torch.no_grad(), or train the layer before sparse_rda.to_inference)")
        # the buffers straight from their dict: nn.Module's __getattr__ costs ~0.4 us each, a tenth of a small
        # layer's call (they are looked up per call, so .to() and load_state_dict stay seen)
        buffers = self._buffers
        shape = (self.out_features, self.in_features)
        packed = csr.CSRWeight(buffers["crow"], buffers["col"], buffers["values"], shape)
        return csr.csr_linear(x, packed, buffers["bias"])

    def extra_repr(self) -> str:
        numel = self.out_features * self.in_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.values.numel()} ({1 - self.values.numel() / max(numel, 1):.1%} zeros)")


def csr_crossover(dtype: torch.dtype, batch_size: int) -> float | None:
    """The zero fraction above which CSR beats dense on CPU at this batch size, or None (a dtype not measured)."""
    rows = CPU_CSR_CROSSOVER.get(dtype)
    if rows is None:
        return None
    return next((s for b, s in rows if batch_size <= b), rows[-1][1])


def choose_format(weight: torch.Tensor, batch_size: int = 1) -> tuple[str, str]:
    """(format, why) for a linear weight on its own device at this batch size (the module docstring's rules)."""
    w = weight.detach()
    zeros = float((w == 0).float().mean()) if w.numel() else 0.0
    if w.device.type == "cpu":
        return cpu_format(zeros, w.dtype, batch_size, w.numel())
    if w.device.type == "cuda":
        if unsupported_reason(w) is None and is_2_4(w):
            return "semi-structured", "2:4 on sm_80+"
        dead = float((~tile_occupancy(w)).float().mean())
        if dead >= CUDA_TILE_MIN_DEAD:
            return "tiles", f"{dead:.1%} of the 64x64 tiles dead >= {CUDA_TILE_MIN_DEAD:.0%}"
        return "dense", f"{dead:.1%} of the 64x64 tiles dead < {CUDA_TILE_MIN_DEAD:.0%}, and not 2:4"
    return "dense", f"no sparse format on {w.device.type}"


def cpu_format(zeros: float, dtype: torch.dtype, batch_size: int, numel: int) -> tuple[str, str]:
    """(format, why) on CPU for a weight of ``numel`` elements with that fraction of zeros, at this batch size."""
    crossover = csr_crossover(dtype, batch_size)
    if crossover is None:
        return "dense", f"{dtype} on CPU: no CSR kernel measured for it"
    if batch_size < 16 and numel <= CPU_CSR_SMALL_DENSE[dtype]:
        return "dense", (f"{numel} weights <= {CPU_CSR_SMALL_DENSE[dtype]} below batch 16: the CSR call's fixed "
                         "cost is more than its zeros save")
    if round(zeros, 3) >= crossover:  # to 0.1%: a weight measured at "70%" zeros drawn at random has 69.99%
        return "csr", f"{zeros:.1%} zeros >= the CPU crossover {crossover:.0%} at batch {batch_size}"
    return "dense", f"{zeros:.1%} zeros < the CPU crossover {crossover:.0%} at batch {batch_size}"


@torch.no_grad()
def to_inference(model: nn.Module, batch_size: int = 1, format: str = "auto") -> dict[str, str]:
    """Swap every ``nn.Linear`` (and :class:`SparseLinear`) of ``model`` for its inference module, in place:
    with ``format="auto"`` the one :func:`choose_format` picks for the weight's sparsity, device and the batch size
    you will run (the rows each linear layer sees per call: batch x sequence length for a sequence model); another
    of :data:`FORMATS` forces it wherever it applies. Returns {layer name: "format: why"}. Call it last: the swapped
    layers do not train."""
    if type(model) in (nn.Linear, SparseLinear):
        raise TypeError("to_inference swaps the layers inside a model in place; wrap a bare layer, e.g. in "
                        "nn.Sequential")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    report: dict[str, str] = {}

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        if type(module) not in (nn.Linear, SparseLinear):
            return None
        chosen, why = choose_format(module.weight, batch_size) if format == "auto" else (format, "asked for")
        new = _convert(module, chosen)
        if isinstance(new, str):  # a forced format that does not apply: the layer stays
            chosen, why, new = "dense", new, None
        report[name] = f"{chosen}: {why}"
        return new

    swap_modules(model, convert)
    return report


def _convert(module: nn.Linear, chosen: str) -> nn.Module | str | None:
    """The layer in that format (None: keep it as it is), or why the format does not apply to it."""
    if chosen == "dense":
        return None if type(module) is nn.Linear else _dense_copy(module)
    if chosen == "csr":
        return CSRLinear.from_linear(module)
    if chosen == "tiles":
        return module if isinstance(module, SparseLinear) else SparseLinear.from_linear(module)
    linear = module if type(module) is nn.Linear else _dense_copy(module)  # SparseLinear's matmul takes no 2:4
    return compress_2_4(linear) or linear


def _dense_copy(module: nn.Linear) -> nn.Linear:
    """A plain nn.Linear holding the same Parameters."""
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    linear.weight, linear.bias = module.weight, module.bias
    return linear

