"""Fused RDA step in block granularity (docs/ALGORITHMS.md section 3): one program per (rows x cols) tile of
a 2-D weight, over all such tiles of a param group (a tile table, cached on the device per shapes, as
kernels/tensor_table.py does for chunks).

1. ``_max_A_kernel``: the tile's RMS a, this step's A = beta_b A + (1 - beta_b) a (one value per tile), and
   its per-tensor max (atomic).
2. ``_step_kernel``, two passes over the tile, a slab of SUB rows at a time (bounded registers at any tile size):
   (1) T and v per element (read w, g, T, v; write T, v), summing w^2 (the same A as the max kernel's) and T^2;
   then the tile's A, om, B and group shrink max(0, 1 - lam B sqrt(n) / ||T||); (2) w = T shrink, reading back
   the T just written (from L2), with A and B stored on every element (the state keeps the parameter's shape, as
   in the other modes) and the tile's occupancy bit, so the map the masked matmul reads costs nothing extra.

Tiles are padded to powers of two for tl.arange and masked at their own size and at the weight's ragged edge.
When every array is 16-byte aligned and every width (weights' and tile's) a multiple of VECTOR (ALIGNED), the
masks are constant over VECTOR columns and the accesses are vectors. The device form (DEVICE_SCALARS) reads the
step's scalars as kernels/rda_step.py does (math.step_scalars); a set found_inf makes both kernels write nothing,
the occupancy maps included.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_cache import DeviceCache
from .math import (dual_average, finite_or_zero, group_shrink, load_f32, nonzeros, reweight_factor, step_scalars,
                   store, tensor_ptr)
from .tensor_table import TORCH_TO_TL, address_table, aligned, given_max_A, on_device

ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_OCC, ROW_ROWS, ROW_COLS = (tl.constexpr(i) for i in range(9))
# Elements a program holds at a time (a slab of SUB tile rows): at 8 warps, 4 per thread and array (one 16-byte
# access), ~50 registers. A whole 64 x 64 tile at 4 warps (32 per thread) took 255 registers and spilled.
SLAB = 1024
NUM_WARPS = 8
VECTOR = tl.constexpr(4)  # elements per vector access of a state array (16 bytes); widths must be multiples of it


@triton.jit
def _tile(table, n_tensors, tile_table, ROWS: tl.constexpr, COLS: tl.constexpr, ALIGNED: tl.constexpr):
    """(tensor, first row, first column, rows and columns in the tile, the weight's width, tile index in the
    map) of this program's tile."""
    c = tl.program_id(0)
    t = tl.load(tile_table + 3 * c)
    tile_row = tl.load(tile_table + 3 * c + 1)
    tile_col = tl.load(tile_table + 3 * c + 2)
    n_rows = tl.load(table + ROW_ROWS * n_tensors + t)
    n_cols = tl.load(table + ROW_COLS * n_tensors + t)
    if ALIGNED:  # the host checked: every width a multiple of VECTOR, so rows start at vector boundaries
        n_cols = tl.multiple_of(n_cols, VECTOR)
    r0, c0 = tile_row * ROWS, tile_col * COLS
    rows, cols = tl.minimum(ROWS, n_rows - r0), tl.minimum(COLS, n_cols - c0)
    return t, r0, c0, rows, cols, n_cols, tile_row * tl.cdiv(n_cols, COLS) + tile_col


@triton.jit
def _slab(r0, c0, rows, cols, n_cols, s, SUB: tl.constexpr, COLS_P: tl.constexpr):
    """Element offsets [SUB, COLS_P] of tile rows s.. and their mask (the tile's own size, the weight's edge)."""
    r = s + tl.arange(0, SUB)[:, None]
    c = tl.arange(0, COLS_P)[None, :]
    return (r0 + r) * n_cols + (c0 + c), (r < rows) & (c < cols)


@triton.jit
def _tile_sum_sq(w_ptr, r0, c0, rows, cols, n_cols, SUB: tl.constexpr, COLS_P: tl.constexpr):
    """sum(w^2) over the tile, slab by slab (the same order in both kernels, so both get the same A)."""
    acc = tl.zeros([SUB, COLS_P], tl.float32)
    for s in range(0, rows, SUB):
        offs, mask = _slab(r0, c0, rows, cols, n_cols, s, SUB, COLS_P)
        w = load_f32(w_ptr, offs, mask)
        acc += w * w
    return tl.sum(acc)


@triton.jit
def _max_A_kernel(table, n_tensors, tile_table, max_A, device_scalars, found_inf, beta_b,
                  DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                  ROWS: tl.constexpr, COLS: tl.constexpr, COLS_P: tl.constexpr, SUB: tl.constexpr):
    skip, _, _, _, beta_b, _ = step_scalars(device_scalars, found_inf, 0.0, 0.0, 0.0, beta_b, 0.0, DEVICE_SCALARS)
    if skip:
        return
    t, r0, c0, rows, cols, n_cols, _ = _tile(table, n_tensors, tile_table, ROWS, COLS, ALIGNED)
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    A_ptr = tensor_ptr(table, ROW_A, n_tensors, t, tl.float32, False)
    rms = tl.sqrt(_tile_sum_sq(w_ptr, r0, c0, rows, cols, n_cols, SUB, COLS_P) / (rows * cols).to(tl.float32))
    A_new = beta_b * tl.load(A_ptr + r0 * n_cols + c0) + (1.0 - beta_b) * rms
    tl.atomic_max(max_A + t, finite_or_zero(A_new))


@triton.jit
def _step_kernel(table, n_tensors, tile_table, max_A, nnz, inv_scale, device_scalars, found_inf,
                 lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                 ROWS: tl.constexpr, COLS: tl.constexpr, COLS_P: tl.constexpr, SUB: tl.constexpr):
    skip, lr, lam, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha,
                                                      DEVICE_SCALARS)
    t, r0, c0, rows, cols, n_cols, tile = _tile(table, n_tensors, tile_table, ROWS, COLS, ALIGNED)
    w_ptr = tensor_ptr(table, ROW_W, n_tensors, t, W_DTYPE, ALIGNED)
    g_ptr = tensor_ptr(table, ROW_G, n_tensors, t, G_DTYPE, ALIGNED)
    T_ptr = tensor_ptr(table, ROW_T, n_tensors, t, tl.float32, ALIGNED)
    B_ptr = tensor_ptr(table, ROW_B, n_tensors, t, tl.float32, ALIGNED)
    A_ptr = tensor_ptr(table, ROW_A, n_tensors, t, tl.float32, ALIGNED)
    v_ptr = tensor_ptr(table, ROW_V, n_tensors, t, tl.float32, ALIGNED)
    count = tl.zeros([SUB, COLS_P], tl.int32)
    if skip:  # GradScaler found infs: write nothing (the occupancy bit neither), count the weights as they are
        for s in range(0, rows, SUB):
            offs, mask = _slab(r0, c0, rows, cols, n_cols, s, SUB, COLS_P)
            count += nonzeros(load_f32(w_ptr, offs, mask), mask, W_DTYPE)
        tl.atomic_add(nnz + t, tl.sum(count).to(tl.int64))
        return
    # pass 1: T and v per element, with the sums of w^2 (the tile's A) and T^2 (its norm)
    sum_w = tl.zeros([SUB, COLS_P], tl.float32)
    sum_T = tl.zeros([SUB, COLS_P], tl.float32)
    for s in range(0, rows, SUB):
        offs, mask = _slab(r0, c0, rows, cols, n_cols, s, SUB, COLS_P)
        w = load_f32(w_ptr, offs, mask)
        sum_w += w * w
        T_new, v_new = dual_average(w, load_f32(g_ptr, offs, mask), load_f32(T_ptr, offs, mask),
                                    load_f32(v_ptr, offs, mask), inv_scale, lr, alpha, beta, weight_decay,
                                    HAS_SCALE, MAXIMIZE)
        T_new = tl.where(mask, T_new, 0.0)
        sum_T += T_new * T_new
        store(T_ptr, offs, mask, T_new)
        store(v_ptr, offs, mask, v_new)
    # the tile's A, om, B (A and B read at its first element) and its group shrink
    size = (rows * cols).to(tl.float32)
    first = r0 * n_cols + c0
    A_new = beta_b * tl.load(A_ptr + first) + (1.0 - beta_b) * tl.sqrt(tl.sum(sum_w) / size)
    if REWEIGHT:
        om = reweight_factor(A_new, tl.load(max_A + t), max_factor)
    else:
        om = 1.0
    B_new = alpha * tl.load(B_ptr + first) + lr * om
    shrink = group_shrink(tl.sqrt(tl.sum(sum_T)), lam * B_new, tl.sqrt(size))
    # pass 2: w = T shrink, reading back the T this program just wrote (from L2); the barrier orders those
    # writes before the reads whichever thread made them
    tl.debug_barrier()
    for s in range(0, rows, SUB):
        offs, mask = _slab(r0, c0, rows, cols, n_cols, s, SUB, COLS_P)
        w_new = load_f32(T_ptr, offs, mask) * shrink
        store(A_ptr, offs, mask, tl.zeros([SUB, COLS_P], tl.float32) + A_new)
        store(B_ptr, offs, mask, tl.zeros([SUB, COLS_P], tl.float32) + B_new)
        store(w_ptr, offs, mask, w_new)
        count += nonzeros(w_new, mask, W_DTYPE)
    occ_ptr = tl.load(table + ROW_OCC * n_tensors + t).to(tl.pointer_type(tl.uint8))
    tl.store(occ_ptr + tile, (shrink > 0).to(tl.uint8))
    tl.atomic_add(nnz + t, tl.sum(count).to(tl.int64))


_TILE_TABLES = DeviceCache(64)  # (shapes, block, device) -> tile table: built once, no host copy per step


def _tile_table(shapes: list[tuple[int, int]], block: tuple[int, int], device) -> torch.Tensor:
    """int64 [n_tiles, 3]: (tensor, tile row, tile col) of every tile, on the device (cached)."""
    rows, cols = block

    def make():
        entries = [(t, r, c) for t, (n, k) in enumerate(shapes)
                   for r in range(-(-n // rows)) for c in range(-(-k // cols))]
        return torch.tensor(entries, dtype=torch.int64, device=device)

    return _TILE_TABLES.get((tuple(shapes), tuple(block), device), make)


def rda_block_step(params, grads, T, B, A, v, occupancy, block, s, given_max=None, max_only=False) -> torch.Tensor:
    """Block-mode RDA over penalized 2-D weights (all contiguous, one param dtype and one grad dtype) with the
    step's scalars ``s`` (host values, or the device form: ``s.device`` and ``s.found_inf``); writes each
    weight's occupancy map (bool) and returns each weight's nonzero count. ``given_max``: the reweighting's max A
    per weight, instead of the max kernel's; ``max_only``: run the max kernel alone and return its maxes."""
    device = params[0].device
    n = len(params)
    occ_bytes = [o.view(torch.uint8) for o in occupancy]
    shapes = [tuple(p.shape) for p in params]
    table = address_table([list(params), list(grads), list(T), list(B), list(A), list(v), occ_bytes],
                          [[shape[0] for shape in shapes], [shape[1] for shape in shapes]], device)
    tiles = _tile_table(shapes, block, device)
    max_A, find_max = given_max_A(given_max, n, device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    rows, cols = block
    cols_p = triton.next_power_of_2(cols)
    sub = max(1, min(triton.next_power_of_2(rows), SLAB // cols_p))
    # (a slab smaller than SLAB takes fewer warps: 4 elements per thread)
    launch = dict(ROWS=rows, COLS=cols, COLS_P=cols_p, SUB=sub, num_warps=max(1, min(NUM_WARPS, sub * cols_p // 128)))
    # vector accesses when every array is 16-byte aligned and every tile row starts at a vector boundary
    vectors = (cols % VECTOR.value == 0 and all(shape[1] % VECTOR.value == 0 for shape in shapes)
               and aligned([*params, *grads, *T, *B, *A, *v]))
    grid = (tiles.shape[0],)
    w_dtype, g_dtype = TORCH_TO_TL[params[0].dtype], TORCH_TO_TL[grads[0].dtype]
    device_form = s.device is not None
    device_scalars = s.device if device_form else max_A  # (an unused pointer)
    found_inf = s.found_inf if s.found_inf is not None else torch.zeros((), device=device) if device_form else max_A
    with on_device(device):
        if find_max and (s.reweight or max_only):
            _max_A_kernel[grid](table, n, tiles, max_A, device_scalars, found_inf, s.beta_b,
                                DEVICE_SCALARS=device_form, W_DTYPE=w_dtype, ALIGNED=vectors, **launch)
        if max_only:
            return max_A
        _step_kernel[grid](table, n, tiles, max_A, nnz, s.inv_scale if s.inv_scale is not None else max_A,
                           device_scalars, found_inf, s.lr, s.lam, s.beta, s.beta_b, s.averaging, s.weight_decay,
                           s.max_factor, REWEIGHT=s.reweight, MAXIMIZE=s.maximize,
                           HAS_SCALE=s.inv_scale is not None, DEVICE_SCALARS=device_form, W_DTYPE=w_dtype,
                           G_DTYPE=g_dtype, ALIGNED=vectors, **launch)
    return nnz
