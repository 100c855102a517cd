"""Compressed checkpoints: a state dict's zeros left out of the file.

:func:`save_sparse` writes a model's (or a state dict's) tensors to a safetensors file, each floating tensor in the
smallest of three layouts:

- ``dense``: the tensor as it is (the key is the state dict's own);
- ``bitmask``: ``<key>::mask``, one bit per element (uint8, element ``8 j + i`` in bit ``i`` of byte ``j``), and
  ``<key>::values``, the stored elements in row-major order;
- ``index``: ``<key>::index``, the flat positions of the stored elements (int32, int64 past 2**31 elements),
  ascending, and ``<key>::values``.

Every element that is not zero is stored, NaN and inf included, so the round trip is exact: each value comes
back bit for bit, except that a zero of either sign loads as +0.0 (as in any sparse format: pruning by a mask
multiply leaves -0.0 wherever the weight was negative, half of all zeros, and keeping their sign would cost a
second mask). ``values_dtype=torch.float16`` or ``bfloat16`` stores the values rounded, the one lossy option. Other tensors
(integer and bool buffers) are always dense. The layouts and shapes are in the file's metadata (key
``sparse_rda``, JSON); a safetensors file without it loads as a plain dense state dict.

:func:`load_sparse` reads and checks the whole file before it touches the model: a truncated or corrupt file, a
key the model lacks or lacks from it, or a shape that differs raises ``ValueError`` naming the tensor and leaves
the model as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn

FORMAT = "sparse_rda.checkpoint/1"
LAYOUTS = ("dense", "bitmask", "index")
_PARTS = ("::mask", "::values", "::index")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:  # a dependency of the package; a machine without a registry may lack it
        raise ImportError("sparse_rda's compressed checkpoints need safetensors: pip install safetensors") from err
    return safetensors


def save_sparse(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                values_dtype: torch.dtype | None = None) -> dict:
    """Write the tensors with their zeros left out (module docstring). ``values_dtype`` (None, torch.float16 or
    torch.bfloat16): store the values of the floating tensors in that dtype (lossy; refused where a finite value
    would overflow it). Returns a summary: ``{"file_bytes", "dense_bytes", "layouts": {key: layout}}``."""
    safetensors = _safetensors()
    state = _state_dict(model_or_state_dict)
    if values_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"values_dtype must be None, torch.float16 or torch.bfloat16; got {values_dtype}")
    tensors, layouts, dense_bytes = {}, {}, 0
    for key, t in state.items():
        if key.endswith(_PARTS):
            raise ValueError(f"state dict key {key!r} ends with one of {_PARTS}, which the file format reserves")
        t = t.detach().cpu()
        dense_bytes += t.numel() * t.element_size()
        layout, parts = _encode(key, t, values_dtype)
        layouts[key] = {"layout": layout, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        tensors.update(parts)
    metadata = {"format": FORMAT, "tensors": json.dumps(layouts)}
    safetensors.torch.save_file(tensors, os.fspath(path), metadata=metadata)
    return {"file_bytes": os.path.getsize(path), "dense_bytes": dense_bytes,
            "layouts": {k: v["layout"] for k, v in layouts.items()}}


def load_sparse(path: str | os.PathLike, model: nn.Module | None = None, *, strict: bool = True,
                device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Read a file :func:`save_sparse` wrote (or any safetensors state dict) and return its dense state dict.
    With ``model``: check every tensor against ``model.state_dict()`` (the same keys when ``strict``, the same
    shapes always), then load it into the model; nothing is copied unless everything checks. ``device``: where
    the returned tensors go (default: the CPU; the model's load_state_dict copies onto its own devices)."""
    state = _decode_file(path)
    if model is not None:
        _check_against(model.state_dict(), state, strict, path)
        model.load_state_dict(state, strict=strict)
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    return state


# ----------------------------------------------------------------------------------------------------------
# encoding


def _state_dict(model_or_state_dict) -> dict[str, torch.Tensor]:
    state = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
             else dict(model_or_state_dict))
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(t).__name__}, not a tensor; save_sparse writes "
                            "tensors only")
        if t.is_sparse or t.layout != torch.strided:
            raise TypeError(f"state dict entry {key!r} has layout {t.layout}; save_sparse takes strided tensors")
    return state


def _stored(t: torch.Tensor) -> torch.Tensor:
    """Which elements a sparse layout keeps: the nonzeros (NaN too)."""
    return t != 0


def _encode(key: str, t: torch.Tensor, values_dtype) -> tuple[str, dict[str, torch.Tensor]]:
    """The smallest layout of a tensor and its parts (ties go to dense)."""
    if not t.is_floating_point() or t.numel() == 0:
        return "dense", {key: t.contiguous().clone()}
    flat = t.reshape(-1)
    keep = _stored(flat)
    nnz = int(keep.sum())
    out_dtype = values_dtype or t.dtype
    value_bytes = torch.empty((), dtype=out_dtype).element_size()
    index_dtype = torch.int32 if t.numel() < 2 ** 31 else torch.int64
    sizes = {"dense": t.numel() * t.element_size(),
             "bitmask": -(-t.numel() // 8) + nnz * value_bytes,
             "index": nnz * (torch.empty((), dtype=index_dtype).element_size() + value_bytes)}
    layout = min(LAYOUTS, key=lambda name: sizes[name])  # LAYOUTS' order breaks ties: dense first
    if layout == "dense":
        return "dense", {key: t.contiguous().clone()}
    values = _cast_values(key, flat[keep], out_dtype)
    if layout == "bitmask":
        return layout, {key + "::mask": _pack_bits(keep), key + "::values": values}
    return layout, {key + "::index": keep.nonzero().reshape(-1).to(index_dtype), key + "::values": values}


def _cast_values(key: str, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    cast = values.to(dtype)
    if dtype != values.dtype and bool((torch.isfinite(values) & ~torch.isfinite(cast)).any()):
        raise ValueError(f"values_dtype={dtype}: tensor {key!r} has finite values beyond its range")
    return cast


def _pack_bits(keep: torch.Tensor) -> torch.Tensor:
    padded = torch.zeros(-(-keep.numel() // 8) * 8, dtype=torch.uint8)
    padded[:keep.numel()] = keep
    bits = padded.view(-1, 8)
    packed = bits[:, 0].clone()
    for i in range(1, 8):
        packed |= bits[:, i] << i
    return packed


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)[:numel]


# ----------------------------------------------------------------------------------------------------------
# decoding, every part checked before anything is returned


def _decode_file(path) -> dict[str, torch.Tensor]:
    safetensors = _safetensors()
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            parts = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"{os.fspath(path)}: not a readable safetensors file ({err})") from err
    if metadata.get("format") is None:  # a plain safetensors state dict: every tensor dense
        return parts
    if metadata["format"] != FORMAT:
        raise ValueError(f"{os.fspath(path)}: format {metadata['format']!r}, this version reads {FORMAT!r}")
    try:
        layouts = json.loads(metadata["tensors"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{os.fspath(path)}: the metadata's tensor table is missing or not JSON") from err
    state = {key: _decode(key, entry, parts, path) for key, entry in layouts.items()}
    expected = {k for key, e in layouts.items() for k in _part_names(key, e["layout"])}
    if set(parts) != expected:
        raise ValueError(f"{os.fspath(path)}: tensors {sorted(set(parts) ^ expected)} do not match the metadata")
    return state


def _part_names(key: str, layout: str) -> tuple[str, ...]:
    return {"dense": (key,), "bitmask": (key + "::mask", key + "::values"),
            "index": (key + "::index", key + "::values")}[layout]


def _decode(key: str, entry: dict, parts: dict, path) -> torch.Tensor:
    where = f"{os.fspath(path)}: tensor {key!r}"
    try:
        layout, shape, dtype = entry["layout"], torch.Size(entry["shape"]), getattr(torch, entry["dtype"])
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: bad metadata entry {entry!r}") from err
    if layout not in LAYOUTS or not isinstance(dtype, torch.dtype) or any(
            not isinstance(n, int) or n < 0 for n in entry["shape"]):
        raise ValueError(f"{where}: bad metadata entry {entry!r}")
    missing = [p for p in _part_names(key, layout) if p not in parts]
    if missing:
        raise ValueError(f"{where}: the file lacks {missing}")
    if layout == "dense":
        t = parts[key]
        if t.shape != shape or t.dtype != dtype:
            raise ValueError(f"{where}: stored as {t.dtype} {tuple(t.shape)}, the metadata says {dtype} "
                             f"{tuple(shape)}")
        return t
    numel = shape.numel()
    values = parts[key + "::values"]
    if values.dim() != 1 or not values.is_floating_point():
        raise ValueError(f"{where}: values must be a 1-D floating tensor, got {values.dtype} {tuple(values.shape)}")
    if layout == "bitmask":
        packed = parts[key + "::mask"]
        if packed.dtype != torch.uint8 or packed.shape != (-(-numel // 8),):
            raise ValueError(f"{where}: mask must be {-(-numel // 8)} uint8 bytes, got {packed.dtype} "
                             f"{tuple(packed.shape)}")
        keep = _unpack_bits(packed, numel)
        if int(keep.sum()) != values.numel():
            raise ValueError(f"{where}: the mask marks {int(keep.sum())} elements, the file has {values.numel()}"
                             " values")
        index = keep.nonzero().reshape(-1)
    else:
        index = parts[key + "::index"]
        if index.dtype not in (torch.int32, torch.int64) or index.shape != values.shape:
            raise ValueError(f"{where}: index must be int32/int64 of the values' length {values.numel()}, got "
                             f"{index.dtype} {tuple(index.shape)}")
        index = index.long()
        if index.numel() and (index[0] < 0 or index[-1] >= numel or bool((index[1:] <= index[:-1]).any())):
            raise ValueError(f"{where}: index must ascend strictly within [0, {numel})")
    flat = torch.zeros(numel, dtype=dtype)
    flat[index] = values.to(dtype)
    return flat.view(shape)


def _check_against(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], strict: bool,
                   path) -> None:
    where = os.fspath(path)
    if strict:
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{where} does not match the model: missing {missing}, unexpected {unexpected}")
    for key, t in state.items():
        if key in expected and expected[key].shape != t.shape:
            raise ValueError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, the model's is "
                             f"{tuple(expected[key].shape)}")
