"""Fused RDA step in block granularity (docs/ALGORITHMS.md section 3): one program per (rows x cols) tile of
a 2-D weight, over all such tiles of a param group (a tile table, as kernels/tensor_table.py does for chunks).

1. ``_max_A_kernel``: the tile's RMS a, this step's A = beta_b A + (1 - beta_b) a (one value per tile), and
   its per-tensor max (atomic).
2. ``_step_kernel``: the same A, om, B (per tile), then T and v per element, the tile's ||T||, the group prox
   w = T max(0, 1 - lam B sqrt(n) / ||T||), and the tile's occupancy bit: all in one pass over the tile, so the
   map the masked matmul reads costs nothing extra. A and B are stored on every element (the state keeps the
   parameter's shape, as in the other modes).

Tiles are padded to powers of two for tl.arange and masked at their own size and at the weight's ragged edge.
The device form (DEVICE_SCALARS) reads the step's scalars as kernels/rda_step.py does (math.step_scalars); a set
found_inf makes both kernels write nothing, the occupancy maps included.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .math import (count_nonzero, dual_average, finite_or_zero, group_shrink, load_f32, reweight_factor,
                   step_scalars, store)
from .tensor_table import TORCH_TO_TL, address_table

ROW_W, ROW_G, ROW_T, ROW_B, ROW_A, ROW_V, ROW_OCC, ROW_ROWS, ROW_COLS = (tl.constexpr(i) for i in range(9))


@triton.jit
def _tile(table, n_tensors, tile_table, c, ROWS: tl.constexpr, COLS: tl.constexpr,
          ROWS_P: tl.constexpr, COLS_P: tl.constexpr):
    """(tensor, element offsets [ROWS_P, COLS_P], mask, first element, tile index in the map) of tile c."""
    t = tl.load(tile_table + 3 * c)
    tile_row = tl.load(tile_table + 3 * c + 1)
    tile_col = tl.load(tile_table + 3 * c + 2)
    n_rows = tl.load(table + ROW_ROWS * n_tensors + t)
    n_cols = tl.load(table + ROW_COLS * n_tensors + t)
    r0, c0 = tile_row * ROWS, tile_col * COLS
    rows = tl.arange(0, ROWS_P)[:, None]
    cols = tl.arange(0, COLS_P)[None, :]
    mask = (rows < ROWS) & (cols < COLS) & (r0 + rows < n_rows) & (c0 + cols < n_cols)
    offs = (r0 + rows) * n_cols + (c0 + cols)
    return t, offs, mask, r0 * n_cols + c0, tile_row * tl.cdiv(n_cols, COLS) + tile_col


@triton.jit
def _tile_A(table, n_tensors, t, offs, mask, first, beta_b, W_DTYPE: tl.constexpr):
    """This step's A of the tile: beta_b A + (1 - beta_b) RMS(w_tile), A read at the tile's first element."""
    w = load_f32(table, ROW_W, n_tensors, t, offs, mask, W_DTYPE)
    count = tl.sum(mask.to(tl.float32))
    rms = tl.sqrt(tl.sum(w * w) / count)
    A_ptr = tl.load(table + ROW_A * n_tensors + t).to(tl.pointer_type(tl.float32))
    return beta_b * tl.load(A_ptr + first) + (1.0 - beta_b) * rms, w, count


@triton.jit
def _max_A_kernel(table, n_tensors, tile_table, max_A, device_scalars, found_inf, beta_b,
                  DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr,
                  ROWS: tl.constexpr, COLS: tl.constexpr, ROWS_P: tl.constexpr, COLS_P: tl.constexpr):
    skip, _, _, _, beta_b, _ = step_scalars(device_scalars, found_inf, 0.0, 0.0, 0.0, beta_b, 0.0, DEVICE_SCALARS)
    if skip:
        return
    t, offs, mask, first, _ = _tile(table, n_tensors, tile_table, tl.program_id(0), ROWS, COLS, ROWS_P, COLS_P)
    A_new, w, count = _tile_A(table, n_tensors, t, offs, mask, first, beta_b, W_DTYPE)
    tl.atomic_max(max_A + t, finite_or_zero(A_new))


@triton.jit
def _step_kernel(table, n_tensors, tile_table, max_A, nnz, inv_scale, device_scalars, found_inf,
                 lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                 REWEIGHT: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_SCALE: tl.constexpr,
                 DEVICE_SCALARS: tl.constexpr, W_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                 ROWS: tl.constexpr, COLS: tl.constexpr, ROWS_P: tl.constexpr, COLS_P: tl.constexpr):
    skip, lr, lam, beta, beta_b, alpha = step_scalars(device_scalars, found_inf, lr, lam, beta, beta_b, alpha,
                                                      DEVICE_SCALARS)
    t, offs, mask, first, tile = _tile(table, n_tensors, tile_table, tl.program_id(0), ROWS, COLS, ROWS_P, COLS_P)
    A_new, w, count = _tile_A(table, n_tensors, t, offs, mask, first, beta_b, W_DTYPE)
    if skip:  # GradScaler found infs: write nothing (the occupancy bit neither), count the weights as they are
        tl.atomic_add(nnz + t, count_nonzero(w, mask, W_DTYPE).to(tl.int64))
        return
    if REWEIGHT:
        m = tl.load(max_A + t)
        om = reweight_factor(A_new, m, max_factor)
    else:
        om = 1.0
    B_ptr = tl.load(table + ROW_B * n_tensors + t).to(tl.pointer_type(tl.float32))
    B_new = alpha * tl.load(B_ptr + first) + lr * om

    T_new, v_new = dual_average(w, load_f32(table, ROW_G, n_tensors, t, offs, mask, G_DTYPE),
                                load_f32(table, ROW_T, n_tensors, t, offs, mask, tl.float32),
                                load_f32(table, ROW_V, n_tensors, t, offs, mask, tl.float32),
                                inv_scale, lr, alpha, beta, weight_decay, HAS_SCALE, MAXIMIZE)
    T_new = tl.where(mask, T_new, 0.0)
    norm = tl.sqrt(tl.sum(T_new * T_new))
    shrink = group_shrink(norm, lam * B_new, tl.sqrt(count))
    w_new = T_new * shrink

    store(table, ROW_A, n_tensors, t, offs, mask, tl.zeros_like(T_new) + A_new, tl.float32)
    store(table, ROW_B, n_tensors, t, offs, mask, tl.zeros_like(T_new) + B_new, tl.float32)
    store(table, ROW_T, n_tensors, t, offs, mask, T_new, tl.float32)
    store(table, ROW_V, n_tensors, t, offs, mask, v_new, tl.float32)
    store(table, ROW_W, n_tensors, t, offs, mask, w_new, W_DTYPE)
    occ_ptr = tl.load(table + ROW_OCC * n_tensors + t).to(tl.pointer_type(tl.uint8))
    tl.store(occ_ptr + tile, (shrink > 0).to(tl.uint8))
    tl.atomic_add(nnz + t, count_nonzero(w_new, mask, W_DTYPE).to(tl.int64))


def _tile_table(shapes: list[tuple[int, int]], block: tuple[int, int], device) -> torch.Tensor:
    """int64 [n_tiles, 3]: (tensor, tile row, tile col) of every tile."""
    rows, cols = block
    entries = [(t, r, c) for t, (n, k) in enumerate(shapes) for r in range(-(-n // rows)) for c in range(-(-k // cols))]
    table = torch.tensor(entries, dtype=torch.int64)
    return table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table


def rda_block_step(params, grads, T, B, A, v, occupancy, block, s) -> torch.Tensor:
    """Block-mode RDA over penalized 2-D weights (all contiguous, one param dtype and one grad dtype) with the
    step's scalars ``s`` (host values, or the device form: ``s.device`` and ``s.found_inf``); writes each
    weight's occupancy map (bool) and returns each weight's nonzero count."""
    device = params[0].device
    n = len(params)
    occ_bytes = [o.view(torch.uint8) for o in occupancy]
    shapes = [tuple(p.shape) for p in params]
    table = address_table([list(params), list(grads), list(T), list(B), list(A), list(v), occ_bytes],
                          [[shape[0] for shape in shapes], [shape[1] for shape in shapes]], device)
    tiles = _tile_table(shapes, block, device)
    max_A = torch.zeros(n, dtype=torch.float32, device=device)
    nnz = torch.zeros(n, dtype=torch.int64, device=device)
    rows, cols = block
    sizes = dict(ROWS=rows, COLS=cols, ROWS_P=triton.next_power_of_2(rows), COLS_P=triton.next_power_of_2(cols))
    grid = (tiles.shape[0],)
    w_dtype, g_dtype = TORCH_TO_TL[params[0].dtype], TORCH_TO_TL[grads[0].dtype]
    on_device = s.device is not None
    device_scalars = s.device if on_device else max_A  # (an unused pointer)
    found_inf = s.found_inf if s.found_inf is not None else torch.zeros((), device=device) if on_device else max_A
    if s.reweight:
        _max_A_kernel[grid](table, n, tiles, max_A, device_scalars, found_inf, s.beta_b,
                            DEVICE_SCALARS=on_device, W_DTYPE=w_dtype, **sizes)
    _step_kernel[grid](table, n, tiles, max_A, nnz, s.inv_scale if s.inv_scale is not None else max_A,
                       device_scalars, found_inf, s.lr, s.lam, s.beta, s.beta_b, s.averaging, s.weight_decay,
                       s.max_factor, REWEIGHT=s.reweight, MAXIMIZE=s.maximize, HAS_SCALE=s.inv_scale is not None,
                       DEVICE_SCALARS=on_device, W_DTYPE=w_dtype, G_DTYPE=g_dtype, **sizes)
    return nnz
