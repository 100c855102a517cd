"""Triton kernels of sparse_rda, installed as ``sparse_rda.kernels`` (never as a top-level ``kernels`` module).

Each kernel implements a function of ``sparse_rda.reference`` with the same signature (plus ``grad_scale``)
and is tested against it. They run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (fp32 only).
"""

from .grda_step import grda_step
from .masked_matmul import masked_linear, tile_occupancy
from .rda_step import rda_step

__all__ = ["rda_step", "grda_step", "masked_linear", "tile_occupancy"]
