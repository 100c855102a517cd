"""Which implementation runs a step. The reference (pure torch) defines the math; kernels are faster copies of it.

Backends: "torch" (reference, any device), and, as they land, "triton" (CUDA), "cuda" and "cpu" (the native
extension). "auto" picks the fastest one available for the parameters' device.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import reference

BACKEND_NAMES = ("auto", "torch", "triton", "cuda", "cpu")

# name -> module with rda_step(...) and grda_step(...) of the reference's signatures
_IMPLEMENTATIONS: dict[str, ModuleType] = {"torch": reference}


def backends() -> list[str]:
    """The backends this installation can run (besides "auto")."""
    return list(_IMPLEMENTATIONS)


def resolve(name: str, device: torch.device) -> str:
    """The concrete backend for a requested name on a device; raises naming `backend` if it cannot run."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}; got {name!r}")
    if name == "auto":
        return "torch"
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"backend={name!r} is not available in this installation (available: {', '.join(backends())})")
    return name


def implementation(name: str) -> ModuleType:
    return _IMPLEMENTATIONS[name]
