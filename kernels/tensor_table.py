"""Multi-tensor apply for Triton: one launch walks many tensors through a table of (tensor, offset) chunks.

Each tensor contributes ceil(numel / CHUNK) chunks; program c handles chunk c of tensor chunk_tensor[c],
starting at chunk_start[c]. Tensor addresses go in an int64 table the kernel casts back to pointers, so any
set of separately allocated tensors (params, grads, state) is one launch. The chunk table depends only on
the tensors' sizes and is cached. The address table is cached by its contents: when the same tensors come
back (static grads, as CUDA graphs need) a step copies nothing to the device; otherwise one copy. Launchers
launch under ``on_device`` (the tensors' GPU, not the current one) and pick the vector variants with ``aligned``.
"""

from __future__ import annotations

import contextlib

import torch
import triton.language as tl

from .device_cache import DeviceCache

# the kernels' element types for the parameter and gradient dtypes they accept
TORCH_TO_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

# Elements per program: at least ~4 programs per SM for a small model, so that each SM has several programs in
# flight and the last wave is short. ResNet-18 (11.7M params, 62 tensors) is 759 chunks of 16K on an H200's
# 132 SMs (5.8 per SM; 227 chunks of 64K were 1.7 per SM). A chunk still moves ~700 KB (RDA, fp32), which
# amortizes its few table loads. Read at each launch, so tests can shrink it (a multiple of the kernels' BLOCK).
CHUNK = 1 << 14

# Device tables, kept by content; a table a captured CUDA graph reads is never dropped (kernels/device_cache.py).
_CHUNK_TABLES = DeviceCache(64)  # (numels, device, chunk) -> (chunk_tensor, chunk_start)
_TABLES = DeviceCache(32)  # (dtype, device, shape, contents) -> device tensor


def on_device(device: torch.device):
    """Makes ``device`` current for a launch (a no-op off CUDA): Triton launches on the current device and
    stream, so tensors on another GPU would otherwise be read through the wrong device's address space."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def aligned(tensors, alignment: int = 16) -> bool:
    """Whether every tensor (None skipped) starts at a multiple of ``alignment`` bytes: the kernels' vector
    accesses need it. torch allocates at 256-byte boundaries; a view at an odd storage offset is not aligned."""
    return all(t is None or t.data_ptr() % alignment == 0 for t in tensors)


def _make_chunk_table(numels: tuple[int, ...], device: torch.device, chunk: int):
    tensor_ids, starts = [], []
    for i, n in enumerate(numels):
        for start in range(0, n, chunk):
            tensor_ids.append(i)
            starts.append(start)
    return (torch.tensor(tensor_ids, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int64, device=device))


def chunk_table(numels: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chunk_tensor int32, chunk_start int64, chunk size) on the device, for tensors of these sizes."""
    key = (tuple(numels), device, CHUNK)
    return (*_CHUNK_TABLES.get(key, lambda: _make_chunk_table(*key)), CHUNK)


def chunk_groups(numels: list[int], group_sizes: list[int], device: torch.device) -> torch.Tensor:
    """int64 per chunk, in chunk_table's order: the group (of group_sizes[tensor] contiguous elements) of the
    chunk's first element. Divided here, once: in a kernel a 64-bit division is a subroutine call, whose register
    saves spilled to the stack (triton 3.6, sm_90)."""
    key = ("groups", tuple(numels), tuple(group_sizes), device, CHUNK)

    def make():
        groups = [start // max(size, 1) for n, size in zip(numels, group_sizes) for start in range(0, n, CHUNK)]
        return torch.tensor(groups, dtype=torch.int64, device=device)

    return _CHUNK_TABLES.get(key, make)


def device_table(values: tuple, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """``values`` as a device tensor of this shape, copied from the host once per content (cached)."""
    def make():
        table = torch.tensor(values, dtype=dtype).reshape(shape)
        return table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table

    return _TABLES.get((dtype, device, shape, values), make)


def address_table(columns: list[list[torch.Tensor | None]], int_rows: list[list[int]],
                  device: torch.device) -> torch.Tensor:
    """int64 [len(columns) + len(int_rows), n_tensors]: the addresses of each column's tensors (0 for None),
    then the integer rows (numels, group sizes, ...)."""
    values = [t.data_ptr() if t is not None else 0 for column in columns for t in column]
    for row in int_rows:
        values.extend(row)
    n_rows = len(columns) + len(int_rows)
    return device_table(tuple(values), torch.int64, device, (n_rows, len(values) // n_rows))


def float_table(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A float32 vector of per-tensor values on the device."""
    return device_table(tuple(values), torch.float32, device, (len(values),))


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


def given_max_A(max_A: torch.Tensor | None, n: int, device) -> tuple[torch.Tensor, bool]:
    """(the per-tensor max buffer the step kernel reads, whether the max kernel must fill it): a caller's maxes
    as float32 on the device (checked: the kernels read n values), else zeros to fill."""
    if max_A is None:
        return torch.zeros(n, dtype=torch.float32, device=device), True
    if max_A.numel() != n or not max_A.is_floating_point() or max_A.device != device:
        raise ValueError(f"max_A must hold {n} floating values on {device}, got {max_A.dtype} of shape "
                         f"{tuple(max_A.shape)} on {max_A.device}")
    return max_A.to(torch.float32).contiguous().reshape(n), False
