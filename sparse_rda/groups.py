"""Which parameters a sparse optimizer penalizes: the matmul weights of a model's Linear and Conv layers by default,
everything else (embeddings, normalization parameters, biases) trained without a penalty."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import nn

# layer type -> the names (fnmatch patterns) of its parameters that are matmul weights. Subclasses count:
# nn.Linear covers SparseLinear and attention's out_proj, _ConvNd every Conv and ConvTranspose.
PENALIZED_LAYERS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("weight",),
    nn.Bilinear: ("weight",),
    nn.modules.conv._ConvNd: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    nn.RNNBase: ("weight_ih_l*", "weight_hh_l*", "weight_hr_l*"),
}


def _patterns(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    patterns = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} must be parameter names or fnmatch patterns (strings); got {value!r}")
    return patterns


def _layer_patterns(layers) -> list[tuple[type, tuple[str, ...]]]:
    items = layers.items() if isinstance(layers, dict) else ((layer, ("weight",)) for layer in layers)
    result = []
    for layer, names in items:
        if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
            raise TypeError(f"layers must be nn.Module classes (or a dict class -> parameter names); got {layer!r}")
        result.append((layer, _patterns(names, "layers' parameter names")))
    return result


def penalized_names(model: nn.Module, layers=None, include: str | Iterable[str] = (),
                    exclude: str | Iterable[str] = ()) -> set[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters to threshold.

    ``layers``: the module classes whose matmul weights are penalized, as a dict class -> parameter name patterns
    or a list of classes (their ``weight``); default :data:`PENALIZED_LAYERS`. A parameter is chosen only if every
    module holding it is such a layer slot: a token embedding tied to the output head is spared.
    ``include`` / ``exclude``: names or fnmatch patterns (e.g. ``"tok_emb.weight"``, ``"*.proj.weight"``)
    penalized in addition, or spared; any name of a shared parameter matches. Only tensors of 2+ dims are chosen
    (or a 1-d one named in ``include``); ``exclude`` wins."""
    rules = _layer_patterns(PENALIZED_LAYERS if layers is None else layers)
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    names: dict[int, list[str]] = {}  # id(parameter) -> all its names
    in_layer: dict[int, bool] = {}  # id(parameter) -> every slot holding it is a layer's matmul weight
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is None:
                continue
            names.setdefault(id(p), []).append(f"{module_name}.{name}" if module_name else name)
            slot = any(isinstance(module, layer) and any(fnmatchcase(name, pat) for pat in pats)
                       for layer, pats in rules)
            in_layer[id(p)] = in_layer.get(id(p), True) and slot

    def matches(key: int, patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(n, pat) for n in names[key] for pat in patterns)

    for pattern in include:
        if not any(matches(key, (pattern,)) for key in names):
            raise ValueError(f"include: {pattern!r} matches no parameter of the model")
    return {name for name, p in model.named_parameters()
            if not matches(id(p), exclude) and ((in_layer[id(p)] and p.dim() >= 2) or matches(id(p), include))}


def param_groups(model: nn.Module, unpenalized: dict | None = None, *, layers=None,
                 include: str | Iterable[str] = (), exclude: str | Iterable[str] = (), **options) -> list[dict]:
    """Two param groups for RDA or GRDA: the penalized weights, and the rest with ``penalize=False``.

    Penalized by default: the weights of Linear (SparseLinear too), Conv, Bilinear layers, attention's projections
    and RNN weight matrices; spared: embeddings, normalization parameters, biases, and a weight shared with a
    spared module (a tied embedding). ``layers``, ``include`` and ``exclude`` change the choice
    (:func:`penalized_names`). ``options`` apply to both groups; ``unpenalized`` overrides options for the second
    one (e.g. ``unpenalized={"weight_decay": 0.0}``). Empty groups are left out; shared parameters appear once.

    >>> opt = sparse_rda.RDA(sparse_rda.param_groups(model, lr=1.0, lam=1e-6, weight_decay=5e-4))
    >>> sparse_rda.param_groups(model, exclude="head.*", include="tok_emb.weight")  # other choices
    """
    wanted = penalized_names(model, layers, include, exclude)
    penalized: list[torch.Tensor] = []
    others: list[torch.Tensor] = []
    for name, p in model.named_parameters():  # yields each shared Parameter once
        if p.requires_grad:
            (penalized if name in wanted else others).append(p)
    groups = [{"params": penalized, **options}]
    groups.append({"params": others, **options, **(unpenalized or {}), "penalize": False})
    return [g for g in groups if g["params"]]
