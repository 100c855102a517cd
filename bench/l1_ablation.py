#!/usr/bin/env python
"""Why plain-l1 RDA (``rda-l1``: ``reweight=False`` with the controller) trails torchao PAT's Lasso on
LeNet-300-100 at 95%, one change at a time from ``rda-l1`` towards PAT's setup, in the accuracy benchmark's own runs
(bench/accuracy_training.py's train_run: the same model, init, batches, 20 epochs, 1 thread). The same changes on
reweighted RDA say which of them the reweighting needs. Variants:

- ``fixed``: lam fixed (no controller) at the value bench/lambda_sweep.py found to land on the target;
- ``ramp50`` / ``ramp90``: the controller's cubic ramp reaching the target at 50% / 90% of training (75%);
- ``avg1``: averaging 1 from the first step (T accumulates from w_0: dual averaging, as PAT's latent copy) with
  the cosine lr, instead of CosineRDA's averaging 0 -> 1;
- ``wdT``: weight decay on T (PAT: on its latent copy) instead of on the thresholded w;
- ``mom``: momentum 0.9 per step throughout (PAT's SGD), instead of RDA's fixed momentum time, whose per-step
  momentum exp(-lr / 9.5) tends to 1 as the cosine lr goes to 0;
- ``heal``: for the last 10% of training the zeros are frozen and lam set to 0 (the survivors lose the l1
  shrinkage; PAT's "healing" phase), masking the weights after each step;
- ``M100`` / ``M2000`` (max_factor, 500), ``tauA0`` / ``tauA95`` (reweight_time: A = |w|, or 10x the momentum
  time), ``wd0`` / ``wd1e-3`` (weight decay, 5e-4): RDA's own knobs, for what else moves it at 95%;
- combinations joined by ``+``, e.g. ``avg1+wdT``.

    python bench/l1_ablation.py                                   # the default variants, seeds 0,1,2
    python bench/l1_ablation.py --variants rda-l1,rda-l1+avg1 --seeds 0

Results: bench/results/l1_ablation.{json,md}, written after every run (a rerun resumes).
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
import lambda_sweep
import fashion_mnist
from accuracy_training import RDA_KW, RDA_L1_KW, RDATraining
from sparse_rda import target
from sparse_rda.datasets import default_data_dir

MODEL, TARGET = "lenet", 0.95
# changes that are RDA keyword values: the reweighting's strength and time scale, the weight decay
KW_CHANGES = {"M100": dict(max_factor=100.0), "M2000": dict(max_factor=2000.0), "tauA0": dict(reweight_time=0.0),
              "tauA95": dict(reweight_time=95.0), "wd0": dict(weight_decay=0.0), "wd1e-3": dict(weight_decay=1e-3)}
CHANGES = ("fixed", "ramp50", "ramp90", "avg1", "wdT", "mom", "heal", *KW_CHANGES)
HEAL_FROM = 0.9  # "heal": the fraction of training after which the mask is frozen and lam is 0
DEFAULT_VARIANTS = ("rda-l1", "rda-l1+fixed", "rda-l1+ramp50", "rda-l1+ramp90", "rda-l1+avg1", "rda-l1+wdT",
                    "rda-l1+mom", "rda", "rda+fixed", "rda+avg1", "rda+wdT", "rda+mom", "pat-lasso")


class AblatedRDA(RDATraining):
    """RDATraining with the changes of one variant (see the module docstring)."""

    def __init__(self, model, total_steps: int, base: str, changes: set[str]):
        kw = dict(RDA_L1_KW if base == "rda-l1" else RDA_KW)
        for change in changes & set(KW_CHANGES):
            kw.update(KW_CHANGES[change])
        self.weight_decay_on_t = "wdT" in changes
        self.constant_momentum = "mom" in changes
        self.heal_at = math.ceil(HEAL_FROM * total_steps) if "heal" in changes else None
        self.masks = None
        if self.weight_decay_on_t:
            self.weight_decay, kw["weight_decay"] = kw["weight_decay"], 0.0
        if "avg1" in changes:  # CosineRDA from averaging 1 keeps it at 1; the lr alone follows the cosine
            kw["averaging"] = 1.0
        controlled = "fixed" not in changes
        if not controlled:
            kw["lam"] = lambda_sweep.picked(f"{base}-fixed", MODEL, TARGET)
        super().__init__(model, total_steps, TARGET if controlled else None, kw)
        self.model = model

    @torch.no_grad()
    def step(self, k: int) -> None:
        if self.weight_decay_on_t:
            for p in self.model.parameters():
                if p.grad is not None:
                    state = self.opt.state.get(p, {})
                    p.grad.add_(state["T"] if "T" in state else p, alpha=self.weight_decay)
        super().step(k)
        if self.heal_at is not None and k + 1 >= self.heal_at:
            if self.masks is None:  # from here on: this support, no penalty, no controller
                self.masks = {p: p != 0 for p in self.model.parameters() if p.dim() >= 2}
                for group in self.opt.param_groups:
                    group["lam"], group["target_sparsity"] = 0.0, None
            for p, mask in self.masks.items():
                p.mul_(mask)
        if self.constant_momentum:  # momentum exp(-lr / tau) = exp(-1 / 9.5) = 0.9 whatever the lr
            for group in self.opt.param_groups:
                group["momentum_time"] = RDA_KW["momentum_time"] * max(float(group["lr"]), 1e-12)
                group["reweight_time"] = RDA_KW["momentum_time"]  # the reweighting's average as before


def parse_variant(name: str) -> tuple[str, set[str]]:
    base, *changes = name.split("+")
    if base not in ("rda", "rda-l1", "pat-lasso") or any(c not in CHANGES for c in changes) or (
            base == "pat-lasso" and changes):
        raise ValueError(f"unknown variant {name!r}: rda or rda-l1 with +{'/+'.join(CHANGES)}, or pat-lasso")
    return base, set(changes)


def run_variant(name: str, seed: int, epochs: int, data, bar) -> dict:
    base, changes = parse_variant(name)
    make = accuracy_training.make_training
    saved_ramp = target.RAMP_END
    try:
        target.RAMP_END = 0.5 if "ramp50" in changes else 0.9 if "ramp90" in changes else saved_ramp
        if base != "pat-lasso":
            accuracy_training.make_training = lambda m, model, steps, t, model_name: AblatedRDA(
                model, steps, base, changes)
        run = accuracy_training.train_run(MODEL, base, TARGET, seed, epochs, data, bar)
    finally:
        accuracy_training.make_training, target.RAMP_END = make, saved_ramp
    return dict(run, variant=name)


def markdown(results: dict) -> str:
    out = common.report_header("Plain l1 vs reweighted RDA, one change at a time (LeNet-300-100, 95%)",
                               results["machine"])
    out += [f"- command: `{results['config']['command']}`; Fashion-MNIST, bench/accuracy.py's runs "
            f"({results['config']['epochs']} epochs, 1 thread; RDA lr 1, momentum_time 9.5, wd 5e-4, CosineRDA, "
            "target_sparsity 0.95 unless a change says otherwise; pat-lasso: torchao PAT ProxLasso over SGD lr 0.1 "
            "cosine, momentum 0.9, wd 5e-4, lambda from bench/lambda_sweep.py)", "",
            "| variant | accuracy (mean ± half spread) | vs its base (same seeds) | sparsity | seeds |",
            "|---|--:|--:|--:|--:|"]
    by: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by.setdefault(r["variant"], []).append(r)
    for name, runs in by.items():
        acc = [100 * r["accuracy"] for r in runs]
        parts = name.split("+")  # its base: the longest run prefix of its changes
        base_name = next(("+".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if "+".join(parts[:i]) in by),
                         None)
        base = {r["seed"]: 100 * r["accuracy"] for r in by.get(base_name, [])}
        paired = [a - base[r["seed"]] for a, r in zip(acc, runs) if r["seed"] in base]  # on the same seeds
        versus = f"{statistics.fmean(paired):+.2f} vs {base_name}" if base_name and len(paired) == len(runs) else "—"
        out.append(f"| {name} | {statistics.fmean(acc):.2f} ± {(max(acc) - min(acc)) / 2:.2f} | {versus} | "
                   f"{statistics.fmean(r['sparsity'] for r in runs):.2%} | {len(runs)} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", help=f"comma-separated (default: {','.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=accuracy_training.MODELS[MODEL][2])
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    path = args.out / "l1_ablation.json"
    if args.report_only:
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    names = common.csv(args.variants) if args.variants else list(DEFAULT_VARIANTS)
    for name in names:
        parse_variant(name)
    torch.set_num_threads(1)
    data = fashion_mnist.load(args.data)
    config = dict(epochs=args.epochs, command=common.command_line("l1_ablation.py", argv))
    results = json.loads(path.read_text()) if path.exists() else dict(config=config, runs=[])
    if results["config"]["epochs"] != args.epochs:
        sys.exit(f"{path} holds runs of {results['config']['epochs']} epochs; --out elsewhere")
    results["config"]["command"] = config["command"]
    results["machine"] = common.machine_info(torch.device("cpu"))
    done = {(r["variant"], r["seed"]) for r in results["runs"]}
    todo = [(n, s) for s in common.csv(args.seeds, int) for n in names if (n, s) not in done]
    with tqdm(total=0, leave=False, dynamic_ncols=True, mininterval=0.5) as bar:
        for name, seed in todo:
            run = run_variant(name, seed, args.epochs, data, bar)
            results["runs"].append(run)
            tqdm.write(f"{name:>22} seed {seed}: {run['accuracy']:.2%} at {run['sparsity']:.2%}")
            common.note_load_end(results["machine"])
            common.write_json(path, results)
    path.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
