"""The masked matmul's tile rule, in plain Python: the Triton kernels and ``sparse_rda.nn`` (which builds the
layer, with or without triton) both check tiles with it."""

from __future__ import annotations


def check_matmul_block(block, name: str = "block") -> tuple[int, int]:
    """A masked-matmul tile (BN, BK): sides powers of two >= 16 (tl.dot's minimum, and tl.arange's powers of two).
    RDA's own block granularity takes any positive sides; the layer shares its map with the optimizer only when
    the two tiles are the same (sparse_rda.nn)."""
    try:
        bn, bk = (int(b) for b in block)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two tile sides (BN, BK); got {name}={block!r}") from None
    for b in (bn, bk):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} sides must be powers of two >= 16 (tl.dot's minimum); got {name}={tuple(block)}")
    return bn, bk
