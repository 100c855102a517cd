"""Per-element math shared by the Triton kernels, in the reference's order (sparse_rda/reference.py)."""

import triton
import triton.language as tl


@triton.jit
def step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha, DEVICE_SCALARS: tl.constexpr):
    """(skip, lr, lam, beta, beta_b, alpha) of an RDA step: the host's values, or in the device form (capturable
    mode, traced steps) read from the device (the first five of [lr, averaging, beta, beta_b, lam, 1 - x of the
    first three]; these kernels compute 1 - x in float32 in both forms) with skip = found_inf != 0."""
    if DEVICE_SCALARS:
        skip = tl.load(found_inf) != 0
        lr = tl.load(device_scalars)
        alpha = tl.load(device_scalars + 1)
        beta = tl.load(device_scalars + 2)
        beta_b = tl.load(device_scalars + 3)
        lam = tl.load(device_scalars + 4)
    else:
        skip = False
    return skip, lr, lam, beta, beta_b, alpha


@triton.jit
def soft_threshold(x, threshold):
    """sign(x) * max(|x| - t, 0); NaN stays NaN, like the reference."""
    shrunk = tl.maximum(tl.abs(x) - threshold, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return tl.where(x < 0, -shrunk, shrunk)


FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def is_finite(x):
    """Neither NaN nor +-inf."""
    return tl.abs(x) <= FLOAT32_MAX


@triton.jit
def finite_or_zero(x):
    """The value a max of A takes in: the max is over finite values only, as the reference's."""
    return tl.where(is_finite(x), x, 0.0)


@triton.jit
def reweight_factor(A, max_A, max_factor):
    """om = M / (1 + (M - 1) A / max A); M when max A is 0 (every A is then 0); 0 where A is not finite."""
    om = max_factor / (1.0 + (max_factor - 1.0) * (A / tl.where(max_A > 0, max_A, 1.0)))
    return tl.where(is_finite(A), tl.where(max_A > 0, om, max_factor), 0.0)


@triton.jit
def group_shrink(norm, threshold, sqrt_count):
    """max(0, 1 - t sqrt(n) / ||T_tile||); 0 for an all-zero tile, 1 for a tile whose norm is NaN or inf (only
    its non-finite elements are non-finite), NaN for a NaN threshold: as the reference."""
    shrink = tl.maximum(1.0 - (threshold * sqrt_count) / tl.where(norm > 0, norm, 1.0), 0.0,
                        propagate_nan=tl.PropagateNan.ALL)
    return tl.where(is_finite(norm), tl.where(norm > 0, shrink, 0.0), 1.0)


@triton.jit
def dual_average(w, g, T, v, inv_scale, lr, alpha, beta, weight_decay,
                 HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    """(T, v) after one step, the same in every granularity: g = +-grad (unscaled) + weight_decay w,
    T = alpha T + (1 - alpha) w, v = beta v + (1 - beta) g, T -= lr v."""
    if HAS_SCALE:
        g = g * tl.load(inv_scale)
    if MAXIMIZE:
        g = -g
    g = g + weight_decay * w  # also with weight_decay 0: a non-finite w makes its v non-finite, as on every backend
    T = alpha * T + (1.0 - alpha) * w
    v = beta * v + (1.0 - beta) * g
    return T - lr * v, v


@triton.jit
def tensor_ptr(table, row, n_tensors, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor t's address, table[row, t], as a pointer to DTYPE. ALIGNED: the host checked that it is 16-byte
    aligned; the hint (the address alone carries none) lets accesses at offsets that are multiples of the vector
    width be vectors (16 bytes)."""
    ptr = tl.load(table + row * n_tensors + t).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def load_f32(ptr, offs, mask):
    """ptr[offs] as float32; mask None: every element is in bounds (full blocks, no predicate)."""
    if mask is None:
        value = tl.load(ptr + offs)
    else:
        value = tl.load(ptr + offs, mask=mask, other=0.0)
    return value.to(tl.float32)


@triton.jit
def store(ptr, offs, mask, value):
    """ptr[offs] = value, rounded to ptr's element type; mask None as in load_f32."""
    if mask is None:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def nonzeros(value, mask, DTYPE: tl.constexpr):
    """1 where the value as stored is nonzero (a weight that rounds to 0 in fp16 counts as 0), per element: the
    kernels sum these once per program, not once per block."""
    nonzero = value.to(DTYPE) != 0
    if mask is not None:
        nonzero = nonzero & mask
    return nonzero.to(tl.int32)
