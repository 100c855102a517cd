#!/usr/bin/env python
"""target_sparsity=, the rule before and the controller now, side by side: how well each holds the target under
lr schedules, on LeNet-300-100 and LeNet-5 / Fashion-MNIST.

    python bench/target_sparsity.py --threads 1                      # the table in bench/results (~45 min)
    python bench/target_sparsity.py --threads 1 --models lenet --schedules constant --targets 90 --epochs 5
    python bench/target_sparsity.py --report-only                    # the markdown again from the JSON

Rules (``--rules``, default both):

- ``before``: the rule up to d4ce2fb, replayed here: every ``total_steps // 200`` steps and after the last ramp
  step, ``lam`` (gRDA: ``c``) := the quantile of the scheduled sparsity of this step's ratios, held until the next.
- ``now``: the library's controller (sparse_rda/target.py): the snap onto the schedule at every control step, a
  held scale that moves a fraction of the way to the quantile, control steps closer together while the sparsity
  drifts and at once after an lr jump.

Runs (``--runs``): RDA (bench/fashion_mnist.py's RDA_KW: lr=1, lam=3.5e-6 to start, momentum_time=9.5,
weight_decay=5e-4) under ``constant`` (RDA's default: no schedule, averaging 0), ``CosineRDA``, ``StepLR`` (lr x0.1
at 1/3 and 2/3), ``OneCycleLR`` and ``WarmRestarts`` (cosine restarts at 1/4, 1/2, 3/4); gRDA (GRDA_KW: lr=0.1,
c=0.005 to start, mu=0.55) at a constant lr. Batch 128; at a seed every run starts from the same weights and sees
the same batches (bench/accuracy.py's order).

Per run: the final sparsity (over the >= 2-D weights, as bench/accuracy.py counts it; the tensors the optimizer
penalizes) and test accuracy; after the ramp (the last 25% of training): the worst deviation from the target at a
control step and after any step, the RMS and mean deviation over all steps; control steps taken, and the time in
the controller. Outputs bench/results/target_sparsity-cpu.{json,md}; runs already in the JSON with the same config
are kept (an interrupted table resumes), ``--restart`` discards them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common
import fashion_mnist
import sparse_rda
from fashion_mnist import BATCH_SIZE, GRDA_KW, MODELS, RDA_KW
from sparse_rda import target
from sparse_rda.datasets import default_data_dir
from target_sparsity_report import RULES, markdown
LR = torch.optim.lr_scheduler
SCHEDULES = {
    "constant": lambda opt, total: None,
    "CosineRDA": lambda opt, total: sparse_rda.schedules.CosineRDA(opt, total_steps=total),
    "StepLR": lambda opt, total: LR.StepLR(opt, total // 3, gamma=0.1),
    "OneCycleLR": lambda opt, total: LR.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=total,
                                                   cycle_momentum=False),
    "WarmRestarts": lambda opt, total: LR.CosineAnnealingWarmRestarts(opt, total // 4),
}
RUNS = (*(("rda", s) for s in SCHEDULES), ("grda", "constant"))  # (optimizer, schedule)


def before_rule(opt, group: dict) -> None:
    """The controller as it was: on every control step of a fixed grid, the quantile of the schedule, held."""
    wanted = group.get("target_sparsity")
    penalized = [p for p in group["params"] if opt._is_penalized(group, p) and opt.state[p]]
    if wanted is None or not penalized:
        return
    step, total = max(int(opt.state[p]["step"]) for p in penalized), group["total_steps"]
    if not (step % target.control_interval(total) == 0 or step == math.ceil(target.RAMP_END * total)):
        return
    opt._before_control = True
    ratios, sizes = zip(*(opt._zero_ratios(group, p) for p in penalized))
    all_sizes = None if all(s is None for s in sizes) else torch.cat(
        [torch.ones_like(r).flatten() if s is None else s.flatten() for r, s in zip(ratios, sizes)])
    scale = target.scale_for_sparsity(torch.cat([r.flatten() for r in ratios]), all_sizes,
                                      target.scheduled_sparsity(step, total, wanted))
    opt._set_threshold_scale(group, penalized, scale)


def instrument(opt, rule: str) -> dict:
    """Times the controller (replacing it by the rule before for ``before``) and flags its control steps."""
    record = {"seconds": 0.0, "control": False}
    steer = opt._steer_sparsity if rule == "now" else (lambda group, stepped: before_rule(opt, group))
    snap = opt._apply_threshold

    def flagged(group, penalized):
        record["control"] = True
        snap(group, penalized)

    def timed(group, stepped):
        start = time.perf_counter()
        opt._before_control = False
        steer(group, stepped)
        record["control"] |= opt._before_control
        record["seconds"] += time.perf_counter() - start

    opt._apply_threshold, opt._steer_sparsity = flagged, timed
    return record


def make_optimizer(method: str, model, goal: float, total: int):
    if method == "rda":
        return sparse_rda.RDA(sparse_rda.param_groups(model), **RDA_KW, target_sparsity=goal,
                              total_steps=total)
    return sparse_rda.GRDA(model.parameters(), **GRDA_KW, target_sparsity=goal, total_steps=total)


def train_run(model_name: str, method: str, schedule: str, rule: str, goal: float, seed: int, epochs: int,
              data) -> dict:
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = MODELS[model_name][0]()
    total = epochs * math.ceil(len(train_x) / BATCH_SIZE)
    opt = make_optimizer(method, model, goal, total)
    scheduler = SCHEDULES[schedule](opt, total)
    record = instrument(opt, rule)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    n = sum(w.numel() for w in weights)
    ramp_end = math.ceil(target.RAMP_END * total)
    after, control, k, start = [], [], 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in fashion_mnist.epoch_batches(len(train_x), epoch, seed):
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            record["control"] = False
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            k += 1
            if k >= ramp_end:
                zeros = torch.stack([(w == 0).sum() for w in weights]).sum()  # read after training
                after.append(zeros)
                if record["control"]:
                    control.append(zeros)
    seconds = time.perf_counter() - start
    deviation = [int(z) / n - goal for z in after]
    return dict(
        model=model_name, method=method, schedule=schedule, rule=rule, target=goal, seed=seed, epochs=epochs,
        steps=total, final_sparsity=int(after[-1]) / n, accuracy=fashion_mnist.test_accuracy(model, test_x, test_y),
        control_max_dev=max(abs(int(z) / n - goal) for z in control), step_max_dev=max(map(abs, deviation)),
        step_rms_dev=math.sqrt(sum(d * d for d in deviation) / len(deviation)),
        step_mean_dev=sum(deviation) / len(deviation), control_steps_after_ramp=len(control),
        train_seconds=round(seconds, 1), controller_seconds=round(record["seconds"], 2),
        threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def run_key(run: dict) -> tuple:
    return run["model"], run["method"], run["schedule"], run["rule"], round(run["target"], 6), run["seed"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.parser(__doc__)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from %(default)s")
    ap.add_argument("--runs", default=",".join(f"{m}:{s}" for m, s in RUNS),
                    help="optimizer:schedule pairs, comma-separated (default %(default)s)")
    ap.add_argument("--schedules", help="keep only the runs with these schedules (comma-separated)")
    ap.add_argument("--targets", default="90,95", help="target sparsities in percent (default %(default)s)")
    ap.add_argument("--seeds", default="0", help="comma-separated (default %(default)s)")
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated, from %(default)s")
    ap.add_argument("--epochs", type=int, help="epochs per run for every model (default: lenet 20, cnn 10)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="Fashion-MNIST directory")
    ap.add_argument("--out", type=Path, default=common.RESULTS, help="results folder (default: bench/results)")
    ap.add_argument("--restart", action="store_true", help="discard the runs already in the JSON")
    ap.add_argument("--report-only", action="store_true", help="only write the markdown from the JSON")
    args = ap.parse_args(argv)
    args.models = common.csv(args.models)
    args.runs = [tuple(r.split(":")) for r in common.csv(args.runs)]
    if args.schedules:
        keep = {s.strip() for s in args.schedules.split(",")}
        args.runs = [r for r in args.runs if r[1] in keep]
    args.targets = [t / 100 for t in common.csv(args.targets, float)]
    args.seeds = common.csv(args.seeds, int)
    args.rules = common.csv(args.rules)
    for name, allowed, given in (("--models", MODELS, args.models), ("--rules", RULES, args.rules),
                                 ("--runs", set(RUNS), args.runs)):
        for value in given:
            if value not in allowed:
                ap.error(f"{name}: unknown {value!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    json_path, md_path = args.out / "target_sparsity-cpu.json", args.out / "target_sparsity-cpu.md"
    if args.report_only:
        md_path.write_text(markdown(json.loads(json_path.read_text())))
        print(f"wrote {md_path}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    data = fashion_mnist.load(args.data)
    config = dict(epochs={k: args.epochs or v[2] for k, v in MODELS.items()}, train_examples=len(data[0]),
                  test_examples=len(data[2]), threads=torch.get_num_threads(), rda=RDA_KW,
                  grda=GRDA_KW, batch_size=BATCH_SIZE)
    results = json.loads(json_path.read_text()) if json_path.exists() and not args.restart else {}
    saved = {k: v for k, v in results.get("config", {}).items() if k != "command"}
    if saved != json.loads(json.dumps(config)):  # runs of another config do not compare: start over
        results = {}
    command = common.command_line("target_sparsity.py", argv)
    results.setdefault("runs", [])
    results["config"] = {**config, "command": command}
    results["machine"] = common.machine_info(torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in results["runs"]}
    for seed in args.seeds:
        for model in args.models:
            for method, schedule in args.runs:
                for goal in args.targets:
                    for rule in args.rules:
                        if (model, method, schedule, rule, round(goal, 6), seed) in done:
                            continue
                        run = train_run(model, method, schedule, rule, goal, seed, config["epochs"][model], data)
                        results["runs"].append(run)
                        print(f"{model} {method} {schedule:>12} {goal:.0%} {rule:>6} seed {seed}: final "
                              f"{run['final_sparsity']:.2%}, accuracy {run['accuracy']:.2%}, after the ramp: "
                              f"control steps within {100 * run['control_max_dev']:.2f}, steps within "
                              f"{100 * run['step_max_dev']:.2f} (rms {100 * run['step_rms_dev']:.2f}) points; "
                              f"{run['train_seconds']:.0f} s", flush=True)
                        common.note_load_end(results["machine"])
                        common.write_json(json_path, results)
                        md_path.write_text(markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
