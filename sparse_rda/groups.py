"""Split a model's parameters into penalized weights and unpenalized biases / normalization parameters."""

from __future__ import annotations

import torch
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


def penalized_names(model: nn.Module) -> set[str]:
    """Names of the parameters a sparse optimizer should threshold: tensors of 2+ dims outside norm layers."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


def param_groups(model: nn.Module, unpenalized: dict | None = None, **options) -> list[dict]:
    """Two param groups for RDA or GRDA: the penalized weights, and the rest with ``penalize=False``.

    ``options`` apply to both groups; ``unpenalized`` overrides options for the second one
    (e.g. ``unpenalized={"weight_decay": 0.0}``). Empty groups are left out; shared parameters appear once.

    >>> opt = sparse_rda.RDA(sparse_rda.param_groups(model, lr=1.0, lam=1e-6, weight_decay=5e-4))
    """
    wanted = penalized_names(model)
    penalized: list[torch.Tensor] = []
    others: list[torch.Tensor] = []
    for name, p in model.named_parameters():  # yields each shared Parameter once
        if p.requires_grad:
            (penalized if name in wanted else others).append(p)
    groups = [{"params": penalized, **options}]
    groups.append({"params": others, **options, **(unpenalized or {}), "penalize": False})
    return [g for g in groups if g["params"]]
