"""Which implementation runs a step: the backends, each registered once here with the contract's two functions
(sparse_rda/step.py) and where it runs. The reference (pure torch) defines the math; kernels are faster copies.

Backends: "torch" (the reference, any device), "triton" (kernels/, CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cpu" and "cuda" (the native extension, csrc/). "auto" picks, for CUDA tensors, the native
CUDA kernels, else Triton; for CPU tensors the native CPU kernels; else the reference. Capturable groups need a
kernel backend (the reference reads its scalars on the host).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import native, opaque, reference

# parameter dtypes the kernel backends take; "auto" gives a group with others (float64) to the reference
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Backend:
    """A backend: its implementations of the contract (sparse_rda/step.py; rda_max_A serves sharded tensors
    only, so it runs eagerly, never behind the opaque ops), the devices it runs on (``where``
    says so in errors), whether it takes capturable groups (device scalars, no host sync) and whether dynamo
    can trace its functions (torch ops and plain torch code); an untraceable one runs behind opaque ops in a
    compiled step (sparse_rda/opaque.py)."""

    name: str
    rda_step: Callable
    rda_max_A: Callable
    grda_step: Callable
    runs_on: Callable[[torch.device], bool]
    where: str
    capturable: bool = True
    traceable: bool = True


_BACKENDS: dict[str, Backend] = {}
_OPAQUE: dict[str, Backend] = {}  # untraceable backends behind opaque ops, for compiled steps (opaque.py)
# name -> why this installation lacks it (for the error that names `backend`)
_MISSING: dict[str, str] = {}


def register(backend: Backend) -> None:
    """Make a backend selectable as ``backend=<name>``."""
    _BACKENDS[backend.name] = backend
    if not backend.traceable:  # (made here, not while tracing: dynamo defers Python side effects)
        _OPAQUE[backend.name] = opaque.wrap(backend)


register(Backend("torch", reference.rda_step, reference.rda_max_A, reference.grda_step, lambda device: True,
                 "tensors on any device",
                 capturable=False))
try:
    import triton  # noqa: F401  (the kernel modules import it too; this names the missing package)

    from .kernels.grda_step import grda_step as _triton_grda_step
    from .kernels.rda_step import rda_max_A as _triton_rda_max_A
    from .kernels.rda_step import rda_step as _triton_rda_step
except ImportError as err:  # no triton: the reference (and native backends) still work
    _MISSING["triton"] = f"triton cannot be imported ({err}); pip install triton"
else:  # compiled for CUDA devices; the interpreter runs it on CPU tensors
    register(Backend("triton", _triton_rda_step, _triton_rda_max_A, _triton_grda_step,
                     lambda device: device.type == "cuda" or (device.type == "cpu" and triton_interpreted()),
                     "CUDA tensors, or CPU tensors under TRITON_INTERPRET=1", traceable=False))
for _device_type in ("cpu", "cuda"):
    if native.has_kernels(_device_type):
        register(Backend(_device_type, native.rda_step, native.rda_max_A, native.grda_step,
                         lambda device, kind=_device_type: device.type == kind, f"{_device_type.upper()} tensors"))
    else:
        _MISSING[_device_type] = native.missing_reason(_device_type)

# what ``backend=`` accepts: the built-in names (installed here or not), then any other registered one
BACKEND_NAMES = ("auto", "torch", "triton", "cuda", "cpu")
BACKEND_NAMES += tuple(name for name in _BACKENDS if name not in BACKEND_NAMES)


def installed() -> list[str]:
    """The backends this installation has, whether or not this machine can run them now."""
    return list(_BACKENDS)


def backends() -> list[str]:
    """The backends (besides "auto") that can run on this machine now: installed, with a device to run on
    (triton: a CUDA device, or CPU tensors under TRITON_INTERPRET=1; cuda: a CUDA device)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [name for name in _BACKENDS if any(_runs_on(name, device) for device in devices)]


def _runs_on(name: str, device: torch.device) -> bool:
    return _BACKENDS[name].runs_on(device)


def _auto(device: torch.device) -> str:
    preference = {"cuda": ["cuda", "triton"], "cpu": ["cpu"]}.get(device.type, [])
    return next((name for name in preference if name in _BACKENDS), "torch")


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
    if name not in _BACKENDS:
        raise ValueError(f"backend={name!r} is not available in this installation (available here: "
                         f"{', '.join(backends())}): {_MISSING[name]}")
    chosen = _BACKENDS[name]
    if not chosen.runs_on(device):
        raise ValueError(f"backend={name!r} cannot run on {device.type} tensors (it runs {chosen.where})")
    if capturable and not chosen.capturable:
        raise ValueError(f"capturable=True needs a kernel backend ('triton', 'cuda' or 'cpu'); backend={name!r} "
                         "reads its scalars on the host")
    return name


def backend(name: str) -> Backend:
    """A resolved backend's implementations; while torch.compile traces, an untraceable backend's behind its
    opaque ops."""
    chosen = _BACKENDS[name]
    return _OPAQUE[name] if torch.compiler.is_compiling() and not chosen.traceable else chosen
