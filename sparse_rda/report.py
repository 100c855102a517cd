"""Sparsity of a model: zeros per tensor, over the penalized tensors and over all of them, as a table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .groups import penalized_names
from .sharded import count_nonzeros


@dataclass(frozen=True)
class TensorSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    penalized: bool

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    tensors: list[TensorSparsity]

    def _fraction(self, rows) -> float:
        numel = sum(r.numel for r in rows)
        return sum(r.zeros for r in rows) / numel if numel else 0.0

    @property
    def total(self) -> float:
        """Fraction of zeros over all parameters."""
        return self._fraction(self.tensors)

    @property
    def penalized(self) -> float:
        """Fraction of zeros over the penalized tensors (what param_groups penalizes by default: Linear, Conv,
        attention and RNN weights)."""
        return self._fraction([r for r in self.tensors if r.penalized])

    def __str__(self) -> str:
        width = max([len("tensor")] + [len(r.name) for r in self.tensors])
        lines = [f"{'tensor':<{width}}  {'shape':>18}  {'zeros':>12}  {'numel':>12}  {'sparsity':>8}  penalized"]
        for r in self.tensors:
            shape = "x".join(map(str, r.shape)) or "scalar"
            lines.append(
                f"{r.name:<{width}}  {shape:>18}  {r.zeros:>12}  {r.numel:>12}  {r.fraction:>8.2%}  "
                f"{'yes' if r.penalized else 'no'}"
            )
        for label, rows in (("penalized", [r for r in self.tensors if r.penalized]), ("all", self.tensors)):
            zeros, numel = sum(r.zeros for r in rows), sum(r.numel for r in rows)
            lines.append(f"{'total ' + label:<{width}}  {'':>18}  {zeros:>12}  {numel:>12}  {self._fraction(rows):>8.2%}")
        return "\n".join(lines)


@torch.no_grad()
def sparsity(model: nn.Module, optimizer=None) -> SparsityReport:
    """The exact zeros of every parameter. ``print()`` the result for a table.

    With a sparse_rda ``optimizer``, the counts its fused step already made are used (``optimizer.nnz()``:
    no pass over the weights); other parameters are counted here (one host sync per device). A DTensor's zeros
    are over all its shards: with any, every rank must call this (a collective)."""
    named = list(model.named_parameters())
    wanted = penalized_names(model)
    nnz = optimizer.nnz() if optimizer is not None else {}
    others = [p for _, p in named if p not in nnz]
    counted = dict(zip(others, count_nonzeros(others)))
    counts = [p.numel() - (nnz[p] if p in nnz else counted[p]) for _, p in named]
    return SparsityReport(
        [TensorSparsity(n, tuple(p.shape), p.numel(), c, n in wanted) for (n, p), c in zip(named, counts)]
    )
