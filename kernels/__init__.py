"""Triton kernels of sparse_rda, installed as ``sparse_rda.kernels`` (never as a top-level ``kernels`` module).

Each kernel sits beside the reference math it implements (``sparse_rda.reference``) and is tested against it.
"""
