"""The native extension (csrc/): the fused steps as torch ops ``torch.ops.sparse_rda.rda_step_``,
``rda_block_step_`` and ``grda_step_``, with CPU and (when built with CUDA) CUDA kernels,
behind the reference's function signatures.

The ops are registered with schemas that declare what they mutate, and fake implementations so that
``torch.compile`` traces an optimizer step through them without graph breaks.
"""

from __future__ import annotations

import math
import warnings

import torch

from . import reference

_LOAD_ERROR: ImportError | None = None
try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ModuleNotFoundError:  # built without the extension: the reference and Triton backends still work
    _C = None
except ImportError as err:  # built, but it does not load: most often compiled against another torch
    _C, _LOAD_ERROR = None, err
    warnings.warn(f"sparse_rda's native extension does not load ({err}), so the native backends are off. It must "
                  f"be built against the installed torch ({torch.__version__}): rebuild it with pip install "
                  "--no-build-isolation --no-cache-dir --force-reinstall --no-deps sparse_rda (or . in a checkout)",
                  RuntimeWarning, stacklevel=2)


def has_kernels(device_type: str) -> bool:
    """Whether the extension was built with kernels for this device type ("cpu" or "cuda")."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key("sparse_rda::rda_step_", key)


def missing_reason(device_type: str) -> str:
    """Why this installation has no native kernels for the device type."""
    if _LOAD_ERROR is not None:
        return f"the native extension does not load ({_LOAD_ERROR})"
    if _C is None:
        return "sparse_rda was installed without its native extension (SPARSE_RDA_NO_EXTENSION=1, or not built)"
    return (f"the native extension was built without {device_type.upper()} kernels (CUDA kernels need a CUDA "
            "torch and nvcc at build time)")


if _C is not None:

    @torch.library.register_fake("sparse_rda::rda_step_")
    def _rda_step_fake(params, grads, T, B, A, v, factors, group_sizes, lr, lam, beta, beta_b, alpha,
                       weight_decay, max_factor, reweight, maximize, grad_scale, lr_alpha=None, found_inf=None,
                       inv_tau=0.0, inv_tau_b=0.0):
        return params[0].new_empty((len(params),), dtype=torch.int64)

    @torch.library.register_fake("sparse_rda::rda_block_step_")
    def _rda_block_step_fake(params, grads, T, B, A, v, occupancy, block, lr, lam, beta, beta_b, alpha,
                             weight_decay, max_factor, reweight, maximize, grad_scale):
        return params[0].new_empty((len(params),), dtype=torch.int64)

    @torch.library.register_fake("sparse_rda::grda_step_")
    def _grda_step_fake(params, grads, acc, thresholds, lr, grad_scale, thresholds_device=None, lr_device=None,
                        found_inf=None):
        return params[0].new_empty((len(params),), dtype=torch.int64)


def rda_step(params, grads, T, B, A, v, *, penalized, lr, lam, beta, beta_b, averaging, weight_decay, max_factor,
             reweight, granularity, maximize, grad_scale=None, occupancy=None, device_scalars=None) -> torch.Tensor:
    """The reference's rda_step as native ops (one for the tiled tensors in block mode, one for the rest);
    returns each param's nonzero count. device_scalars (capturable mode, not in block mode):
    ([lr, averaging] tensor, found_inf or None, momentum_time, reweight_time), read by the kernels."""
    block = reference.block_shape(granularity)
    tiled = [block is not None and pen and p.dim() == 2 for p, pen in zip(params, penalized)]
    scalars = (lr, lam, beta, beta_b, averaging, weight_decay, max_factor, reweight, maximize, grad_scale)
    if device_scalars is not None:
        lr_alpha, found_inf, tau, tau_b = device_scalars
        return _rda_elementwise(params, grads, T, B, A, v, penalized, granularity,
                                scalars + (lr_alpha, found_inf, _inverse(tau), _inverse(tau_b)))
    if not any(tiled):
        return _rda_elementwise(params, grads, T, B, A, v, penalized, granularity, scalars)
    rest = [i for i, t in enumerate(tiled) if not t]
    tiles = [i for i, t in enumerate(tiled) if t]
    maps = [_tile_map(params[i], block, occupancy[i] if occupancy is not None else None) for i in tiles]
    nnz = params[0].new_empty((len(params),), dtype=torch.int64)
    nnz[tiles] = torch.ops.sparse_rda.rda_block_step_(
        *([xs[i] for i in tiles] for xs in (params, grads, T, B, A, v)), maps, list(block), *scalars)
    if rest:
        nnz[rest] = _rda_elementwise(*([xs[i] for i in rest] for xs in (params, grads, T, B, A, v, penalized)),
                                     "element", scalars)
    return nnz


def _rda_elementwise(params, grads, T, B, A, v, penalized, granularity, scalars) -> torch.Tensor:
    sizes = [reference.group_size(p.shape, granularity) for p in params]
    factors = [math.sqrt(size) if pen else 0.0 for size, pen in zip(sizes, penalized)]
    return torch.ops.sparse_rda.rda_step_(list(params), list(grads), list(T), list(B), list(A), list(v), factors,
                                          sizes, *scalars)


def _inverse(time_scale) -> float:
    """1 / time scale, 0 for none (as reference.decay reads it)."""
    return 1.0 / time_scale if time_scale else 0.0


def _tile_map(p: torch.Tensor, block, occupancy: torch.Tensor | None) -> torch.Tensor:
    """The occupancy map the block step writes: the optimizer's, or scratch when the caller keeps none."""
    if occupancy is not None:
        return occupancy
    return torch.empty(reference.tile_grid(p.shape, block), dtype=torch.bool, device=p.device)


def grda_step(params, grads, acc, *, lr, thresholds, grad_scale=None, device_scalars=None) -> torch.Tensor:
    """The reference's grda_step as one native op; returns each param's nonzero count. thresholds: floats, or a
    float32 tensor (the optimizer's, on the host; on the device in capturable mode, with device_scalars = (lr
    tensor, found_inf or None))."""
    if not torch.is_tensor(thresholds):
        return torch.ops.sparse_rda.grda_step_(list(params), list(grads), list(acc), list(thresholds), lr, grad_scale)
    lr_device, found_inf = device_scalars if device_scalars is not None else (None, None)
    return torch.ops.sparse_rda.grda_step_(list(params), list(grads), list(acc), [0.0] * len(params), lr,
                                           grad_scale, thresholds, lr_device, found_inf)
