"""sparse_rda: train sparse networks from scratch with optimizers whose update produces exact zeros.

- :class:`RDA`: adaptively reweighted l1 + generalized regularized dual averaging (Siegel et al. 2020).
- :class:`GRDA`: generalized RDA for directional pruning (Chao et al. 2020).
- both take ``target_sparsity=`` (with ``total_steps=``) to reach a sparsity without tuning the penalty
  (:mod:`sparse_rda.target`).
- :mod:`sparse_rda.schedules`: the authors' cosine and step schedules for lr and averaging.
- :func:`param_groups`, :func:`sparsity`: penalized/unpenalized groups of a model, and its zeros as a table.
- :mod:`sparse_rda.nn`: :class:`SparseLinear` and :func:`sparsify`, linear layers whose matmul skips zero tiles.
- :mod:`sparse_rda.semi_structured`: 2:4 layers on sparse tensor cores (``sparsify(model, pattern="2:4")``) and
  their export for inference; RDA trains them with ``granularity=("nm", 2, 4)``.
- :mod:`sparse_rda.pruning`: mask-based baselines (magnitude, GMP, cyclical, IMP, RigL, SET, SNIP, HALO, SR-STE)
  for any torch optimizer, behind one training-loop protocol (``pruning.make(name, model, sparsity, total_steps)``).
- :func:`save_sparse`, :func:`load_sparse` (:mod:`sparse_rda.checkpoint`): checkpoints without the zeros
  (safetensors, exact round trip); :func:`to_inference` (:mod:`sparse_rda.inference`): each sparse enough
  linear layer as a module that keeps only its nonzeros, in the format fastest on its device.
- :mod:`sparse_rda.reference`: the pure-PyTorch definition of the math every backend is tested against.
"""

from . import nn, pruning, reference, scalars, schedules, semi_structured
from .checkpoint import load_sparse, save_sparse
from .inference import to_inference
from .dispatch import backends
from .grda import GRDA
from .groups import param_groups
from .nn import SparseLinear, sparsify
from .rda import RDA
from .report import SparsityReport, sparsity

__version__ = "0.1.0"
__all__ = ["RDA", "GRDA", "param_groups", "sparsity", "SparsityReport", "backends", "reference", "schedules",
           "nn", "SparseLinear", "sparsify", "pruning", "semi_structured", "save_sparse", "load_sparse", "to_inference"]
