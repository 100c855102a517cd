"""Triton kernels of sparse_rda, installed as ``sparse_rda.kernels`` (never as a top-level ``kernels`` module).

Each step module implements the backend contract (sparse_rda/step.py) and is tested against the reference; the
kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (fp32 only). They import nothing from
sparse_rda: per-tensor decisions arrive in plans, step-wide values in a scalars object. This package imports no
module itself, so ``sparse_rda.kernels.tiles`` (plain Python) loads without triton.
"""
