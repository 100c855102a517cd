"""A group step's scalars, built once per step here and read by every backend: host floats, and in capturable
mode the values that change during training as device tensors (a CUDA graph replays them). The only places that
compute exp(-lr / time scale) and 1 / GradScaler scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def decay(lr, time_scale: float | None):
    """exp(-lr / time_scale): the per-step decay of an average with that time scale; 0 when there is none.
    lr a float (a float back) or a device tensor (a tensor back, computed on the device)."""
    if torch.is_tensor(lr):
        return torch.exp(-lr / time_scale) if time_scale else torch.zeros_like(lr)
    return math.exp(-lr / time_scale) if time_scale else 0.0


def inverse_scale(grad_scale: torch.Tensor | None) -> torch.Tensor | None:
    """1 / a GradScaler's scale as float32, on the scale's device, as GradScaler.unscale_ computes it (the fp32
    rounding of the float64 reciprocal); None without a scaler."""
    return None if grad_scale is None else grad_scale.double().reciprocal().float()


def scalar_tensor(value, device: torch.device) -> torch.Tensor:
    """A hyper-parameter as a float64 0-d tensor on ``device``, made on the device without reading the value on
    the host: a tensor is converted, a Python number multiplies a tensor of ones. So a CUDA graph replays a
    tensor's new values, and under torch.compile a number that changes becomes a symbolic input of the graph
    (dynamo's automatic dynamic: one recompile the first time it changes) instead of a constant guarded per value:
    ``torch.tensor(number)``, ``math.exp`` or a number passed to an op would specialize it."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64).reshape(())
    return torch.ones((), dtype=torch.float64, device=device) * value


@dataclass(frozen=True)
class RdaScalars:
    """One RDA group step's scalars (docs/ALGORITHMS.md section 1). ``device`` (capturable mode, and any step
    traced by torch.compile): float32 [lr, averaging, beta, beta_b, lam, 1 - averaging, 1 - beta, 1 - beta_b]
    (each computed in float64 and rounded once, as the host path rounds them) on the params' device, which the
    backends read instead of the host values (those are then 0); ``found_inf`` (capturable only): a GradScaler's
    flag, the kernels write nothing when it is set."""

    lr: float
    lam: float
    beta: float
    beta_b: float
    averaging: float
    weight_decay: float
    max_factor: float
    reweight: bool
    maximize: bool
    inv_scale: torch.Tensor | None = None
    device: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None

    def host_values(self) -> list[float]:
        """The float values in the order the native ops take them (``hyper``)."""
        return [self.lr, self.lam, self.beta, self.beta_b, self.averaging, self.weight_decay, self.max_factor]

    def changing(self):
        """(lr, averaging, beta, beta_b, lam, 1 - averaging, 1 - beta, 1 - beta_b): the values a schedule or the
        sparsity controller changes, as host floats, or in the device form 0-d float32 tensors."""
        if self.device is None:
            return (self.lr, self.averaging, self.beta, self.beta_b, self.lam, 1.0 - self.averaging, 1.0 - self.beta,
                    1.0 - self.beta_b)
        return tuple(self.device.unbind())


DEVICE_VALUES = ("lr", "averaging", "beta", "beta_b", "lam")  # the order of RdaScalars.device


def rda_scalars(group: dict, grad_scale, found_inf, on_device: bool, device: torch.device) -> RdaScalars:
    """The group's scalars for this step; ``on_device``: the device form (capturable mode, or traced)."""
    tau = group["momentum_time"]
    tau_b = tau if group["reweight_time"] is None else group["reweight_time"]
    fixed = dict(weight_decay=float(group["weight_decay"]), max_factor=float(group["max_factor"]),
                 reweight=group["reweight"], maximize=group["maximize"], inv_scale=inverse_scale(grad_scale))
    if on_device:
        lr, averaging, lam = (scalar_tensor(group[k], device) for k in ("lr", "averaging", "lam"))
        # computed in float64 and rounded once, as the host values are (1 - x too: the native kernels read those)
        beta, beta_b = decay(lr, tau), decay(lr, tau_b)
        on_device = torch.stack([lr, averaging, beta, beta_b, lam, 1 - averaging, 1 - beta, 1 - beta_b]).float()
        return RdaScalars(lr=0.0, lam=0.0, beta=0.0, beta_b=0.0, averaging=0.0, device=on_device,
                          found_inf=found_inf, **fixed)
    lr = float(group["lr"])
    return RdaScalars(lr=lr, lam=float(group["lam"]), beta=decay(lr, tau), beta_b=decay(lr, tau_b),
                      averaging=float(group["averaging"]), **fixed)


@dataclass(frozen=True)
class GrdaScalars:
    """One gRDA group step's scalars (docs/ALGORITHMS.md section 2); the device form (capturable, or traced):
    ``lr_device`` (float32 device scalar) replaces ``lr``; ``found_inf`` (capturable) makes the kernels write
    nothing."""

    lr: float
    inv_scale: torch.Tensor | None = None
    lr_device: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None


def grda_scalars(group: dict, grad_scale, found_inf, on_device: bool, device: torch.device) -> GrdaScalars:
    if on_device:
        return GrdaScalars(0.0, inverse_scale(grad_scale), scalar_tensor(group["lr"], device).float(), found_inf)
    return GrdaScalars(float(group["lr"]), inverse_scale(grad_scale))
