#!/usr/bin/env python
"""What closes RDA's gap to dense on LeNet-5 at 95% (bench/results/accuracy-cnn.md: -0.96 point at 10 epochs)?
One change at a time against the accuracy benchmark's own runs (bench/accuracy_training.py's train_run: the same
model, init, batches and optimizers), 2 seeds each:

- budget: dense and RDA at 10, 20 and 30 epochs (the gap at an equal budget);
- the controller's ramp: the target reached at 50% or 90% of training instead of 75% (``target.RAMP_END``);
- the reweighting's strength: ``max_factor`` 100 and 2000 instead of 500;
- weight decay 0 and 1e-3 instead of 5e-4;
- the step size: lr 0.5 and 2 instead of 1 (SGD lr 0.05 / 0.2 with momentum 0.9, in RDA's units);
- the averaging: 1 from the first step (dual averaging throughout, the lr alone on the cosine) instead of
  CosineRDA's 0 -> 1 (on LeNet-300-100 it cost RDA 0.25 and gave plain l1 2.2 points: bench/results/l1_ablation.md).

    python bench/lenet5_gap.py                 # every variant (~25 min on one core)
    python bench/lenet5_gap.py --variants rda-e10,dense-e10 --seeds 0

Results: bench/results/lenet5_gap.{json,md}, written after every run (a rerun resumes).
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

import accuracy
import accuracy_training
import common
from fashion_mnist import RDA_KW
from sparse_rda import target

TARGET = 0.95
# name: (method, epochs, changes: RDA keyword overrides and/or the ramp's end)
VARIANTS = {
    "dense-e10": ("dense", 10, {}), "rda-e10": ("rda", 10, {}),
    "dense-e20": ("dense", 20, {}), "rda-e20": ("rda", 20, {}),
    "dense-e30": ("dense", 30, {}), "rda-e30": ("rda", 30, {}),
    "rda-e10-ramp50": ("rda", 10, {"ramp_end": 0.5}), "rda-e10-ramp90": ("rda", 10, {"ramp_end": 0.9}),
    "rda-e10-max100": ("rda", 10, {"max_factor": 100.0}), "rda-e10-max2000": ("rda", 10, {"max_factor": 2000.0}),
    "rda-e10-wd0": ("rda", 10, {"weight_decay": 0.0}),
    "rda-e10-lr0.5": ("rda", 10, {"lr": 0.5}), "rda-e10-lr2": ("rda", 10, {"lr": 2.0}),
    "rda-e10-wd1e-3": ("rda", 10, {"weight_decay": 1e-3}),
    "rda-e10-avg1": ("rda", 10, {"averaging": 1.0}),
}


def run_variant(name: str, seed: int, data, bar) -> dict:
    method, epochs, changes = VARIANTS[name]
    changes = dict(changes)
    ramp_end = changes.pop("ramp_end", target.RAMP_END)
    kw = dict(RDA_KW, **changes)
    make = accuracy_training.make_training
    saved_ramp = target.RAMP_END
    try:
        target.RAMP_END = ramp_end
        accuracy_training.make_training = lambda m, model, steps, t, name: (
            accuracy_training.RDATraining(model, steps, t, kw) if m == "rda" else make(m, model, steps, t, name))
        run = accuracy_training.train_run("cnn", method, 0.0 if method == "dense" else TARGET, seed, epochs, data,
                                          bar)
    finally:
        accuracy_training.make_training, target.RAMP_END = make, saved_ramp
    return dict(run, variant=name, changes=VARIANTS[name][2])


def markdown(results: dict) -> str:
    out = common.report_header("LeNet-5 at 95%: what closes RDA's gap to dense", results["machine"])
    out += [f"- command: `{results['config']['command']}`; Fashion-MNIST, bench/accuracy.py's runs (SGD lr 0.1 "
            "cosine for dense; RDA lr 1, CosineRDA, target_sparsity 0.95), 1 thread", "",
            "| variant | epochs | change | accuracy (mean ± half spread) | vs dense at the same epochs | sparsity | "
            "seeds |", "|---|--:|---|--:|--:|--:|--:|"]
    by = {}
    for r in results["runs"]:
        by.setdefault(r["variant"], []).append(r)
    dense = {VARIANTS[v][1]: statistics.fmean(100 * r["accuracy"] for r in runs)
             for v, runs in by.items() if VARIANTS[v][0] == "dense"}
    for name in [v for v in VARIANTS if v in by]:
        runs, (_, epochs, changes) = by[name], VARIANTS[name]
        acc = [100 * r["accuracy"] for r in runs]
        gap = f"{statistics.fmean(acc) - dense[epochs]:+.2f}" if epochs in dense and name[:5] != "dense" else "—"
        out.append(f"| {name} | {epochs} | {', '.join(f'{k}={v}' for k, v in changes.items()) or '—'} | "
                   f"{statistics.fmean(acc):.2f} ± {(max(acc) - min(acc)) / 2:.2f} | {gap} | "
                   f"{statistics.fmean(r['sparsity'] for r in runs):.1%} | {len(runs)} |")
    return "\n".join(out + layer_table(by)) + "\n"


def layer_table(by: dict) -> list[str]:
    """Where each RDA budget puts its zeros: the controller steers one lam for the whole net, and the reweighting
    decides the layers' shares (a uniform 95% per layer, as GMP's, is the alternative)."""
    names = [v for v in ("rda-e10", "rda-e20", "rda-e30") if v in by]
    if not names:
        return []
    torch.manual_seed(0)
    layers = {name: (type(m).__name__, tuple(m.weight.shape)) for name, m in accuracy_training.MODELS["cnn"][0]()
              .named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2}
    out = ["", "Sparsity per weight tensor (mean over seeds):", "",
           "| tensor | shape | weights | " + " | ".join(names) + " |", "|---|---|--:|" + "--:|" * len(names)]
    for layer, (kind, shape) in layers.items():
        cells = [f"{statistics.fmean(r['layer_sparsity'][layer] for r in by[v]):.1%}" for v in names]
        out.append(f"| {layer} ({kind}) | {'x'.join(map(str, shape))} | {math.prod(shape)} | " + " | ".join(cells)
                   + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", help=f"comma-separated from {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--data", type=Path, default=accuracy.default_data_dir())
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    path = args.out / "lenet5_gap.json"
    if args.report_only:
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    names = common.csv(args.variants) if args.variants else list(VARIANTS)
    if any(n not in VARIANTS for n in names):
        sys.exit(f"--variants: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    data = accuracy.fashion_mnist.load(args.data)
    config = dict(hyper=accuracy_training.hyper_parameters(), target=TARGET, threads=1,
                  command=common.command_line("lenet5_gap.py", argv))
    config = json.loads(json.dumps(config))
    args.out.mkdir(parents=True, exist_ok=True)
    results = accuracy.load_results(path, config, restart=False)
    results["machine"] = common.machine_info(torch.device("cpu"))
    done = {(r["variant"], r["seed"]) for r in results["runs"]}
    with tqdm(total=0, leave=False, dynamic_ncols=True, mininterval=1.0) as bar:
        for seed in common.csv(args.seeds, int):
            for name in names:
                if (name, seed) in done:
                    continue
                run = run_variant(name, seed, data, bar)
                results["runs"].append(run)
                tqdm.write(f"{name:>16} seed {seed}: {100 * run['accuracy']:.2f}%, sparsity {run['sparsity']:.1%}")
                common.write_json(path, results)
    path.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
