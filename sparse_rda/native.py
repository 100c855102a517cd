"""The native extension (csrc/): the fused steps as torch ops ``torch.ops.sparse_rda.rda_step_``,
``rda_block_step_``, ``rda_nm_step_`` (granularity ("nm", N, M)) and ``grda_step_``, and the RDA steps' max pass
alone as ``rda_max_A`` / ``rda_block_max_A`` (an N:M bucket's is the element one's: its A is element-wise),
with CPU and (when built with CUDA) CUDA kernels, behind the backend contract (sparse_rda/step.py).

The ops are registered with schemas that declare what they mutate, and fake implementations so that
``torch.compile`` traces an optimizer step through them without graph breaks.
"""

from __future__ import annotations

import functools
import warnings

import torch

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


@functools.cache  # the ops register once, when _C loads; the dispatcher lookup costs ~5 us per call
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

    def _check_max_A(op, params, max_A):
        """check_args.h's check of a given max_A, also here: the fakes are the Meta kernels too, so a meta max_A
        beside real params would reach this and not the op's own check."""
        if max_A is None:
            return
        if max_A.numel() != len(params):
            raise RuntimeError(f"{op}: max_A has {max_A.numel()} values for {len(params)} params")
        if not max_A.dtype.is_floating_point:
            raise RuntimeError(f"{op}: max_A must be floating, got {max_A.dtype}")
        if params and max_A.device != params[0].device:
            raise RuntimeError(f"{op}: max_A is on {max_A.device}, params on {params[0].device}")

    @torch.library.register_fake("sparse_rda::rda_step_")
    def _rda_step_fake(params, grads, T, B, A, v, group_means, factors, hyper, reweight, maximize, inv_scale,
                       device_hyper, found_inf, max_A=None):
        _check_max_A("rda_step_", params, max_A)
        return params[0].new_empty((len(params),), dtype=torch.int64)

    @torch.library.register_fake("sparse_rda::rda_block_step_")
    def _rda_block_step_fake(params, grads, T, B, A, v, occupancy, block, hyper, reweight, maximize, inv_scale,
                             device_hyper, found_inf, max_A=None):
        _check_max_A("rda_block_step_", params, max_A)
        return params[0].new_empty((len(params),), dtype=torch.int64)

    @torch.library.register_fake("sparse_rda::rda_nm_step_")
    def _rda_nm_step_fake(params, grads, T, B, A, v, nm, hyper, reweight, maximize, inv_scale, device_hyper,
                          found_inf, max_A=None):
        _check_max_A("rda_nm_step_", params, max_A)
        return params[0].new_empty((len(params),), dtype=torch.int64)

    @torch.library.register_fake("sparse_rda::rda_max_A")
    def _rda_max_A_fake(params, grads, T, B, A, v, group_means, factors, hyper, reweight, maximize, inv_scale,
                        device_hyper, found_inf):
        return params[0].new_empty((len(params),), dtype=torch.float32)

    @torch.library.register_fake("sparse_rda::rda_block_max_A")
    def _rda_block_max_A_fake(params, grads, T, B, A, v, occupancy, block, hyper, reweight, maximize, inv_scale,
                              device_hyper, found_inf):
        return params[0].new_empty((len(params),), dtype=torch.float32)

    @torch.library.register_fake("sparse_rda::csr_linear")
    def _csr_linear_fake(x, crow, col, values, bias, in_features):
        return x.new_empty((*x.shape[:-1], crow.shape[0] - 1))

    @torch.library.register_fake("sparse_rda::grda_step_")
    def _grda_step_fake(params, grads, acc, thresholds, lr, lr_device, inv_scale, found_inf):
        return params[0].new_empty((len(params),), dtype=torch.int64)


def rda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's rda_step (sparse_rda/step.py) as one native op: the block op for a tiled bucket, the
    N:M op for a constrained one (penalized tensors only), the element-wise one otherwise; returns each param's
    nonzero count. A given ``tensors.max_A`` replaces the op's own max pass."""
    params, grads, T, B, A, v, occupancy, group_means, max_A = tensors
    if bucket.constrained:
        return torch.ops.sparse_rda.rda_nm_step_(params, grads, T, B, A, v, list(bucket.nm), s.host_values(),
                                                 s.reweight, s.maximize, s.inv_scale, s.device, s.found_inf, max_A)
    if bucket.tiled:
        return torch.ops.sparse_rda.rda_block_step_(params, grads, T, B, A, v, occupancy, list(bucket.block),
                                                    s.host_values(), s.reweight, s.maximize, s.inv_scale, s.device,
                                                    s.found_inf, max_A)
    return torch.ops.sparse_rda.rda_step_(params, grads, T, B, A, v, group_means,
                                          [plan.factor for plan in bucket.plans], s.host_values(), s.reweight,
                                          s.maximize, s.inv_scale, s.device, s.found_inf, max_A)


def rda_max_A(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's rda_max_A as one native op (the block op for a tiled bucket; the element op for an
    N:M one, whose A is element-wise: factors 1, no group means): the max over each tensor's finite values of this
    step's A, float32 on the params' device, 0 for an unpenalized tensor."""
    params, grads, T, B, A, v, occupancy, group_means, _ = tensors
    if bucket.tiled:
        return torch.ops.sparse_rda.rda_block_max_A(params, grads, T, B, A, v, occupancy, list(bucket.block),
                                                    s.host_values(), s.reweight, s.maximize, s.inv_scale, s.device,
                                                    s.found_inf)
    return torch.ops.sparse_rda.rda_max_A(params, grads, T, B, A, v, group_means,
                                          [plan.factor for plan in bucket.plans], s.host_values(), s.reweight,
                                          s.maximize, s.inv_scale, s.device, s.found_inf)


def grda_step(tensors, bucket, s) -> torch.Tensor:
    """The backend contract's grda_step as one native op; returns each param's nonzero count."""
    params, grads, acc, thresholds = tensors
    return torch.ops.sparse_rda.grda_step_(params, grads, acc, thresholds, s.lr, s.lr_device, s.inv_scale,
                                           s.found_inf)
