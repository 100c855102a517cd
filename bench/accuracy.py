#!/usr/bin/env python
"""Accuracy benchmark: test accuracy vs sparsity on Fashion-MNIST for every sparse-training method of the library,
next to dense SGD, on LeNet-300-100 and a small CNN (LeNet-5).

    python bench/accuracy.py                          # both models, every method, 90/95/98/99%, seeds 0, 1, 2
    python bench/accuracy.py --models lenet           # the LeNet-300-100 table alone (40-50 min)
    python bench/accuracy.py --quick                  # smoke run: 2000 examples, 1 epoch, seed 0, 95%, every method
    python bench/accuracy.py --models lenet --methods rda,rda-l1,gmp --sparsities 95,99 --seeds 0
    python bench/accuracy.py --report-only            # markdown table and plot again from the JSON alone
    make accuracy                                     # the venv, matplotlib, then the first command

Methods (``--methods``; default all of them):

- ``dense``: SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), cosine lr per step to 0; once per seed (sparsity 0).
- ``rda``: ``sparse_rda.RDA`` (lr=1, lam=3.5e-6 to start, momentum_time=9.5, weight_decay=5e-4) with
  ``CosineRDA``, ``target_sparsity`` = the column's sparsity: its controller steers lam to reach it.
- ``rda-l1``: the same with ``reweight=False`` (plain l1 RDA): the ablation that says whether reweighting helps
  under RDA's own schedule.
- ``rda-l1-da``: plain l1 at its best (bench/results/l1_ablation.md): ``reweight=False`` and averaging 1 from the
  first step (l1-RDA's dual average; CosineRDA then moves the lr alone), with the controller.
- ``rda-prox``: RDA with ``averaging=0`` throughout (proximal SGD with momentum and the reweighted penalty) and a
  cosine lr only: the ablation that says whether the generalized dual averaging (CosineRDA's 0 -> 1) helps.
- ``grda``: ``sparse_rda.GRDA`` (lr=0.1 constant, c=0.005 to start, mu=0.55), ``target_sparsity`` likewise.
- every name in ``sparse_rda.pruning.METHODS`` (magnitude, gmp, cyclical, imp-weight, imp-lr, rigl, set, snip,
  halo): ``pruning.make(name, model, sparsity, total_steps)`` on the dense run's SGD and cosine lr, the lr read
  at ``pruner.lr_step(k)`` so IMP can replay it.
- ``pat-lasso``, ``pat-min``, ``pat-global``: torchao's PAT (``torchao.prototype.pat``, an optional dependency:
  ``pip install --no-deps torchao==0.18.0``; without it these rows are skipped, saying so) over the dense run's
  SGD and cosine lr: ProxLasso at the lambda bench/lambda_sweep.py found for the model and target, and per-tensor /
  global magnitude projection every step (bench/accuracy_pat.py). ``pat-lasso=<lambda>`` (any lambda) and
  ``rda-fixed=<lam>`` / ``rda-l1-fixed=<lam>`` (lam fixed, no controller) run as named.
- N:M runs, ``<method>@N:M`` for each of ``--patterns`` (default 2:4 and 1:4), at the pattern's own sparsity
  1 - N/M, in a table of their own: ``rda@N:M`` (RDA as above with ``granularity=("nm", N, M)``), ``sr-ste@N:M``
  (SR-STE, N:M only), ``magnitude@N:M`` and ``gmp@N:M`` (``pattern="N:M"``), on the same SGD.

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
3.6-4.1 s per epoch, its table at 10 epochs about 65 minutes. The N:M runs (2 patterns x 4 methods x 2 seeds) add
~15 minutes to LeNet-300-100's (2.5-3.5 s per epoch each; SR-STE's per-step masks took 11-12 before the
reference's N:M selection got faster, bench/NOTES.md) and ~14 to the CNN's (5-5.6 s per epoch), so ``make
accuracy`` took about 2.3 hours in one sitting at 2 seeds and without the PAT and rda-l1-da rows; at 3 seeds with
them expect ~4.5 hours (PAT's step is ~12x SGD's on these tensors: its runs take 2-3x a dense run's time). Two
threads are no faster than one for these small layers, and on a shared machine one thread is much steadier (a
multi-threaded op stalls whenever another process
holds the other core): on a busy 2-core box use ``--threads 1``. The thread count changes the float summation
order, so it is part of a table's config: runs at different ``--threads`` are not bit-identical (3-epoch GMP at
99% moved by points between 1 and 2 threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

import accuracy_report  # markdown table, plot, design-goal check
import common
import fashion_mnist
from accuracy_pat import PATUnavailable, import_pat
from accuracy_training import (DEFAULT_PATTERNS, NM_METHODS, OWN_METHODS, all_methods, hyper_parameters,  # noqa: F401
                               is_valued_method, nm_runs, nm_sparsity, split_pattern, train_run)
from fashion_mnist import MODELS
from sparse_rda.datasets import default_data_dir

DEFAULT_SPARSITIES = (90, 95, 98, 99)
DEFAULT_SEEDS = (0, 1, 2)  # issue 19: means of 3 seeds
QUICK = dict(train_examples=2000, test_examples=1000, epochs=1, seeds=(0,), sparsities=(95,), patterns=("2:4",))


# ----------------------------------------------------------------------------------------------------------
# Results file: written after every run, so a long table survives an interruption


def run_key(run: dict) -> tuple:
    return run["method"], round(run["target_sparsity"], 6), run["seed"]


def run_targets(method: str, targets: list[float]) -> list[float]:
    """The target sparsities a method runs at: none for dense (0), the pattern's for an N:M run."""
    base, pattern = split_pattern(method)
    return [0.0] if base == "dense" else [nm_sparsity(pattern)] if pattern else targets


def config_differences(old: dict, config: dict) -> list[str]:
    """The settings in which two tables' runs would not compare: any config key but the command, and the
    hyper-parameters the old table has (a method added since brings new ones, which do not conflict)."""
    differs = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k not in
                     ("command", "hyper"))
    old_hyper, hyper = old.get("hyper") or {}, config.get("hyper") or {}
    return differs + [f"hyper.{k}" for k in sorted(old_hyper) if old_hyper[k] != hyper.get(k)]


def load_results(path: Path, config: dict, restart: bool) -> dict:
    """The results so far for this config (empty if none, or with --restart); exits if the file was written
    with another config, rather than mixing runs that do not compare."""
    if restart or not path.exists():
        return dict(config=config, runs=[], failures=[])
    results = json.loads(path.read_text())
    differs = config_differences(results.get("config") or {}, config)
    if differs:
        sys.exit(f"{path} holds runs of another config (differs in: {', '.join(differs)}). "
                 "Pass --restart to discard them, or --out DIR to write elsewhere.")
    results["config"] = config  # same config; the command line may differ (e.g. other --methods)
    results.setdefault("failures", [])
    return results


def output_stem(model: str, args: argparse.Namespace) -> str:
    stem = f"accuracy-{model}" + ("-quick" if args.quick else "")
    stem += f"-subset{args.subset}" if args.subset and not args.quick else ""
    custom_epochs = args.epochs is not None and args.epochs != MODELS[model][2] and not args.quick
    stem += f"-e{args.epochs}" if custom_epochs else ""
    return stem


# ----------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--models", default="lenet,cnn", help=f"comma-separated, from {', '.join(MODELS)} "
                    "(default %(default)s)")
    ap.add_argument("--methods", help="comma-separated (default: dense, rda, rda-l1, rda-prox, grda, every "
                    "sparse_rda.pruning.METHODS entry but sr-ste, and the N:M runs of --patterns); an N:M run is "
                    "<method>@N:M, e.g. rda@2:4")
    ap.add_argument("--patterns", help="N:M patterns whose runs (" + ", ".join(NM_METHODS) + " at 1 - N/M "
                    "inside the pattern) join the default methods (default " + ",".join(DEFAULT_PATTERNS) +
                    "; --quick: 2:4; '' for none)")
    ap.add_argument("--sparsities", help="target sparsities in percent (default 90,95,98,99; --quick: 95)")
    ap.add_argument("--seeds", help="comma-separated (default 0,1,2; --quick: 0)")
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
    ap.add_argument("--out", type=Path, default=common.RESULTS, help="results folder (default: bench/results)")
    ap.add_argument("--restart", action="store_true", help="discard the runs already in the JSON")
    ap.add_argument("--report-only", action="store_true", help="only write the markdown table and plot from the JSON")
    args = ap.parse_args(argv)
    args.models = common.csv(args.models)
    for name in args.models:
        if name not in MODELS:
            ap.error(f"--models: unknown model {name!r} (choose from {', '.join(MODELS)})")
    return args


def selected_runs(args: argparse.Namespace) -> tuple[list[str], list[float], list[int]]:
    patterns = common.csv(args.patterns) if args.patterns is not None else list(
        QUICK["patterns"] if args.quick else DEFAULT_PATTERNS)
    methods = common.csv(args.methods) if args.methods else list(all_methods()) + list(nm_runs(patterns))
    if not set(methods) <= set(OWN_METHODS):  # only then does the check need sparse_rda.pruning
        known = all_methods()
        unknown = []
        for m in methods:
            try:
                base, pattern = split_pattern(m)
            except ValueError:
                base, pattern = m, None
                unknown.append(m)
                continue
            if (base not in NM_METHODS) if pattern else (m not in known and not is_valued_method(m)):
                unknown.append(m)
        if unknown:
            sys.exit(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(known)}, or "
                     f"{'/'.join(NM_METHODS)}@N:M)")
    methods = available_methods(methods)
    default_sparsities = QUICK["sparsities"] if args.quick else DEFAULT_SPARSITIES
    percents = common.csv(args.sparsities, float) if args.sparsities else list(default_sparsities)
    if not all(0 < p < 100 for p in percents):
        sys.exit("--sparsities: percentages strictly between 0 and 100, e.g. 90,95,98,99")
    seeds = common.csv(args.seeds, int) if args.seeds else list(QUICK["seeds"] if args.quick else DEFAULT_SEEDS)
    return methods, [p / 100 for p in percents], seeds


def available_methods(methods: list[str]) -> list[str]:
    """The methods whose libraries are installed: without torchao the PAT rows are left out, saying why."""
    pat = [m for m in methods if m.startswith("pat-")]
    if not pat:
        return methods
    try:
        import_pat()
    except PATUnavailable as err:
        print(f"skipping {', '.join(pat)}: {err}", file=sys.stderr)
        return [m for m in methods if m not in pat]
    return methods


def load_data(args: argparse.Namespace):
    train_x, train_y, test_x, test_y = fashion_mnist.load(args.data)
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
    every_run = [(m, t, s) for s in seeds for m in methods for t in run_targets(m, targets)]
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
            common.note_load_end(machine)
            common.write_json(path, results)
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
    torch.set_num_threads(args.threads or common.usable_cpus())
    data = load_data(args)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info(torch.device("cpu"))
    command = common.command_line("accuracy.py", argv)
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
