"""Block-sparse layers: :class:`SparseLinear`, an ``nn.Linear`` whose matmul skips the weight's all-zero tiles,
and :func:`sparsify`, which swaps it in for a model's linear layers.

The layer keeps a tile occupancy map (``occupancy``, bool [ceil(out/BN), ceil(in/BK)]) next to its weight. The
Triton masked matmul (``sparse_rda.kernels.masked_matmul``) reads it on CUDA; on CPU, ``sparse_rda.cpu_tiles``
computes the forward and dX over the packed live tiles; CUDA without triton is a plain ``F.linear``. The map must cover every nonzero tile: a tile
it marks dead is skipped even if the weight there is not zero. After anything changes the weight's zeros (an
optimizer step, a pruning step, loading a checkpoint by hand) call :meth:`SparseLinear.refresh_occupancy` or
:func:`refresh_occupancy` (``load_state_dict`` does it by itself). The map is not in the state dict, so
checkpoints of the sparse and the dense model are interchangeable.

Trained by ``sparse_rda.RDA`` with ``granularity=("block", BN, BK)`` equal to the layer's ``block``, no refresh is
needed: the layer binds its map to its weight (:func:`bind_tile_map`), the optimizer looks it up
(:func:`tile_map`), and its step writes the map in the same pass that updates the weight. With other tiles the
optimizer keeps its own map and warns that the layer's needs refreshing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .cpu_tiles import live_tile_linear
from .kernels.tiles import check_matmul_block

try:
    from .kernels.masked_matmul import DEFAULT_BLOCK, expand_occupancy, masked_linear, tile_occupancy
except ImportError:  # installed without triton: the same layer on dense math, tiles from the reference
    HAS_TRITON, DEFAULT_BLOCK = False, (64, 64)

    def tile_occupancy(weight, block=DEFAULT_BLOCK):
        return reference.tile_sums((weight.detach() != 0).float(), check_matmul_block(block)) > 0

    def expand_occupancy(occupancy, block, shape):
        return reference.tile_broadcast(occupancy != 0, shape, check_matmul_block(block))

    def masked_linear(x, weight, bias, occupancy, block=DEFAULT_BLOCK, dw_live_only=False):
        if dw_live_only and weight.requires_grad:
            weight = torch.where(expand_occupancy(occupancy, block, weight.shape), weight, weight.detach())
        return F.linear(x, weight, bias)
else:
    HAS_TRITON = True


def bind_tile_map(weight: torch.Tensor, block: tuple[int, int], occupancy: torch.Tensor) -> None:
    """Declare that ``occupancy`` is the (block-tiled) map a layer reads for ``weight``, so that an optimizer working
    in the same tiles writes it (RDA in block granularity does)."""
    weight._sparse_rda_tile_map = (tuple(block), occupancy)


def tile_map(weight: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor] | None:
    """The (block, occupancy) a layer bound to ``weight`` with :func:`bind_tile_map`, or None."""
    return getattr(weight, "_sparse_rda_tile_map", None)


def matmul_kernel(device: torch.device | str) -> str:
    """What SparseLinear's matmul runs on this device: "triton" (CUDA: dead tiles skipped), "cpu-tiles" (CPU:
    the live tiles in batched ATen matmuls, sparse_rda.cpu_tiles) or "dense" (F.linear: the same result, no
    skipping; CUDA without triton)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu-tiles"
    return "triton" if HAS_TRITON and device.type == "cuda" else "dense"


class SparseLinear(nn.Linear):
    """``nn.Linear`` whose forward skips the weight's dead ``block`` = (BN, BK) tiles (see the module docstring).

    ``dw_live_only``: the weight's gradient only on live tiles (zeros elsewhere), for mask-based training;
    default the dense gradient, which RDA needs to regrow weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 block=DEFAULT_BLOCK, dw_live_only: bool = False):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block = tuple(int(b) for b in block)
        self.dw_live_only = dw_live_only
        self.register_buffer("occupancy", tile_occupancy(self.weight, self.block), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._share_map()

    @classmethod
    def from_linear(cls, linear: nn.Linear, block=DEFAULT_BLOCK, dw_live_only: bool = False) -> SparseLinear:
        """A SparseLinear holding ``linear``'s own weight and bias Parameters (not copies)."""
        layer = cls(linear.in_features, linear.out_features, bias=False, device="meta", block=block,
                    dw_live_only=dw_live_only)
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.occupancy = tile_occupancy(linear.weight, layer.block)
        layer._share_map()
        return layer.train(linear.training)

    def _share_map(self) -> None:
        """Let an optimizer working in the same tiles write this layer's map (see the module docstring)."""
        bind_tile_map(self.weight, self.block, self.occupancy)

    def _apply(self, fn, recurse=True):
        """After ``.to()``, ``.cuda()``, ``.half()``, ...: the map buffer is a new tensor (and the weight may be a
        new Parameter), so the link again; else an optimizer would write a map the layer no longer reads."""
        module = super()._apply(fn, recurse)
        self._share_map()
        return module

    def __setstate__(self, state: dict) -> None:
        """After deepcopy (whose Parameter copies drop Python attributes) and unpickling: the link again."""
        super().__setstate__(state)
        self._share_map()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return live_tile_linear(x, self.weight, self.bias, self.occupancy, self.block, self.dw_live_only,
                                    self.__dict__.setdefault("_tile_cache", {}))
        return masked_linear(x, self.weight, self.bias, self.occupancy, self.block, self.dw_live_only)

    @torch.no_grad()
    def refresh_occupancy(self) -> None:
        """Recompute the map from the weight: a tile is live when it holds a nonzero. In place when it can be
        (the same buffer, as a captured CUDA graph needs)."""
        occupancy = tile_occupancy(self.weight, self.block)
        if occupancy.shape == self.occupancy.shape and occupancy.device == self.occupancy.device:
            self.occupancy.copy_(occupancy)
        else:
            self.occupancy = occupancy
            self._share_map()

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Apply a pruning mask (True/nonzero = keep): an element mask of the weight's shape, or a tile mask of the
        occupancy's shape. Zeroes the weight where the mask drops it, then refreshes the map."""
        if mask.shape == self.weight.shape:
            keep = mask.to(device=self.weight.device) != 0
        elif mask.shape == self.occupancy.shape:
            keep = expand_occupancy(mask.to(device=self.weight.device), self.block, self.weight.shape)
        else:
            raise ValueError(f"mask must have the weight's shape {tuple(self.weight.shape)} or the occupancy's "
                             f"{tuple(self.occupancy.shape)}; got {tuple(mask.shape)}")
        self.weight.masked_fill_(~keep, 0)
        self.refresh_occupancy()

    def extra_repr(self) -> str:
        live, total = int(self.occupancy.sum()), self.occupancy.numel()
        return f"{super().extra_repr()}, block={self.block}, live_tiles={live}/{total}"


def _refresh_after_load(module: SparseLinear, incompatible_keys) -> None:
    module.refresh_occupancy()


def sparsify(model: nn.Module, block=DEFAULT_BLOCK, dw_live_only: bool = False,
             pattern: str | tuple[int, int] | None = None) -> nn.Module:
    """Swap every ``nn.Linear`` in ``model`` (exactly that class: subclasses may have their own forward) for a
    :class:`SparseLinear` with the same Parameter objects, so an optimizer that already holds them keeps working.
    A layer used in several places becomes one SparseLinear. Returns the model (or the new layer when ``model``
    itself is an ``nn.Linear``).

    ``pattern="2:4"``: an :class:`sparse_rda.semi_structured.NMLinear` instead, whose forward runs a 2:4 weight on
    sparse tensor cores (CUDA sm_80+, fp16 / bf16; elsewhere dense math); ``block`` and ``dw_live_only`` do not
    apply."""
    if pattern is not None:
        from .semi_structured import PATTERN, sparsify_2_4
        from .validation import check_pattern

        if check_pattern(pattern) != PATTERN:
            raise ValueError(f"pattern: sparse tensor cores run 2:4 only; got {pattern!r} (train other N:M patterns "
                             "with RDA's granularity ('nm', N, M) and run them dense)")
        return sparsify_2_4(model)
    return swap_modules(model, lambda name, module: SparseLinear.from_linear(module, block, dw_live_only)
                        if type(module) is nn.Linear else None)


def swap_modules(model: nn.Module, make) -> nn.Module:
    """Replace each module for which ``make(name, module)`` returns a new one (None: keep it). A module used in
    several places is made once and shared. Returns the model, or the new module when ``model`` itself is
    replaced."""
    swapped: dict[int, nn.Module | None] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if id(module) not in swapped:
            swapped[id(module)] = make(name, module)
        new = swapped[id(module)]
        if new is not None:
            if not name:
                return new
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, new)
    return model


def refresh_occupancy(model: nn.Module) -> nn.Module:
    """Recompute the occupancy map of every SparseLinear in ``model`` (e.g. after each optimizer step)."""
    for module in model.modules():
        if isinstance(module, SparseLinear):
            module.refresh_occupancy()
    return model
