"""2:4 linear layers on sparse tensor cores: :class:`NMLinear`, and :func:`to_semi_structured` for inference.

2:4 (at most 2 nonzeros in each group of 4 consecutive weights along a row) is the one pattern Ampere and Hopper
tensor cores multiply natively, through torch's semi-structured sparse tensors (``torch.sparse``: cuSPARSELt, or
CUTLASS). RDA with ``granularity=("nm", 2, 4)`` produces such weights at every step.

:class:`NMLinear`'s forward runs the weight as a semi-structured tensor where the hardware can (a CUDA device of
compute capability 8.0+, fp16 / bf16 weights, the shape a multiple of torch's minimum tile, and a weight that is
2:4 now), compressed once per weight update: the compressed copy is kept with the weight's version counter and
rebuilt at the first forward after the optimizer wrote the weight. The input's gradient ``dX = dY W`` and the
weight's ``dW = dY^T X`` stay dense matmuls (the weight's gradient must be dense for RDA to regrow weights).
Everywhere else (CPU, fp32, a weight that is not 2:4 yet: before the first step) it is ``F.linear``, the same
result up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nn import swap_modules

PATTERN = (2, 4)  # the tensor cores' pattern


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive weights along each row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach().reshape(-1, 4) != 0).sum(-1) <= 2).all())


def is_semi_structured(weight: torch.Tensor) -> bool:
    return isinstance(weight, torch.sparse.SparseSemiStructuredTensor)


def _sparse_class():
    """The subclass torch.sparse.to_sparse_semi_structured makes (its own choice: CUTLASS when forced)."""
    from torch.sparse import SparseSemiStructuredTensor as base
    return torch.sparse.SparseSemiStructuredTensorCUTLASS if base._FORCE_CUTLASS else \
        torch.sparse.SparseSemiStructuredTensorCUSPARSELT


def unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why ``weight``'s matmul cannot run semi-structured here (None when it can): device, dtype or shape. Whether
    the values are 2:4 is checked separately (they change every step)."""
    if weight.device.type != "cuda":
        return f"semi-structured sparse matmuls run on CUDA devices; the weight is on {weight.device.type}"
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return f"semi-structured sparse matmuls need compute capability 8.0+; this GPU is {major}.{minor}"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"2:4 semi-structured matmuls take float16 / bfloat16 weights; the weight is {weight.dtype}"
    constraints = _sparse_class()._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows, cols = constraints.sparse_min_rows, constraints.sparse_min_cols
    if weight.dim() != 2 or weight.shape[0] % rows or weight.shape[1] % cols:
        return (f"semi-structured weights must be multiples of ({rows}, {cols}) "
                f"({_sparse_class().BACKEND}); the weight is {tuple(weight.shape)}")
    return None


class _SemiStructuredLinear(torch.autograd.Function):
    """y = x W^T + b with the forward on the compressed weight; dX and dW dense."""

    @staticmethod
    def forward(ctx, x, weight, bias, compressed):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        x2 = x.reshape(-1, x.shape[-1])
        return F.linear(x2, compressed, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g2.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None


class NMLinear(nn.Linear):
    """``nn.Linear`` whose forward runs a 2:4 weight on sparse tensor cores (see the module docstring).
    ``kernel`` says what the last forward ran: "semi-structured" or "dense"; ``compressions`` counts the weight
    compressions (one per weight update that a forward saw)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._compressed = None  # (weight version, data pointer, the semi-structured copy or None: not 2:4)
        self.kernel, self.compressions = "dense", 0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> NMLinear:
        """An NMLinear holding ``linear``'s own weight and bias Parameters (not copies)."""
        layer = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer.train(linear.training)

    def _compressed_weight(self):
        """The semi-structured copy of the weight as it is now, or None where the dense matmul runs."""
        w = self.weight
        if torch.compiler.is_compiling() or is_semi_structured(w) or unsupported_reason(w) is not None:
            return None
        key = (w._version, w.data_ptr())
        if self._compressed is None or self._compressed[:2] != key:
            with torch.no_grad():
                copy = torch.sparse.to_sparse_semi_structured(w.detach()) if is_2_4(w) else None
            self._compressed = (*key, copy)
            self.compressions += copy is not None
        return self._compressed[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_semi_structured(self.weight):  # exported for inference (to_semi_structured)
            self.kernel = "semi-structured"
            return F.linear(x.contiguous(), self.weight, self.bias)
        compressed = self._compressed_weight()
        self.kernel = "dense" if compressed is None else "semi-structured"
        if compressed is None:
            return F.linear(x, self.weight, self.bias)
        return _SemiStructuredLinear.apply(x, self.weight, self.bias, compressed)

    def _apply(self, fn, recurse=True):
        self._compressed = None  # (a moved or cast weight is a new tensor)
        return super()._apply(fn, recurse)


def sparsify_2_4(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` (exactly that class) for an :class:`NMLinear` holding the same Parameters; returns
    the model (or the new layer when ``model`` is an ``nn.Linear``)."""
    return swap_modules(model, lambda name, module: NMLinear.from_linear(module) if type(module) is nn.Linear
                        else None)


@torch.no_grad()
def to_semi_structured(model: nn.Module) -> dict[str, str]:
    """For inference: replace the weight of every Linear layer (NMLinear too) that is 2:4 and runs semi-structured
    on its device by its compressed semi-structured copy (a frozen Parameter: half the weight's bytes plus its
    metadata, and the tensor cores' sparse matmul). Returns {layer name: "semi-structured" or why it stays dense}."""
    done = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not is_semi_structured(module.weight):
            done[name] = compress_2_4(module) or "semi-structured"
    return done


@torch.no_grad()
def compress_2_4(module: nn.Linear) -> str | None:
    """Replace the layer's weight by its semi-structured copy if it is 2:4 and runs so on its device; returns why
    not, or None when done."""
    reason = unsupported_reason(module.weight)
    if reason is None and not is_2_4(module.weight):
        reason = "the weight is not 2:4 (train it with RDA's granularity ('nm', 2, 4) or pattern='2:4')"
    if reason is None:
        module.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(module.weight.detach()),
                                     requires_grad=False)
        if isinstance(module, NMLinear):
            module._compressed = None
    return reason
