#!/usr/bin/env python
"""Accuracy benchmark: test accuracy vs sparsity on Fashion-MNIST for every sparse-training method of the library,
next to dense SGD, on LeNet-300-100 and a small CNN (LeNet-5).

    python bench/accuracy.py                          # both models, every method, 90/95/98/99%, seeds 0 and 1
    python bench/accuracy.py --models lenet           # the LeNet-300-100 table alone (40-50 min)
    python bench/accuracy.py --quick                  # smoke run: 2000 examples, 1 epoch, seed 0, 95%, every method
    python bench/accuracy.py --models lenet --methods rda,rda-l1,gmp --sparsities 95,99 --seeds 0
    python bench/accuracy.py --report-only            # markdown table and plot again from the JSON alone
    make accuracy                                     # the venv, matplotlib, then the first command

Methods (``--methods``; default all of them):

- ``dense``: SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), cosine lr per step to 0; once per seed (sparsity 0).
- ``rda``: ``sparse_rda.RDA`` (lr=1, lam=3.5e-6 to start, momentum_time=9.5, weight_decay=5e-4) with
  ``CosineRDA``, ``target_sparsity`` = the column's sparsity: its controller steers lam to reach it.
- ``rda-l1``: the same with ``reweight=False`` (plain l1 RDA): the ablation that says whether reweighting helps.
- ``rda-prox``: RDA with ``averaging=0`` throughout (proximal SGD with momentum and the reweighted penalty) and a
  cosine lr only: the ablation that says whether the generalized dual averaging (CosineRDA's 0 -> 1) helps.
- ``grda``: ``sparse_rda.GRDA`` (lr=0.1 constant, c=0.005 to start, mu=0.55), ``target_sparsity`` likewise.
- every name in ``sparse_rda.pruning.METHODS`` (magnitude, gmp, cyclical, imp-weight, imp-lr, rigl, set, snip,
  halo): ``pruning.make(name, model, sparsity, total_steps)`` on the dense run's SGD and cosine lr, the lr read
  at ``pruner.lr_step(k)`` so IMP can replay it.

Every run at a seed starts from the same initial weights (``torch.manual_seed(seed)`` before the model is built)
and sees the same batches in the same order (a permutation per epoch from a generator seeded by seed and epoch),
for the same number of epochs. Sparsity = the fraction of exact zeros over the >= 2-D weight tensors (biases
excluded), for every method alike.

Outputs, per model, in ``--out`` (default bench/results), named ``accuracy-<model>[-quick][-subsetN][-eE]``:
``.json`` (the report header's machine and versions, the config, and every finished run: method, target and
achieved sparsity, test accuracy, seed, epochs, train time), ``.md`` (rows = methods, columns = target
sparsities, mean accuracy over seeds +- half the spread, achieved sparsity; whether RDA meets the design's
goal) and ``.png`` (accuracy vs achieved sparsity). Each run is written to the JSON as soon as it finishes and
runs already there are skipped, so an interrupted table resumes where it stopped (``--restart`` discards them).

Data: the Fashion-MNIST IDX files in ``--data``, else ``$FASHION_MNIST_DIR``, else /usr/share/datasets/fashion-mnist
(Debian: ``apt-get install dataset-fashion-mnist``); without them the runner stops with that message.

Cost, measured on the 2-core development box (AMD EPYC, torch 2.13 CPU, batch 128, this runner): LeNet-300-100
1.1-1.8 s per epoch per run (dense 1.1; rda 1.2-1.4; rigl, set, snip 1.4; halo 1.8), so its table (12 sparse
methods x 4 sparsities x 2 seeds + 2 dense = 98 runs of 20 epochs) takes 40-50 minutes; the CNN (LeNet-5)
3.6-4.1 s per epoch, its table at 10 epochs about 65 minutes. Two threads are no faster than one for these small
layers, and on a shared machine one thread is much steadier (a multi-threaded op stalls whenever another process
holds the other core): on a busy 2-core box use ``--threads 1``. The thread count changes the float summation
order, so it is part of a table's config: runs at different ``--threads`` are not bit-identical (3-epoch GMP at
99% moved by points between 1 and 2 threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import accuracy_report  # (markdown table, plot, design-goal check)
import common

import sparse_rda
from sparse_rda.datasets import DatasetNotFoundError, default_data_dir, load_fashion_mnist

HERE = Path(__file__).resolve().parent

# Hyper-parameters. The starting lam / c only matter until the target-sparsity controller takes over.
SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
RDA_KW = dict(lr=1.0, lam=3.5e-6, momentum_time=9.5, weight_decay=5e-4)
RDA_L1_KW = dict(RDA_KW, reweight=False)
RDA_PROX_KW = dict(RDA_KW, averaging=0.0)
GRDA_KW = dict(lr=0.1, c=0.005, mu=0.55)
BATCH_SIZE = 128

OWN_METHODS = ("dense", "rda", "rda-l1", "rda-prox", "grda")  # the rest come from sparse_rda.pruning.METHODS
DEFAULT_SPARSITIES = (90, 95, 98, 99)
DEFAULT_SEEDS = (0, 1)
QUICK = dict(train_examples=2000, test_examples=1000, epochs=1, seeds=(0,), sparsities=(95,))


# ----------------------------------------------------------------------------------------------------------
# Models (both take the flat, standardized 784-pixel images the dataset loader returns)


def lenet_300_100() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )  # fmt: skip


def small_cnn() -> nn.Module:
    """LeNet-5 on 28 x 28 inputs: conv5x5(1->6) - pool - conv5x5(6->16) - pool - fc(256->120) - fc(120->84) - fc(10),
    44k parameters. The classic small CNN of the pruning papers (with LeNet-300-100 in Han et al. 2015); wider
    ones (16-32 channels and up) cost 2-6x the time per epoch on a CPU."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),    # 6 x 12 x 12
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 4 x 4
        nn.Flatten(),
        nn.Linear(256, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )  # fmt: skip


# name -> (builder, title, default epochs). Epochs: chosen so each default table fits its time budget.
MODELS = {
    "lenet": (lenet_300_100, "LeNet-300-100", 20),
    "cnn": (small_cnn, "LeNet-5 CNN (conv6-conv16-fc120-fc84)", 10),
}


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


# ----------------------------------------------------------------------------------------------------------
# Methods: each builds its optimizer (and pruner) for one run and says what one training step does


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

    def __init__(self, model: nn.Module, total_steps: int, target: float, kw: dict = RDA_KW):
        self.opt = sparse_rda.RDA(sparse_rda.param_groups(model), **kw, target_sparsity=target,
                                  total_steps=total_steps)
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
    return OWN_METHODS + pruning_methods()


def make_training(method: str, model: nn.Module, total_steps: int, target: float):
    if method == "dense":
        return SGDTraining(model, total_steps)
    if method == "rda":
        return RDATraining(model, total_steps, target)
    if method == "rda-l1":
        return RDATraining(model, total_steps, target, RDA_L1_KW)
    if method == "rda-prox":
        return RDATraining(model, total_steps, target, RDA_PROX_KW)
    if method == "grda":
        return GRDATraining(model, total_steps, target)
    from sparse_rda import pruning

    return SGDTraining(model, total_steps, pruning.make(method, model, sparsity=target, total_steps=total_steps))


def hyper_parameters() -> dict:
    """What the runs were trained with: part of the config a resumed table must match."""
    return dict(sgd=SGD_KW, rda=RDA_KW, rda_l1=RDA_L1_KW, rda_prox=RDA_PROX_KW, grda=GRDA_KW,
                lr_schedule="cosine per step",
                rda_schedule="CosineRDA per step", grda_schedule="constant lr", batch_size=BATCH_SIZE,
                data_order="randperm per epoch, generator seeded seed * 1000 + epoch")


# ----------------------------------------------------------------------------------------------------------
# Training


def epoch_batches(n: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """The shuffled batch indices of one epoch: a function of (seed, epoch) only, the same for every method."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return list(torch.randperm(n, generator=gen).split(BATCH_SIZE))


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(x)


def train_run(model_name: str, method: str, target: float, seed: int, epochs: int, data, bar: tqdm) -> dict:
    """Trains one fresh model with one method; returns its record for the JSON."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)  # the same initial weights for every method at this seed
    model = MODELS[model_name][0]()
    steps_per_epoch = math.ceil(len(train_x) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    training = make_training(method, model, total_steps, target)
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

    sparsity, per_tensor = weight_sparsity(model)
    return dict(
        model=model_name, method=method, target_sparsity=target, seed=seed, epochs=epochs, steps=total_steps,
        accuracy=test_accuracy(model, test_x, test_y), sparsity=sparsity, layer_sparsity=per_tensor,
        final_loss=loss.item() if loss is not None else None, train_seconds=round(seconds, 2),
        seconds_per_epoch=round(seconds / epochs, 3), threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **extra,
    )


# ----------------------------------------------------------------------------------------------------------
# Results file: written after every run, so a long table survives an interruption


def run_key(run: dict) -> tuple:
    return run["method"], round(run["target_sparsity"], 6), run["seed"]


def load_results(path: Path, config: dict, restart: bool) -> dict:
    """The results so far for this config (empty if none, or with --restart); exits if the file was written
    with another config, rather than mixing runs that do not compare."""
    if restart or not path.exists():
        return dict(config=config, runs=[], failures=[])
    results = json.loads(path.read_text())
    if results.get("config") != config:
        old = results.get("config") or {}
        differs = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "command")
        if differs:
            sys.exit(f"{path} holds runs of another config (differs in: {', '.join(differs)}). "
                     "Pass --restart to discard them, or --out DIR to write elsewhere.")
    results["config"] = config  # same config; the command line may differ (e.g. other --methods)
    results.setdefault("failures", [])
    return results


def save_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: an interruption leaves the old file or the new one


def output_stem(model: str, args: argparse.Namespace) -> str:
    stem = f"accuracy-{model}" + ("-quick" if args.quick else "")
    stem += f"-subset{args.subset}" if args.subset and not args.quick else ""
    custom_epochs = args.epochs is not None and args.epochs != MODELS[model][2] and not args.quick
    stem += f"-e{args.epochs}" if custom_epochs else ""
    return stem


# ----------------------------------------------------------------------------------------------------------
# Main


def csv(text: str, convert=str) -> list:
    return [convert(x.strip()) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="lenet,cnn", help=f"comma-separated, from {', '.join(MODELS)} "
                    "(default %(default)s)")
    ap.add_argument("--methods", help="comma-separated (default: dense, rda, rda-l1, grda and every "
                    "sparse_rda.pruning.METHODS entry)")
    ap.add_argument("--sparsities", help="target sparsities in percent (default 90,95,98,99; --quick: 95)")
    ap.add_argument("--seeds", help="comma-separated (default 0,1; --quick: 0)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default: " +
                    ", ".join(f"{name} {spec[2]}" for name, spec in MODELS.items()) + "; --quick: 1)")
    ap.add_argument("--subset", type=int, help="train on the first N training examples only (debugging; "
                    "ignored with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2000 training / 1000 test examples, 1 epoch, "
                    "seed 0, sparsity 95%%, every method; writes accuracy-<model>-quick.*")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: every usable core)")
    ap.add_argument("--data", type=Path, default=default_data_dir(),
                    help="directory of the Fashion-MNIST *-ubyte.gz files (default: $FASHION_MNIST_DIR, else "
                    "%(default)s)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: bench/results)")
    ap.add_argument("--restart", action="store_true", help="discard the runs already in the JSON")
    ap.add_argument("--report-only", action="store_true", help="only write the markdown table and plot from the JSON")
    args = ap.parse_args(argv)
    args.models = csv(args.models)
    for name in args.models:
        if name not in MODELS:
            ap.error(f"--models: unknown model {name!r} (choose from {', '.join(MODELS)})")
    return args


def selected_runs(args: argparse.Namespace) -> tuple[list[str], list[float], list[int]]:
    methods = csv(args.methods) if args.methods else list(all_methods())
    if not set(methods) <= set(OWN_METHODS):  # only then does the check need sparse_rda.pruning
        known = all_methods()
        unknown = [m for m in methods if m not in known]
        if unknown:
            sys.exit(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    default_sparsities = QUICK["sparsities"] if args.quick else DEFAULT_SPARSITIES
    percents = csv(args.sparsities, float) if args.sparsities else list(default_sparsities)
    if not all(0 < p < 100 for p in percents):
        sys.exit("--sparsities: percentages strictly between 0 and 100, e.g. 90,95,98,99")
    seeds = csv(args.seeds, int) if args.seeds else list(QUICK["seeds"] if args.quick else DEFAULT_SEEDS)
    return methods, [p / 100 for p in percents], seeds


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (containers, taskset)
    except AttributeError:  # not on every OS
        return os.cpu_count() or 1


def load_data(args: argparse.Namespace):
    try:
        train_x, train_y, test_x, test_y = load_fashion_mnist(args.data)
    except DatasetNotFoundError as err:
        sys.exit(f"error: {err}")
    n_train = QUICK["train_examples"] if args.quick else args.subset
    n_test = QUICK["test_examples"] if args.quick else None
    return train_x[:n_train], train_y[:n_train], test_x[:n_test], test_y[:n_test]


def run_model(model: str, args, data, methods, targets, seeds, machine: dict, command: str) -> dict:
    """Trains every missing run of one model's table, saving after each; returns the results."""
    epochs = QUICK["epochs"] if args.quick else (args.epochs or MODELS[model][2])
    config = dict(model=model, title=MODELS[model][1], epochs=epochs, train_examples=len(data[0]),
                  test_examples=len(data[2]), quick=args.quick, threads=torch.get_num_threads(),
                  hyper=hyper_parameters(), command=command)
    path = args.out / f"{output_stem(model, args)}.json"
    results = load_results(path, config, args.restart)
    results["machine"] = machine
    done = {run_key(r) for r in results["runs"]}
    every_run = [(m, t, s) for s in seeds for m in methods for t in ([0.0] if m == "dense" else targets)]
    todo = [(m, t, s) for m, t, s in every_run if (m, round(t, 6), s) not in done]
    print(f"{MODELS[model][1]}: {len(todo)} runs to train ({len(done)} already in {path}), epochs: {epochs}, "
          f"{config['train_examples']} training / {config['test_examples']} test examples, "
          f"{torch.get_num_threads()} threads")

    with tqdm(total=len(todo), desc=f"{model} runs", position=0, dynamic_ncols=True) as runs_bar, \
            tqdm(total=0, position=1, leave=False, dynamic_ncols=True, mininterval=0.5) as steps_bar:
        for method, target, seed in todo:
            try:
                run = train_run(model, method, target, seed, epochs, data, steps_bar)
            except Exception as err:  # one broken method must not lose the rest of an hour-long table
                tqdm.write(traceback.format_exc())
                failure = dict(method=method, target_sparsity=target, seed=seed, error=f"{type(err).__name__}: {err}")
                results["failures"] = [f for f in results["failures"] if run_key(f) != run_key(failure)]
                results["failures"].append(failure)
            else:
                results["runs"].append(run)
                results["failures"] = [f for f in results["failures"] if run_key(f) != run_key(run)]
                tqdm.write(f"{method:>10} {target:>4.0%} seed {seed}: accuracy {run['accuracy']:.2%}, sparsity "
                           f"{run['sparsity']:.2%}, {run['seconds_per_epoch']:.2f} s/epoch")
            if hasattr(os, "getloadavg"):
                machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            save_results(path, results)
            runs_bar.update()
    return results


def write_reports(model: str, args) -> None:
    stem = args.out / output_stem(model, args)
    json_path = stem.with_suffix(".json")
    if not json_path.exists():
        print(f"{json_path}: no results yet", file=sys.stderr)
        return
    results = json.loads(json_path.read_text())
    stem.with_suffix(".md").write_text(accuracy_report.markdown(results))
    accuracy_report.plot(results, stem.with_suffix(".png"))
    print(f"wrote {json_path}, .md and .png")


def main(argv=None) -> int:
    args = parse_args(argv)
    accuracy_report.require_matplotlib()  # before training, not after an hour of it
    if args.report_only:
        for model in args.models:
            write_reports(model, args)
        return 0

    methods, targets, seeds = selected_runs(args)
    torch.set_num_threads(args.threads or usable_cores())
    data = load_data(args)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info(torch.device("cpu"))
    command = "python bench/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    failures = 0
    for model in args.models:
        try:
            results = run_model(model, args, data, methods, targets, seeds, machine, command)
        except KeyboardInterrupt:  # the table of what is done so far; a rerun resumes
            write_reports(model, args)
            raise
        write_reports(model, args)
        failures += len(results["failures"])
    if failures:
        print(f"{failures} run(s) failed: see 'failures' in the JSON; a rerun retries them", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
