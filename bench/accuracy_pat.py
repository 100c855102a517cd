"""torchao's PAT (``torchao.prototype.pat``) as a baseline for bench/accuracy.py: the peer a PyTorch user picks today
for sparse training by proximal maps. An optional dependency (``pip install --no-deps torchao==0.18.0``; its
other dependencies are not needed for this); without it the PAT rows are skipped with that message.

PAT keeps a latent (dense) copy of the weights: each step the base optimizer (the dense run's SGD, momentum and
weight decay, cosine lr) updates the latent copy from the gradient taken at the pruned weights, and the model's
weights are the latent copy through the prox map. Three of its maps, each on the >= 2-D weights alone (biases
stay plain SGD, as for every method here):

- ``pat-lasso``: ``ProxLasso`` per element: the weights are the latent copy soft-thresholded at ``lambda *
  sum of the lr so far`` (PAT's ``gamma``), lambda fixed from step 0. PAT has no target: lambda comes from a
  sweep per model and target (bench/lambda_sweep.py's pick); ``pat-lasso=<lambda>`` runs any.
- ``pat-min``: ``MinSparsityConstraint`` per element (``KElementGrouper`` k=1): every step, each tensor's
  smallest ``target`` fraction of the latent copy is zeroed in the weights (per-tensor magnitude projection).
- ``pat-global``: ``GlobalMinSparsityConstraint``, the same ranked over all the tensors together (score: |w|).

All three prune from step 0 and never freeze the mask (PAT's ``warmup_steps=0``, no healing phase), so a weight
zeroed early comes back whenever its latent value grows past the others, as RDA's do.
"""

from __future__ import annotations

import torch
from torch import nn

import lambda_sweep
from accuracy_training import cosine, split_value
from fashion_mnist import SGD_KW

PAT_VERSION = "0.18.0"  # the version the committed tables ran; each run's record holds the one installed
PAT_METHODS = ("pat-lasso", "pat-min", "pat-global")
PAT_VALUED = ("pat-lasso",)  # "pat-lasso=<lambda>": a lambda of one's own


class PATUnavailable(RuntimeError):
    pass


def import_pat():
    """torchao.prototype.pat, or PATUnavailable saying how to install it."""
    try:
        import torchao  # noqa: F401  (its import warns that a CUDA-only library does not load on a CPU machine)
        from torchao.prototype import pat
    except ImportError as err:
        raise PATUnavailable(f"torchao is not installed ({err}); for the PAT rows: "
                             f"pip install --no-deps torchao=={PAT_VERSION}") from err
    return pat


def pat_version() -> str | None:
    try:
        import torchao
    except ImportError:
        return None
    return torchao.__version__


def prox_options(method: str, target: float, model_name: str | None) -> tuple[dict, dict]:
    """(PAT's prox options for the pruned param group, what the run records of them) for a PAT method."""
    base, value = split_value(method)
    if base == "pat-lasso":
        lam = value if value is not None else lambda_sweep.picked("pat-lasso", model_name, target)
        return dict(prox_type="ProxLasso", group_type="ElemGrouper", reg_lambda=lam), dict(reg_lambda=lam)
    if value is not None:
        raise ValueError(f"{method}: only pat-lasso takes a value (its lambda)")
    if base == "pat-min":
        return dict(prox_type="MinSparsityConstraint", group_type="KElementGrouper", k=1, min_sparsity=target), {}
    if base == "pat-global":
        return dict(prox_type="GlobalMinSparsityConstraint", group_type="KElementGrouper", k=1,
                    min_sparsity=target), {}
    raise ValueError(f"unknown PAT method {method!r} (choose from {', '.join(PAT_METHODS)})")


def prune_optimizer(base: torch.optim.Optimizer):
    """PAT's PruneOptimizer over ``base`` (whose first param group holds the prox options), pruning from step 0."""
    return import_pat().PruneOptimizer(base, warmup_steps=0)


class PATTraining:
    """PAT's PruneOptimizer over the dense run's SGD with the same cosine lr per step, on the >= 2-D weights (the
    rest plain SGD)."""

    def __init__(self, model: nn.Module, total_steps: int, target: float, method: str, model_name: str):
        import_pat()
        prox, self.extra = prox_options(method, target, model_name)
        weights = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        self.opt = prune_optimizer(torch.optim.SGD([dict(params=weights, **prox), dict(params=rest)], **SGD_KW))
        self.total_steps = total_steps

    def penalty(self):
        return 0.0

    def step(self, k: int) -> None:
        self.opt.step()
        for group in self.opt.param_groups:
            group["lr"] = cosine(SGD_KW["lr"], k + 1, self.total_steps)

    def finish(self) -> dict:
        return dict(self.extra, torchao=pat_version())
