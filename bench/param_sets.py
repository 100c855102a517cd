"""Realistic parameter sets for optimizer-step benchmarks: the trainable tensors of ResNet-18, ResNet-50 and a
1.1B-parameter decoder transformer, written out from the architectures (no torchvision needed).

Names follow the usual state_dict keys (torchvision for the ResNets, Llama-style for the transformer), so a
set reads like a real model's ``named_parameters()``. Batch-norm running statistics are buffers, not
parameters, and are not listed.

    import param_sets
    shapes = param_sets.shapes("resnet18")                        # [(64, 3, 7, 7), (64,), ...]
    params = param_sets.make_params(shapes, "cuda", torch.bfloat16) # leaf tensors with random .grad
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Shape = tuple[int, ...]
NamedShapes = list[tuple[str, Shape]]


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def total(named_or_plain: Sequence) -> int:
    """Number of elements in a list of shapes or of (name, shape) pairs."""
    return sum(_numel(s[1] if isinstance(s[0], str) else s) for s in named_or_plain)


# ----------------------------------------------------------------------------------------------------------
# ResNets (He et al. 2016), ImageNet heads, torchvision layout (v1.5: stride on the 3x3 conv of a bottleneck)


def _bn(prefix: str, channels: int) -> NamedShapes:
    return [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,))]


def _stem() -> NamedShapes:
    return [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]


def _fc(in_features: int, classes: int = 1000) -> NamedShapes:
    return [("fc.weight", (classes, in_features)), ("fc.bias", (classes,))]


def resnet18() -> NamedShapes:
    """ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64..512; 11,689,512 parameters."""
    out = _stem()
    in_ch = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            out += [(f"{p}.conv1.weight", (width, in_ch, 3, 3)), *_bn(f"{p}.bn1", width)]
            out += [(f"{p}.conv2.weight", (width, width, 3, 3)), *_bn(f"{p}.bn2", width)]
            if block == 0 and in_ch != width:  # stride-2 first block of layers 2-4: 1x1 projection shortcut
                out += [(f"{p}.downsample.0.weight", (width, in_ch, 1, 1)), *_bn(f"{p}.downsample.1", width)]
            in_ch = width
    return out + _fc(512)


def resnet50() -> NamedShapes:
    """ResNet-50: Bottlenecks [3, 4, 6, 3], widths 64..512, expansion 4; 25,557,032 parameters."""
    out = _stem()
    in_ch = 64
    for layer, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            out += [(f"{p}.conv1.weight", (width, in_ch, 1, 1)), *_bn(f"{p}.bn1", width)]
            out += [(f"{p}.conv2.weight", (width, width, 3, 3)), *_bn(f"{p}.bn2", width)]
            out += [(f"{p}.conv3.weight", (4 * width, width, 1, 1)), *_bn(f"{p}.bn3", 4 * width)]
            if block == 0:  # every first block changes the channel count: 1x1 projection shortcut
                out += [(f"{p}.downsample.0.weight", (4 * width, in_ch, 1, 1)), *_bn(f"{p}.downsample.1", 4 * width)]
            in_ch = 4 * width
    return out + _fc(2048)


def resnet18_subset() -> NamedShapes:
    """A small ResNet-18-like set for quick tests: stem, layer1, layer2 and the fc head (1,196,072 parameters in
    32 tensors, the same mix of conv / 1x1 / BN / linear tensors as the whole network)."""
    keep = ("conv1.", "bn1.", "layer1.", "layer2.", "fc.")
    return [(n, s) for n, s in resnet18() if n.startswith(keep)]


# ----------------------------------------------------------------------------------------------------------
# A 1.1B decoder transformer: TinyLlama-1.1B's shapes (Llama 2 architecture)


TRANSFORMER_1B = dict(d_model=2048, layers=22, heads=32, kv_heads=4, d_ff=5632, vocab=32000)


def transformer_1b(
    d_model: int = 2048, layers: int = 22, heads: int = 32, kv_heads: int = 4, d_ff: int = 5632, vocab: int = 32000
) -> NamedShapes:
    """Pre-norm decoder with RMSNorm, grouped-query attention (32 query heads, 4 key/value heads of 64) and a
    SwiGLU MLP (gate, up: d_ff x d_model; down: d_model x d_ff); untied input embedding and output head.
    Defaults are TinyLlama-1.1B's: 1,100,048,384 parameters in 201 tensors (44.0M per layer, 131M in the
    embedding and head)."""
    head_dim = d_model // heads
    kv_dim = kv_heads * head_dim
    out: NamedShapes = [("embed_tokens.weight", (vocab, d_model))]
    for i in range(layers):
        p = f"layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (d_model,)),
            (f"{p}.self_attn.q_proj.weight", (d_model, d_model)),
            (f"{p}.self_attn.k_proj.weight", (kv_dim, d_model)),
            (f"{p}.self_attn.v_proj.weight", (kv_dim, d_model)),
            (f"{p}.self_attn.o_proj.weight", (d_model, d_model)),
            (f"{p}.post_attention_layernorm.weight", (d_model,)),
            (f"{p}.mlp.gate_proj.weight", (d_ff, d_model)),
            (f"{p}.mlp.up_proj.weight", (d_ff, d_model)),
            (f"{p}.mlp.down_proj.weight", (d_model, d_ff)),
        ]
    return out + [("norm.weight", (d_model,)), ("lm_head.weight", (vocab, d_model))]


# ----------------------------------------------------------------------------------------------------------
# Registry


SETS: dict[str, Callable[[], NamedShapes]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "transformer-1b": transformer_1b,
    "resnet18-subset": resnet18_subset,
}
# Sets too large to allocate on a CPU box (params + grads + optimizer state are tens of GB).
GPU_ONLY = frozenset({"transformer-1b"})

EXPECTED_TOTALS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


def named_shapes(name: str) -> NamedShapes:
    if name not in SETS:
        raise ValueError(f"unknown parameter set {name!r}; known: {', '.join(SETS)}")
    return SETS[name]()


def shapes(name: str) -> list[Shape]:
    """The parameter shapes of a set, in model order."""
    return [s for _, s in named_shapes(name)]


def _check_totals() -> None:
    for name, expected in EXPECTED_TOTALS.items():
        got = total(named_shapes(name))
        assert got == expected, f"{name}: {got} parameters, expected {expected}"
    n = total(transformer_1b())
    assert 1.0e9 <= n <= 1.2e9, f"transformer-1b: {n} parameters, expected 1.0-1.2B"


_check_totals()


# ----------------------------------------------------------------------------------------------------------
# Tensors


def make_params(
    shapes_: Sequence[Shape],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    grad_scale: float = 1e-3,
) -> list[torch.Tensor]:
    """Leaf parameters of the given shapes with a random ``.grad`` each, on ``device`` in ``dtype``.

    Weights of >= 2 dims are N(0, 1/fan_in) (fan_in = numel / out_features), 1-D tensors N(1, 0.1) (a norm
    scale's neighbourhood); gradients are N(0, grad_scale^2). Values only matter in that they are finite and
    not all zero: every optimizer step here is memory-bound and does the same work for any values.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    params = []
    for shape in shapes_:
        with torch.no_grad():
            w = torch.randn(shape, generator=gen, device=device, dtype=dtype)
            if len(shape) >= 2:
                w.mul_(1.0 / math.sqrt(max(1, _numel(shape) // shape[0])))
            else:
                w.mul_(0.1).add_(1.0)
        p = torch.nn.Parameter(w)
        p.grad = torch.randn(shape, generator=gen, device=device, dtype=dtype).mul_(grad_scale)
        params.append(p)
    return params
