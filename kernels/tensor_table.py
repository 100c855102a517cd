"""Multi-tensor apply for Triton: one launch walks many tensors through a table of (tensor, offset) chunks.

Each tensor contributes ceil(numel / CHUNK) chunks; program c handles chunk c of tensor chunk_tensor[c],
starting at chunk_start[c]. Tensor addresses go in an int64 table the kernel casts back to pointers, so any
set of separately allocated tensors (params, grads, state) is one launch. The chunk table depends only on
the tensors' sizes and is cached. The address table is cached by its contents: when the same tensors come
back (static grads, as CUDA graphs need) a step copies nothing to the device; otherwise one copy.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import torch
import triton.language as tl

# the kernels' element types for the parameter and gradient dtypes they accept
TORCH_TO_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

# Elements per program: large enough to amortize the table lookups, small enough to fill a GPU.
# Read at each launch, so tests can shrink it to cover many chunks with small tensors.
CHUNK = 1 << 16


@lru_cache(maxsize=64)
def _chunk_table(numels: tuple[int, ...], device: torch.device, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    tensor_ids, starts = [], []
    for i, n in enumerate(numels):
        for start in range(0, n, chunk):
            tensor_ids.append(i)
            starts.append(start)
    return (torch.tensor(tensor_ids, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int64, device=device))


def chunk_table(numels: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chunk_tensor int32, chunk_start int64, chunk size) on the device, for tensors of these sizes."""
    return (*_chunk_table(tuple(numels), device, CHUNK), CHUNK)


_TABLES: OrderedDict = OrderedDict()  # (dtype, device, contents) -> device tensor, least recently used first
_TABLES_KEPT = 32


def _to_device(values: tuple, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    key = (dtype, device, shape, values)
    table = _TABLES.get(key)
    if table is None:
        table = torch.tensor(values, dtype=dtype).reshape(shape)
        if device.type == "cuda":
            table = table.pin_memory().to(device, non_blocking=True)
        _TABLES[key] = table
        if len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return table


def address_table(columns: list[list[torch.Tensor | None]], int_rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """int64 [len(columns) + len(int_rows), n_tensors]: the addresses of each column's tensors (0 for None),
    then the integer rows (numels, group sizes, ...)."""
    values = [t.data_ptr() if t is not None else 0 for column in columns for t in column]
    for row in int_rows:
        values.extend(row)
    n_rows = len(columns) + len(int_rows)
    return _to_device(tuple(values), torch.int64, device, (n_rows, len(values) // n_rows))


def float_table(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A float32 vector of per-tensor values on the device."""
    return _to_device(tuple(values), torch.float32, device, (len(values),))


class Contiguous:
    """Contiguous stand-ins for tensors the kernels read or write flat; copies back those that were not."""

    def __init__(self, tensors: list[torch.Tensor], write_back: bool):
        self.originals = tensors
        self.tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]
        self.write_back = write_back

    def finish(self) -> None:
        if self.write_back:
            for orig, flat in zip(self.originals, self.tensors):
                if flat is not orig:
                    orig.copy_(flat)


def kernel_grads(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The grads in dtypes the kernels are compiled for: a float64 grad becomes a float32 copy (the step reads
    gradients in float32 anyway)."""
    return [g if g.dtype in TORCH_TO_TL else g.float() for g in grads]
