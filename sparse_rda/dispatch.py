"""Which implementation runs a step. The reference (pure torch) defines the math; kernels are faster copies of it.

Backends: "torch" (reference, any device), and, as they land, "triton" (CUDA), "cuda" and "cpu" (the native
extension). "auto" picks the fastest one available for the parameters' device.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import reference

BACKEND_NAMES = ("auto", "torch", "triton", "cuda", "cpu")

# name -> module with rda_step(...) and grda_step(...) of the reference's signatures
_IMPLEMENTATIONS: dict[str, ModuleType] = {"torch": reference}

try:
    from . import kernels as _triton_kernels
except ImportError:  # no triton: the reference (and native backends) still work
    _triton_kernels = None
else:
    _IMPLEMENTATIONS["triton"] = _triton_kernels


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backends() -> list[str]:
    """The backends this installation can run (besides "auto")."""
    return list(_IMPLEMENTATIONS)


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "triton":  # compiled for CUDA devices; the interpreter runs it on CPU tensors
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return True


def resolve(name: str, device: torch.device) -> str:
    """The concrete backend for a requested name on a device; raises naming `backend` if it cannot run."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}; got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" and "triton" in _IMPLEMENTATIONS else "torch"
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"backend={name!r} is not available in this installation (available: {', '.join(backends())})")
    if not _runs_on(name, device):
        raise ValueError(f"backend={name!r} cannot run on {device.type} tensors")
    return name


def implementation(name: str) -> ModuleType:
    return _IMPLEMENTATIONS[name]
