#!/usr/bin/env python
"""Accuracy benchmark, third model: the char-level transformer of examples/char_transformer.py on a real corpus, its
MLP weights sparse, validation loss against dense: RDA (element at 90/95%, 64x64 blocks at 90/95%, 2:4) against
GMP, RigL, and the 2:4 baselines (SR-STE, gradual N:M magnitude).

    python bench/accuracy_transformer.py              # every run, seeds 0 and 1 (~25 min per seed, 1 thread)
    python bench/accuracy_transformer.py --seeds 0 --runs dense-adamw,rda-90,gmp-90
    python bench/accuracy_transformer.py --quick      # smoke run: 1 layer, 20 steps, the first 200 KB
    python bench/accuracy_transformer.py --report-only

Corpus: the King James Bible, as Debian's bible-kjv / bible-kjv-text packages ship it (``apt-get install bible-kjv``;
dumped with ``bible Gen1:1-Rev22:21``: 4.3 MB, 29x examples/data/tiny_text.txt), or ``--text FILE``; the first
90% trains, the last 10% validates (Revelation and most of the epistles: text the model never saw).

Model (examples/char_transformer.py's ``cpu`` config): 4 layers, d=128, 4 heads, context 128, batch 16, 500 steps,
GPT-2 init, gradient-norm clip 1. Sparse: the 8 MLP weights (fc1 128 -> 512, fc2 512 -> 128: 524,288 of the
model's ~800K weights); everything else stays dense. Runs (at a seed: the same initial weights, the same batches):

- ``dense-adamw``: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1) on everything, cosine lr: the usual dense run.
- ``dense-hybrid``: the RDA runs' optimizers with lam = 0: RDA (lr 3, momentum_time 9.5, CosineRDA) on the MLP
  weights, AdamW (weight decay 0) on the rest: what the RDA rows differ from by the penalty alone.
- ``rda-90`` / ``rda-95``: that hybrid with ``target_sparsity`` on the MLP weights (element granularity);
  ``rda-block-90`` / ``-95``: granularity ("block", 64, 64); ``rda@2:4``: granularity ("nm", 2, 4) at 50%.
- ``gmp-90`` / ``-95``, ``rigl-90`` / ``-95``: ``sparse_rda.pruning`` on ``dense-adamw``'s optimizer, the MLP
  weights prunable (RigL: ERK densities over them, drop/grow every 25 steps); ``sr-ste@2:4`` and ``gmp@2:4``
  likewise with ``pattern="2:4"``.
- ``pat-min-90`` / ``-95``, ``pat-global-90`` / ``-95``: torchao's PAT (bench/accuracy_pat.py; optional, left
  out saying so without torchao) over ``dense-adamw``'s optimizer, its MinSparsity projection per MLP weight /
  over all of them together from step 0. PAT's Lasso is not run here: its lambda would need a sweep per target
  (bench/lambda_sweep.py, at ~2.5 min a run), and on both LeNets the projections land on the target exactly.

Loss: mean cross-entropy over 20 fixed random windows of each split (examples/char_transformer.py's evaluate).
Results: bench/results/accuracy-transformer[-quick].{json,md}, written after every run; a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import accuracy_pat
import common
from accuracy import available_methods, load_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import char_transformer as ct  # noqa: E402  (the example's model, data and evaluation)

import sparse_rda  # noqa: E402
from sparse_rda import pruning  # noqa: E402

CONFIG = dict(layers=4, d=128, heads=4, context=128, batch=16, steps=500, eval_batches=20)
QUICK = dict(layers=1, d=64, heads=2, context=32, batch=8, steps=20, eval_batches=2, text_bytes=200_000)
RDA_KW = dict(lr=3.0, momentum_time=9.5, weight_decay=0.0, lam=3e-5)
ADAMW_KW = dict(lr=3e-3, betas=(0.9, 0.95))
CLIP = 1.0
RIGL_KW = dict(update_every=25)
# run name -> (method, target sparsity of the MLP weights)
RUNS = {
    "dense-adamw": ("dense-adamw", 0.0), "dense-hybrid": ("dense-hybrid", 0.0),
    "rda-90": ("rda", 0.9), "rda-95": ("rda", 0.95), "rda-block-90": ("rda-block", 0.9),
    "rda-block-95": ("rda-block", 0.95), "rda@2:4": ("rda@2:4", 0.5),
    "gmp-90": ("gmp", 0.9), "gmp-95": ("gmp", 0.95), "rigl-90": ("rigl", 0.9), "rigl-95": ("rigl", 0.95),
    "sr-ste@2:4": ("sr-ste@2:4", 0.5), "gmp@2:4": ("gmp@2:4", 0.5),
    "pat-min-90": ("pat-min", 0.9), "pat-min-95": ("pat-min", 0.95), "pat-global-90": ("pat-global", 0.9),
    "pat-global-95": ("pat-global", 0.95),
}
CORPUS = "King James Bible (Debian bible-kjv / bible-kjv-text, `bible Gen1:1-Rev22:21`)"


def load_corpus(path: Path | None) -> tuple[str, str]:
    """(text, its description): --text, else the KJV from the ``bible`` program, cached beside the results."""
    if path is not None:
        return path.read_text(encoding="utf-8"), str(path.name)
    if shutil.which("bible") is None:
        sys.exit("the corpus is the King James Bible from Debian: apt-get install bible-kjv (or pass --text FILE)")
    text = subprocess.run(["bible", "-l200", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    return text, CORPUS


class Run:
    """One run's optimizers (and pruner): ``step()`` after the backward pass."""

    def __init__(self, method: str, model: ct.CharTransformer, steps: int, target: float):
        mlp, others = ct.split_params(model)
        self.pruner, self.opts = None, []
        base, _, pattern = method.partition("@")
        if base in ("dense-hybrid", "rda", "rda-block"):
            granularity = ("nm", 2, 4) if pattern else ("block", 64, 64) if base == "rda-block" else "element"
            group = dict(params=mlp, granularity=granularity, **RDA_KW)
            if base == "dense-hybrid":
                group["lam"] = 0.0
            else:
                group.update(target_sparsity=target, total_steps=steps)
            rda = sparse_rda.RDA([group])
            self.opts.append((rda, sparse_rda.schedules.CosineRDA(rda, total_steps=steps)))
            adamw = torch.optim.AdamW(others, weight_decay=0.0, **ADAMW_KW)
        elif base.startswith("pat-"):  # PAT's projection over dense-adamw's optimizer, on the MLP weights
            prox, _ = accuracy_pat.prox_options(base, target, None)
            adamw = torch.optim.AdamW([dict(params=mlp, **prox), dict(params=others)], weight_decay=0.1, **ADAMW_KW)
        else:
            adamw = torch.optim.AdamW(model.parameters(), weight_decay=0.1, **ADAMW_KW)
            if base != "dense-adamw":
                names = [f"{name}.weight" for name, _ in ct.mlp_weights(model)]
                extra = dict(RIGL_KW) if base == "rigl" else {}
                if pattern:
                    extra["pattern"] = pattern
                self.pruner = pruning.make(base, model, target, steps, prunable=names, **extra)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=steps)
        # PAT steps through its PruneOptimizer, whose param groups are adamw's (the schedule moves both)
        self.opts.append((accuracy_pat.prune_optimizer(adamw) if base.startswith("pat-") else adamw, schedule))
        self.model = model

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        if self.pruner is not None:
            self.pruner.before_step(self.opts[-1][0])
        for opt, schedule in self.opts:
            opt.step()
            schedule.step()
        if self.pruner is not None:
            self.pruner.after_step(self.opts[-1][0])


def mlp_stats(model) -> dict:
    """Zeros over the MLP weights, and the fraction of their 64 x 64 tiles that are all zero."""
    zeros = numel = dead = tiles = 0
    for _, w in ct.mlp_weights(model):
        zeros, numel = zeros + int((w == 0).sum()), numel + w.numel()
        live = sparse_rda.reference.tile_sums((w.detach() != 0).float(), (64, 64)) > 0
        dead, tiles = dead + int((~live).sum()), tiles + live.numel()
    return dict(mlp_sparsity=zeros / numel, mlp_dead_tiles=dead / tiles)


def train_run(name: str, seed: int, data: ct.CharData, cfg: dict) -> dict:
    model, seconds = train_model(name, seed, data, cfg)
    ev = ct.evaluate(model, data, dict(cfg), torch.device("cpu"), cfg["eval_batches"], seed)
    return dict(method=name, target_sparsity=RUNS[name][1], seed=seed, train_loss=ev["train"], val_loss=ev["val"],
                train_seconds=round(seconds, 1), threads=torch.get_num_threads(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **mlp_stats(model))


def train_model(name: str, seed: int, data: ct.CharData, cfg: dict) -> tuple[ct.CharTransformer, float]:
    """One run's trained model and its training seconds."""
    method, target = RUNS[name]
    torch.manual_seed(seed)
    model = ct.CharTransformer(data.vocab, cfg["layers"], cfg["d"], cfg["heads"], cfg["context"])
    run = Run(method, model, cfg["steps"], target)
    gen = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for _ in range(cfg["steps"]):
        x, y = data.batch("train", cfg["batch"], cfg["context"], gen, "cpu")
        loss = F.cross_entropy(model(x).view(-1, data.vocab), y.view(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
        run.step()
    seconds = time.perf_counter() - start
    if run.pruner is not None:
        run.pruner.finalize(run.opts[-1][0])
    return model, seconds


def markdown(results: dict) -> str:
    cfg = results["config"]
    out = common.report_header("Char transformer: validation loss vs sparsity of the MLP weights", results["machine"])
    out += [f"- command: `{cfg['command']}`",
            f"- corpus: {cfg['corpus']}, {cfg['chars']:,} characters, vocab {cfg['vocab']}, 90/10 split; model "
            f"{cfg['layers']} layers, d={cfg['d']}, {cfg['heads']} heads, context {cfg['context']}, batch "
            f"{cfg['batch']}, {cfg['steps']} steps; loss over {cfg['eval_batches']} fixed windows per split",
            f"- hybrid / RDA: RDA {cfg['rda']} with CosineRDA on the MLP weights, AdamW {cfg['adamw']} on the rest; "
            "dense-adamw and the pruning baselines: AdamW (weight decay 0.1) on everything, cosine lr; gradient "
            f"clip {CLIP}", "",
            "Cells: mean over seeds (± half the spread). Δ: validation loss minus dense-adamw's (and minus "
            "dense-hybrid's, the RDA rows' own optimizer without the penalty). Sparsity: zeros over the MLP "
            "weights; dead tiles: all-zero 64 x 64 tiles of them.", "",
            "| run | val loss | Δ vs dense-adamw | Δ vs dense-hybrid | train loss | MLP sparsity | dead 64x64 tiles | "
            "seeds | s/run |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    by_run = {}
    for r in results["runs"]:
        by_run.setdefault(r["method"], []).append(r)

    def mean(runs, key):
        return statistics.fmean(r[key] for r in runs)

    ref = {k: mean(by_run[k], "val_loss") for k in ("dense-adamw", "dense-hybrid") if k in by_run}
    for name in [n for n in RUNS if n in by_run]:
        runs = by_run[name]
        val = [r["val_loss"] for r in runs]
        deltas = [f"{statistics.fmean(val) - ref[k]:+.3f}" if k in ref else "—" for k in ("dense-adamw", "dense-hybrid")]
        out.append(f"| {name} | {statistics.fmean(val):.3f} ± {(max(val) - min(val)) / 2:.3f} | {deltas[0]} | "
                   f"{deltas[1]} | {mean(runs, 'train_loss'):.3f} | {mean(runs, 'mlp_sparsity'):.1%} | "
                   f"{mean(runs, 'mlp_dead_tiles'):.1%} | {len(runs)} | {mean(runs, 'train_seconds'):.0f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--runs", help=f"comma-separated, from {', '.join(RUNS)} (default: all)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated (default %(default)s; --quick: 0)")
    ap.add_argument("--text", type=Path, help="another corpus (default: the KJV, see above)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a tiny model, 20 steps, 200 KB of the corpus")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steady on a shared box)")
    ap.add_argument("--out", type=Path, default=common.RESULTS, help="results folder (default: bench/results)")
    ap.add_argument("--restart", action="store_true", help="discard the runs already in the JSON")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    path = args.out / f"accuracy-transformer{'-quick' if args.quick else ''}.json"
    if args.report_only:
        results = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(results))
        return 0
    names = common.csv(args.runs) if args.runs else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"--runs: unknown {', '.join(unknown)} (choose from {', '.join(RUNS)})")
    names = available_methods(names)  # without torchao, the PAT runs are left out, saying so
    seeds = [0] if args.quick and args.seeds == "0,1" else common.csv(args.seeds, int)
    torch.set_num_threads(args.threads)
    text, corpus = load_corpus(args.text)
    cfg = dict(CONFIG, **{k: v for k, v in QUICK.items() if k != "text_bytes"}) if args.quick else dict(CONFIG)
    if args.quick:
        text = text[: QUICK["text_bytes"]]
    data = ct.CharData(text)
    config = dict(cfg, corpus=corpus, chars=len(text), vocab=data.vocab, rda=RDA_KW, adamw=ADAMW_KW, rigl=RIGL_KW,
                  threads=args.threads, command=common.command_line("accuracy_transformer.py", argv))
    config = json.loads(json.dumps(config))  # as the JSON holds it (tuples become lists), for the resume check
    args.out.mkdir(parents=True, exist_ok=True)
    results = load_results(path, config, args.restart)
    results["machine"] = common.machine_info(torch.device("cpu"))
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    for seed in seeds:
        for name in names:
            if (name, seed) in done:
                continue
            run = train_run(name, seed, data, cfg)
            results["runs"].append(run)
            print(f"{name:>13} seed {seed}: val {run['val_loss']:.3f}, train {run['train_loss']:.3f}, MLP sparsity "
                  f"{run['mlp_sparsity']:.1%}, dead tiles {run['mlp_dead_tiles']:.1%}, {run['train_seconds']:.0f} s",
                  flush=True)
            common.note_load_end(results["machine"])
            common.write_json(path, results)
    path.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
