"""Which implementation runs a step. The reference (pure torch) defines the math; kernels are faster copies of it.

Backends: "torch" (the reference, any device), "triton" (kernels/, CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cpu" and "cuda" (the native extension, csrc/). "auto" picks, for CUDA tensors, the native
CUDA kernels, else Triton; for CPU tensors the native CPU kernels; else the reference. Capturable groups need a
kernel backend (the reference reads its scalars on the host).
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import native, reference

BACKEND_NAMES = ("auto", "torch", "triton", "cuda", "cpu")
# parameter dtypes the kernel backends take; "auto" gives a group with others (float64) to the reference
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# name -> module with rda_step(...) and grda_step(...) of the reference's signatures
_IMPLEMENTATIONS: dict[str, ModuleType] = {"torch": reference}
# name -> why this installation lacks it (for the error that names `backend`)
_MISSING: dict[str, str] = {}

try:
    from . import kernels as _triton_kernels
except ImportError as err:  # no triton: the reference (and native backends) still work
    _MISSING["triton"] = f"triton cannot be imported ({err}); pip install triton"
else:
    _IMPLEMENTATIONS["triton"] = _triton_kernels
for _device_type in ("cpu", "cuda"):
    if native.has_kernels(_device_type):
        _IMPLEMENTATIONS[_device_type] = native
    else:
        _MISSING[_device_type] = native.missing_reason(_device_type)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def installed() -> list[str]:
    """The backends this installation has, whether or not this machine can run them now."""
    return list(_IMPLEMENTATIONS)


def backends() -> list[str]:
    """The backends (besides "auto") that can run on this machine now: installed, with a device to run on
    (triton: a CUDA device, or CPU tensors under TRITON_INTERPRET=1; cuda: a CUDA device)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [name for name in _IMPLEMENTATIONS if any(_runs_on(name, device) for device in devices)]


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "triton":  # compiled for CUDA devices; the interpreter runs it on CPU tensors
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    if name in ("cpu", "cuda"):
        return device.type == name
    return True


def _auto(device: torch.device) -> str:
    preference = {"cuda": ["cuda", "triton"], "cpu": ["cpu"]}.get(device.type, [])
    return next((name for name in preference if name in _IMPLEMENTATIONS), "torch")


def resolve(name: str, device: torch.device, capturable: bool = False, dtypes=()) -> str:
    """The concrete backend for a requested name on a device; raises naming `backend` if it cannot run.
    capturable: the group's option (not every backend implements it); dtypes: its parameters' dtypes."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}; got {name!r}")
    other_dtypes = sorted({str(d) for d in dtypes if d not in KERNEL_DTYPES})
    if name == "auto":
        name = "torch" if other_dtypes and not capturable else _auto(device)
    if other_dtypes and name != "torch":
        raise ValueError(f"backend={name!r} takes float32, bfloat16 and float16 parameters; this group has "
                         f"{', '.join(other_dtypes)} (backend='torch' runs those)")
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"backend={name!r} is not available in this installation (available here: "
                         f"{', '.join(backends())}): {_MISSING[name]}")
    if not _runs_on(name, device):
        where = {"triton": "CUDA tensors, or CPU tensors under TRITON_INTERPRET=1", "cpu": "CPU tensors",
                 "cuda": "CUDA tensors"}[name]
        raise ValueError(f"backend={name!r} cannot run on {device.type} tensors (it runs {where})")
    if capturable and name == "torch":
        raise ValueError("capturable=True needs a kernel backend ('triton', 'cuda' or 'cpu'); the reference "
                         "(backend='torch') reads its scalars on the host")
    return name


def implementation(name: str) -> ModuleType:
    return _IMPLEMENTATIONS[name]
