"""The accuracy benchmark's methods (bench/accuracy.py's docstring lists them): each builds its optimizer (and pruner)
for one run and says what one training step does; and one run, trained and measured."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import sparse_rda
from fashion_mnist import BATCH_SIZE, GRDA_KW, MODELS, RDA_KW, SGD_KW, epoch_batches, test_accuracy

RDA_L1_KW = dict(RDA_KW, reweight=False)
# plain l1 at its best (bench/results/l1_ablation.md): averaging 1 from the first step, the dual average of l1-RDA
# (CosineRDA from averaging 1 keeps it there; the lr follows the cosine). Under CosineRDA's 0 -> 1 the early steps
# are proximal SGD, whose plain-l1 shrink hits every weight at every step; the reweighted penalty barely touches
# the large weights, so RDA does not need this (and is no better with it)
RDA_L1_DA_KW = dict(RDA_L1_KW, averaging=1.0)
RDA_PROX_KW = dict(RDA_KW, averaging=0.0)
# the rest come from sparse_rda.pruning.METHODS and bench/accuracy_pat.py
OWN_METHODS = ("dense", "rda", "rda-l1", "rda-l1-da", "rda-prox", "grda")
# N:M runs are named "<method>@N:M": the method at sparsity 1 - N/M inside the pattern (RDA: granularity
# ("nm", N, M); a pruning method: pattern="N:M"); their own table (bench/accuracy_report.py)
NM_METHODS = ("rda", "sr-ste", "magnitude", "gmp")
# RDA with lam fixed by hand (no target_sparsity): what the controller costs, against lam tuned to land on the
# target (bench/lambda_sweep.py); named "<name>=<lam>"
FIXED_LAM_METHODS = {"rda-fixed": RDA_KW, "rda-l1-fixed": RDA_L1_KW}
NM_ONLY = ("sr-ste",)  # pruning methods that train N:M patterns only: not in the unstructured columns
DEFAULT_PATTERNS = ("2:4", "1:4")


def split_value(method: str) -> tuple[str, float | None]:
    """("rda-fixed", 9e-7) for "rda-fixed=9e-7"; (method, None) without a value."""
    base, sep, value = method.partition("=")
    if not sep:
        return method, None
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{method}: the value after '=' must be a positive number")
    return base, number


def split_pattern(method: str) -> tuple[str, tuple[int, int] | None]:
    """("gmp", (2, 4)) for "gmp@2:4"; (method, None) for an unstructured run."""
    from sparse_rda.validation import check_pattern

    base, _, pattern = method.partition("@")
    return base, check_pattern(pattern) if pattern else None


def nm_sparsity(pattern: tuple[int, int]) -> float:
    return 1.0 - pattern[0] / pattern[1]


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """The fraction of exact zeros over the >= 2-D weight tensors (pruner.sparsity()'s definition), and per
    tensor. Read from the modules' ``weight`` attributes, so a mask applied by a parametrization counts too."""
    weights = {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2
    }
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return sum(zeros.values()) / total, {name: zeros[name] / w.numel() for name, w in weights.items()}


def cosine(base: float, k: int, total_steps: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(k, total_steps) / total_steps))


class SGDTraining:
    """Dense SGD-momentum with a per-step cosine lr; with a pruner, every mask-based method. The lr is set by
    hand from ``pruner.lr_step`` (not an LRScheduler) so iterative pruning can replay the schedule."""

    def __init__(self, model: nn.Module, total_steps: int, pruner=None):
        self.opt = torch.optim.SGD(model.parameters(), **SGD_KW)
        self.pruner = pruner
        self.total_steps = total_steps

    def penalty(self):
        return self.pruner.penalty() if self.pruner is not None else 0.0

    def step(self, k: int) -> None:
        """Step k (0-based) with the gradients in place; then the lr of step k + 1."""
        if self.pruner is not None:
            self.pruner.before_step(self.opt)
        self.opt.step()
        if self.pruner is not None:
            self.pruner.after_step(self.opt)
        schedule_step = self.pruner.lr_step(k + 1) if self.pruner is not None else k + 1
        for group in self.opt.param_groups:
            group["lr"] = cosine(SGD_KW["lr"], schedule_step, self.total_steps)

    def finish(self) -> dict:
        if self.pruner is not None:
            self.pruner.finalize(self.opt)
        return {}


class RDATraining:
    """sparse_rda.RDA with CosineRDA (or, without averaging, a cosine lr alone); its controller steers lam to reach
    the target sparsity."""

    def __init__(self, model: nn.Module, total_steps: int, target: float | None, kw: dict = RDA_KW):
        """``target`` None: no controller, ``kw``'s lam throughout."""
        self.opt = sparse_rda.RDA(sparse_rda.param_groups(model), **kw, target_sparsity=target,
                                  total_steps=total_steps if target is not None else None)
        if kw is RDA_PROX_KW:  # averaging stays 0: the lr alone follows the cosine
            self.schedule = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda k: cosine(1.0, k, total_steps))
        else:
            self.schedule = sparse_rda.schedules.CosineRDA(self.opt, total_steps=total_steps)

    def penalty(self):
        return 0.0

    def step(self, k: int) -> None:
        self.opt.step()
        self.schedule.step()

    def finish(self) -> dict:
        return {"final_lam": float(self.opt.param_groups[0]["lam"])}  # where the controller left it


class GRDATraining:
    """sparse_rda.GRDA at a constant lr (the threshold schedule assumes one); the controller steers c."""

    def __init__(self, model: nn.Module, total_steps: int, target: float):
        self.opt = sparse_rda.GRDA(model.parameters(), **GRDA_KW, target_sparsity=target, total_steps=total_steps)

    def penalty(self):
        return 0.0

    def step(self, k: int) -> None:
        self.opt.step()

    def finish(self) -> dict:
        return {"final_c": float(self.opt.param_groups[0]["c"])}


def pruning_methods() -> tuple[str, ...]:
    from sparse_rda import pruning  # imported when needed: --report-only and the own methods run without it

    return tuple(pruning.METHODS)


def all_methods() -> tuple[str, ...]:
    """The unstructured rows: every method but the N:M-only ones, then torchao PAT's."""
    from accuracy_pat import PAT_METHODS

    return OWN_METHODS + tuple(m for m in pruning_methods() if m not in NM_ONLY) + PAT_METHODS


def is_valued_method(method: str) -> bool:
    """Whether ``method`` is one of the "<name>=<value>" runs (a lambda sweep's, or a fixed-lam RDA)."""
    from accuracy_pat import PAT_VALUED

    base, value = split_value(method)
    return value is not None and (base in FIXED_LAM_METHODS or base in PAT_VALUED)


def nm_runs(patterns) -> tuple[str, ...]:
    """The N:M rows' run names for these patterns ("N:M" strings)."""
    return tuple(f"{m}@{p}" for p in patterns for m in NM_METHODS)


def make_training(method: str, model: nn.Module, total_steps: int, target: float, model_name: str):
    if method.startswith("pat-"):
        from accuracy_pat import PATTraining

        return PATTraining(model, total_steps, target, method, model_name)
    fixed, lam = split_value(method)
    if lam is not None:  # rda-fixed=<lam>, rda-l1-fixed=<lam>: lam constant, no controller
        if fixed not in FIXED_LAM_METHODS:
            raise ValueError(f"{method}: only {', '.join(FIXED_LAM_METHODS)} take a value (lam)")
        return RDATraining(model, total_steps, None, dict(FIXED_LAM_METHODS[fixed], lam=lam))
    method, pattern = split_pattern(method)
    if pattern is not None:  # the pattern's own sparsity (target == nm_sparsity(pattern))
        if method == "rda":
            return RDATraining(model, total_steps, target, dict(RDA_KW, granularity=("nm", *pattern)))
        from sparse_rda import pruning

        return SGDTraining(model, total_steps, pruning.make(method, model, sparsity=target, total_steps=total_steps,
                                                            pattern=pattern))
    if method == "dense":
        return SGDTraining(model, total_steps)
    if method == "rda":
        return RDATraining(model, total_steps, target)
    if method == "rda-l1":
        return RDATraining(model, total_steps, target, RDA_L1_KW)
    if method == "rda-l1-da":
        return RDATraining(model, total_steps, target, RDA_L1_DA_KW)
    if method == "rda-prox":
        return RDATraining(model, total_steps, target, RDA_PROX_KW)
    if method == "grda":
        return GRDATraining(model, total_steps, target)
    from sparse_rda import pruning

    return SGDTraining(model, total_steps, pruning.make(method, model, sparsity=target, total_steps=total_steps))


def hyper_parameters() -> dict:
    """What the runs were trained with: part of the config a resumed table must match."""
    return dict(sgd=SGD_KW, rda=RDA_KW, rda_l1=RDA_L1_KW, rda_l1_da=RDA_L1_DA_KW, rda_prox=RDA_PROX_KW, grda=GRDA_KW,
                lr_schedule="cosine per step",
                rda_schedule="CosineRDA per step", grda_schedule="constant lr", batch_size=BATCH_SIZE,
                data_order="randperm per epoch, generator seeded seed * 1000 + epoch")


def train_run(model_name: str, method: str, target: float, seed: int, epochs: int, data, bar: tqdm) -> dict:
    """Trains one fresh model with one method; returns its record for the JSON."""
    model, total_steps, seconds, loss, extra = train_model(model_name, method, target, seed, epochs, data, bar)
    sparsity, per_tensor = weight_sparsity(model)
    return dict(
        model=model_name, method=method, target_sparsity=target, seed=seed, epochs=epochs, steps=total_steps,
        accuracy=test_accuracy(model, data[2], data[3]), sparsity=sparsity, layer_sparsity=per_tensor,
        final_loss=loss.item() if loss is not None else None, train_seconds=round(seconds, 2),
        seconds_per_epoch=round(seconds / epochs, 3), threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **extra,
    )


def train_model(model_name: str, method: str, target: float, seed: int, epochs: int, data, bar: tqdm):
    """(trained model, steps, training seconds, last loss, the method's extra record fields)."""
    train_x, train_y = data[0], data[1]
    torch.manual_seed(seed)  # the same initial weights for every method at this seed
    model = MODELS[model_name][0]()
    steps_per_epoch = math.ceil(len(train_x) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    training = make_training(method, model, total_steps, target, model_name)
    bar.reset(total=total_steps)
    bar.set_description(f"{model_name} {method} {target:.0%} seed {seed}")

    seconds, k, loss = 0.0, 0, None
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        for idx in epoch_batches(len(train_x), epoch, seed):
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx]) + training.penalty()
            training.opt.zero_grad(set_to_none=True)
            loss.backward()
            training.step(k)
            k += 1
            bar.update()
            if k % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    extra = training.finish()  # e.g. the one-shot prune at the end: training time too
    seconds += time.perf_counter() - start
    return model, total_steps, seconds, loss, extra
