#!/usr/bin/env python
"""The fixed lambda that lands a method without a sparsity target on each target: torchao PAT's Lasso
(``pat-lasso=<lambda>``) and RDA with lam fixed instead of steered (``rda-fixed=<lam>``, ``rda-l1-fixed=<lam>``:
what the controller costs). One seed per (method, model, target), in the accuracy benchmark's own runs
(bench/accuracy_training.py's train_run; 1 thread).

The final sparsity grows with lambda, so the search brackets the target and interpolates log(lambda) against
log(density) between the nearest runs on either side (every run of the method and model informs every target),
stopping when the density is within TOLERANCE of the target's (5%: 95 +- 0.25%, 99 +- 0.05%) or after
MAX_RUNS runs. The pick is the method's run nearest the target in density (whichever search ran it);
``picked()`` gives it to bench/accuracy.py's
``pat-lasso`` rows and bench/l1_ablation.py's ``fixed`` variants.

    python bench/lambda_sweep.py                                   # 3 methods x 2 models x 90/95/98/99%
    python bench/lambda_sweep.py --methods pat-lasso --models lenet --sparsities 95

Results: bench/results/lambda_sweep-<model>.{json,md} (every lambda tried), written after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

import accuracy_training
import common
import fashion_mnist
from sparse_rda.datasets import default_data_dir

METHODS = ("pat-lasso", "rda-fixed", "rda-l1-fixed")
TOLERANCE = 0.05  # relative error of the density (1 - sparsity) that ends a search (the final sparsity moves
# by ~0.1-0.2 point between lambdas 1% apart: a tighter one spends runs on that noise)
MAX_RUNS = 6
SEED = 0
# the first lambda to try at 95% on LeNet-300-100 (near the controller's final lam / an earlier hand sweep); a
# model's other targets start from its runs so far
FIRST_GUESS = {"pat-lasso": 3.8e-4, "rda-fixed": 9e-7, "rda-l1-fixed": 3e-4}
STEP = 3.0  # the factor to move by while the target is not bracketed yet


def results_path(out: Path, model: str) -> Path:
    return out / f"lambda_sweep-{model}.json"


def log_density(sparsity: float) -> float:
    return math.log(max(1.0 - sparsity, 1e-6))


def next_lambda(runs: list[dict], target: float) -> float:
    """The lambda to try next for ``target`` from the method's runs so far (each: lambda, sparsity)."""
    if not runs:
        return None
    goal = log_density(target)
    below = [r for r in runs if r["sparsity"] < target]  # lambda too small
    above = [r for r in runs if r["sparsity"] >= target]
    if below and above:
        lo = max(below, key=lambda r: r["lam"])
        hi = min(above, key=lambda r: r["lam"])
        return math.exp(interpolate(lo, hi, goal, 0.1, 0.9))  # stay inside the bracket
    side = sorted(below or above, key=lambda r: r["lam"])
    edge, inner = (side[-1], side[-2:-1]) if below else (side[0], side[1:2])
    direction = 1.0 if below else -1.0  # up while every run is below the target
    move = math.log(STEP)
    if inner:  # extrapolate through the two runs nearest the target, by at most a factor STEP
        delta = direction * (interpolate(inner[0], edge, goal, -math.inf, math.inf) - math.log(edge["lam"]))
        if math.isfinite(delta) and delta > 0:
            move = min(delta, move)
    return edge["lam"] * math.exp(direction * move)

def interpolate(r0: dict, r1: dict, goal: float, low: float, high: float) -> float:
    """log(lambda) where the line through two runs (log lambda, log density) meets ``goal``; the fraction of
    the way from r0 to r1 clamped to [low, high]."""
    x0, x1 = math.log(r0["lam"]), math.log(r1["lam"])
    y0, y1 = log_density(r0["sparsity"]), log_density(r1["sparsity"])
    t = (goal - y0) / (y1 - y0) if y1 != y0 else 0.5
    return x0 + min(max(t, low), high) * (x1 - x0)


def nearest(runs: list[dict], target: float) -> dict | None:
    return min(runs, key=lambda r: abs(log_density(r["sparsity"]) - log_density(target)), default=None)


def converged(run: dict | None, target: float) -> bool:
    return run is not None and abs((1 - run["sparsity"]) / (1 - target) - 1) <= TOLERANCE


def picked(method: str, model: str, target: float, out: Path = common.RESULTS) -> float:
    """The swept lambda of ``method`` for ``model`` at ``target``: the committed sweep's run nearest the target."""
    path = results_path(out, model)
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    pick = nearest([r for r in runs if r["method"] == method], target)
    if pick is None:
        raise ValueError(f"{method}: no swept lambda for {model} at {target:.0%} in {path}; run "
                         f"python bench/lambda_sweep.py --methods {method} --models {model} "
                         f"--sparsities {100 * target:g}")
    return pick["lam"]


def sweep(method: str, model: str, target: float, results: dict, path: Path, data, epochs: int, bar) -> None:
    mine = [r for r in results["runs"] if r["method"] == method]
    here = [r for r in mine if r["target"] == round(target, 4)]  # this search's runs (at most MAX_RUNS)
    while not converged(nearest(mine, target), target) and len(here) < MAX_RUNS:
        lam = next_lambda(mine, target) or FIRST_GUESS[method] * (3.0 if model == "cnn" else 1.0)
        run = accuracy_training.train_run(model, f"{method}={lam:.4g}", target, SEED, epochs, data, bar)
        record = dict(method=method, target=round(target, 4), lam=float(f"{lam:.4g}"), **{
            k: run[k] for k in ("sparsity", "accuracy", "seed", "epochs", "layer_sparsity", "seconds_per_epoch")})
        mine.append(record)
        here.append(record)
        results["runs"].append(record)
        tqdm.write(f"{method:>13} {model} {target:.0%}: lambda {lam:.4g} -> {run['sparsity']:.2%} zeros, "
                   f"accuracy {run['accuracy']:.2%}")
        common.note_load_end(results["machine"])
        common.write_json(path, results)


CONTROLLED = {"rda-fixed": "rda", "rda-l1-fixed": "rda-l1"}  # the same optimizer with target_sparsity=


def run_picks(method: str, model: str, target: float, seeds: list[int], results: dict, path: Path, data, epochs,
              bar) -> None:
    """The pick at more seeds (results["picks"], seed 0's being the sweep's run): the fixed lambda's accuracy as
    a table row would have it, to hold against the controlled run's."""
    pick = nearest([r for r in results["runs"] if r["method"] == method], target)
    results.setdefault("picks", [])
    done = {(p["method"], p["target"], p["seed"]) for p in results["picks"]}
    for seed in seeds:
        if seed == SEED or (method, round(target, 4), seed) in done:
            continue
        run = accuracy_training.train_run(model, f"{method}={pick['lam']:.4g}", target, seed, epochs, data, bar)
        results["picks"].append(dict(method=method, target=round(target, 4), lam=pick["lam"], seed=seed,
                                     sparsity=run["sparsity"], accuracy=run["accuracy"]))
        tqdm.write(f"{method:>13} {model} {target:.0%}: pick {pick['lam']:.4g} seed {seed} -> "
                   f"{run['sparsity']:.2%} zeros, accuracy {run['accuracy']:.2%}")
        common.note_load_end(results["machine"])
        common.write_json(path, results)


def picks_table(model: str, results: dict, out: Path) -> list[str]:
    """Each pick at every seed run, beside the controlled optimizer's runs at those seeds (bench/results/
    accuracy-<model>.json): what steering lam to the target costs against the lam that lands there."""
    if not results.get("picks"):
        return []
    table = out / f"accuracy-{model}.json"
    controlled = json.loads(table.read_text())["runs"] if table.exists() else []
    lines = ["", "The picks at more seeds, against the same optimizer with target_sparsity= (its runs in "
             f"{table.name}, the same seeds):", "",
             "| method | target | lambda | accuracy (mean ± half spread) | sparsity | seeds | target_sparsity= | "
             "fixed minus controlled |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for method, target in sorted({(p["method"], p["target"]) for p in results["picks"]},
                                 key=lambda k: (METHODS.index(k[0]), k[1])):
        pick = nearest([r for r in results["runs"] if r["method"] == method], target)
        runs = [dict(seed=SEED, **{k: pick[k] for k in ("sparsity", "accuracy")})] + [
            p for p in results["picks"] if (p["method"], p["target"]) == (method, target)]
        acc = [100 * r["accuracy"] for r in runs]
        twin = {r["seed"]: 100 * r["accuracy"] for r in controlled
                if r["method"] == CONTROLLED.get(method) and round(r["target_sparsity"], 4) == target}
        paired = [a - twin[r["seed"]] for a, r in zip(acc, runs) if r["seed"] in twin]
        ctl = (f"{statistics.fmean(twin[r['seed']] for r in runs):.2f}" if len(paired) == len(runs) else "—")
        diff = f"{statistics.fmean(paired):+.2f}" if len(paired) == len(runs) else "—"
        lines.append(f"| {method} | {target:.0%} | {pick['lam']:.4g} | {statistics.fmean(acc):.2f} ± "
                     f"{(max(acc) - min(acc)) / 2:.2f} | {statistics.fmean(r['sparsity'] for r in runs):.2%} | "
                     f"{len(runs)} | {ctl} | {diff} |")
    return lines


def markdown(model: str, results: dict, out: Path = common.RESULTS) -> str:
    lines = common.report_header(f"Fixed-lambda sweeps, {fashion_mnist.MODELS[model][1]}, Fashion-MNIST",
                               results["machine"])
    lines += [f"- command: `{results['config']['command']}`; seed {SEED}, {results['config']['epochs']} epochs, "
            f"1 thread; a search ends within {TOLERANCE:.0%} of the target's density or after {MAX_RUNS} runs; "
            "**bold**: the pick (nearest the target), which bench/accuracy.py's pat-lasso rows and "
            "bench/l1_ablation.py's fixed variants use", "",
            "| method | target | lambda | sparsity | accuracy |", "|---|--:|--:|--:|--:|"]
    keys = sorted({(r["method"], r["target"]) for r in results["runs"]}, key=lambda k: (METHODS.index(k[0]), k[1]))
    for method, target in keys:
        runs = sorted((r for r in results["runs"] if (r["method"], r["target"]) == (method, target)),
                      key=lambda r: r["lam"])
        pick = nearest([r for r in results["runs"] if r["method"] == method], target)
        if pick not in runs:  # another search's run came nearest: listed here too
            runs = sorted(runs + [pick], key=lambda r: r["lam"])
        for r in runs:
            b = "**" if r is pick else ""
            lines.append(f"| {method} | {target:.0%} | {b}{r['lam']:.4g}{b} | {b}{r['sparsity']:.2%}{b} | "
                         f"{b}{100 * r['accuracy']:.2f}{b} |")
    return "\n".join(lines + picks_table(model, results, out)) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--models", default="lenet,cnn")
    ap.add_argument("--sparsities", default="90,95,98,99")
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--pick-seeds", help="after the sweeps, run each pick at these seeds too (e.g. 1,2)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    methods, models = common.csv(args.methods), common.csv(args.models)
    if not set(methods) <= set(METHODS) or not set(models) <= set(fashion_mnist.MODELS):
        ap.error(f"--methods from {', '.join(METHODS)}; --models from {', '.join(fashion_mnist.MODELS)}")
    if args.report_only:
        for model in models:
            path = results_path(args.out, model)
            path.with_suffix(".md").write_text(markdown(model, json.loads(path.read_text()), args.out))
        return 0
    torch.set_num_threads(1)
    data = fashion_mnist.load(args.data)
    command = common.command_line("lambda_sweep.py", argv)
    for model in models:
        path = results_path(args.out, model)
        epochs = fashion_mnist.MODELS[model][2]
        results = json.loads(path.read_text()) if path.exists() else dict(config=dict(epochs=epochs), runs=[])
        results["config"]["command"] = command
        results["machine"] = common.machine_info(torch.device("cpu"))
        with tqdm(total=0, leave=False, dynamic_ncols=True, mininterval=0.5) as bar:
            for method in methods:
                for percent in common.csv(args.sparsities, float):
                    sweep(method, model, percent / 100, results, path, data, epochs, bar)
                    if args.pick_seeds:
                        run_picks(method, model, percent / 100, common.csv(args.pick_seeds, int), results, path,
                                  data, epochs, bar)
        path.with_suffix(".md").write_text(markdown(model, results, args.out))
        print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
