"""bench/target_sparsity.py's markdown, made from its JSON: the summary per rule and a row per run."""

from __future__ import annotations

from common import report_header
from fashion_mnist import BATCH_SIZE, GRDA_KW, RDA_KW

RULES = ("before", "now")  # the rules compared, in the table's order


def markdown(results: dict) -> str:
    m, cfg = results["machine"], results["config"]
    out = report_header("target_sparsity: the rule before vs the controller now", m) + [
        f"- command: `{cfg['command']}`",
        f"- Fashion-MNIST ({cfg['train_examples']} training / {cfg['test_examples']} test examples), batch "
        f"{BATCH_SIZE}; epochs: LeNet-300-100 {cfg['epochs']['lenet']}, LeNet-5 {cfg['epochs']['cnn']}; "
        f"RDA({', '.join(f'{k}={v}' for k, v in RDA_KW.items())}), "
        f"GRDA({', '.join(f'{k}={v}' for k, v in GRDA_KW.items())}); torch threads {cfg['threads']}",
        "- before: lam := the quantile of the schedule every total_steps // 200 steps, held; now: "
        "sparse_rda/target.py (snap at control steps, a held scale moving part of the way, denser control "
        "steps while the sparsity drifts and after an lr jump)",
        "",
        "Sparsity over the >= 2-D weights, deviations in points. After the ramp = the last 25% of training: "
        "`ctrl` the worst deviation from the target after a control step, `step` after any step, `rms` and "
        "`mean` over all those steps; `n ctrl` control steps after the ramp; `ctrl s` the time in the controller "
        "(train s includes it and this benchmark's per-step count).",
        "",
        *summary(results["runs"]),
        "",
        "| model | optimizer | schedule | target | rule | seed | final % | accuracy % | ctrl max | step max "
        "| step rms | mean | n ctrl | train s | ctrl s |",
        "|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = {r: i for i, r in enumerate(RULES)}
    for r in sorted(results["runs"], key=lambda r: (r["model"], r["method"], r["schedule"], r["target"],
                                                    r["seed"], order[r["rule"]])):
        out.append(
            f"| {r['model']} | {r['method']} | {r['schedule']} | {r['target']:.0%} | {r['rule']} | {r['seed']} "
            f"| {100 * r['final_sparsity']:.2f} | {100 * r['accuracy']:.2f} | {100 * r['control_max_dev']:.2f} "
            f"| {100 * r['step_max_dev']:.2f} | {100 * r['step_rms_dev']:.2f} | {100 * r['step_mean_dev']:+.2f} "
            f"| {r['control_steps_after_ramp']} | {r['train_seconds']:.0f} | {r['controller_seconds']:.2f} |")
    return "\n".join(out) + "\n"


def run_name(r: dict) -> str:
    return f"{r['model']} {r['method']} {r['schedule']} {r['target']:.0%}"


def summary(runs: list[dict]) -> list[str]:
    """Per rule: the worst final and control-step deviations over all runs; CosineRDA's mean accuracy."""
    out = ["Summary, in points:", ""]
    for rule in RULES:
        mine = [r for r in runs if r["rule"] == rule]
        if not mine:
            continue
        final = max(mine, key=lambda r: abs(r["final_sparsity"] - r["target"]))
        ctrl = max(mine, key=lambda r: r["control_max_dev"])
        step = max(mine, key=lambda r: r["step_max_dev"])
        out.append(f"- {rule}: final sparsity at most {100 * abs(final['final_sparsity'] - final['target']):.2f} "
                   f"off the target ({run_name(final)}); after the ramp, control steps at most "
                   f"{100 * ctrl['control_max_dev']:.2f} ({run_name(ctrl)}), single steps at most "
                   f"{100 * step['step_max_dev']:.2f} ({run_name(step)})")
    for model in sorted({r["model"] for r in runs}):
        for goal in sorted({r["target"] for r in runs}):
            cells = []
            for rule in RULES:
                acc = [r["accuracy"] for r in runs if (r["model"], r["target"], r["rule"], r["schedule"])
                       == (model, goal, rule, "CosineRDA")]
                if acc:
                    cells.append(f"{rule} {100 * sum(acc) / len(acc):.2f}% ({len(acc)} seeds)")
            if cells:
                out.append(f"- {model} CosineRDA at {goal:.0%}, mean test accuracy: {', '.join(cells)}")
    return out

