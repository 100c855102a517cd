"""The masked matmul's tile rule and argument checks, in plain Python: the Triton kernels and ``sparse_rda.nn``
(which builds the layer, with or without triton) both check with them."""

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


def check_masked_linear(x, weight, bias, occupancy, block) -> tuple[int, int]:
    """masked_linear's arguments (both of its implementations: the Triton one and the CPU one); returns the tile."""
    bn, bk = check_matmul_block(block)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in]; got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last dimension must be weight's in_features {k}; got x of shape {tuple(x.shape)}")
    expected = (-(-n // bn), -(-k // bk))
    if tuple(occupancy.shape) != expected:
        raise ValueError(f"occupancy must have shape {expected} for weight {tuple(weight.shape)} and block "
                         f"{(bn, bk)}; got {tuple(occupancy.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("occupancy", occupancy)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, x has {x.dtype}")
    return bn, bk
