"""The accuracy benchmark's reports, made from its JSON alone: the markdown table, the design-goal verdict, and the
plot of accuracy vs sparsity (``python bench/accuracy.py --report-only`` rewrites them)."""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

import common

# docs/DESIGN.md, targets: "RDA at >= 95% sparsity within 0.5 point of dense, and ahead of every baseline at
# 95/98/99%". Baselines: every method but dense and RDA itself (rda-l1 and rda-prox are RDA's ablations).
GOAL_SPARSITY = 0.95
GOAL_POINTS = 0.5
GOAL_AHEAD_AT = (0.95, 0.98, 0.99)
GOAL_LEAD = 0.3  # issue 19: ahead by at least this many points, a margin beyond the seeds' noise
NOT_BASELINES = ("dense", "rda", "rda-l1", "rda-l1-da", "rda-prox")
ZOOM_POINTS = 5.0  # the plot's second panel: accuracies down to this many points below dense
SPARSITY_SLACK = 5e-4  # an achieved 94.96% prints as 95.0%: counts as reaching 95%


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("error: the accuracy plot needs matplotlib: pip install matplotlib (make accuracy installs it)")


# ----------------------------------------------------------------------------------------------------------
# Aggregation over seeds


class Cell:
    """The runs of one (method, target sparsity): mean and half the spread of accuracy, mean achieved sparsity."""

    def __init__(self, runs: list[dict]):
        accuracies = [100 * r["accuracy"] for r in runs]
        self.seeds = len(runs)
        self.accuracy = statistics.fmean(accuracies)
        self.spread = (max(accuracies) - min(accuracies)) / 2
        self.sparsity = statistics.fmean(r["sparsity"] for r in runs)
        self.seconds_per_epoch = statistics.fmean(r["seconds_per_epoch"] for r in runs)


def cells(results: dict) -> dict[tuple[str, float], Cell]:
    grouped = defaultdict(list)
    for run in results["runs"]:
        grouped[run["method"], round(run["target_sparsity"], 6)].append(run)
    return {key: Cell(runs) for key, runs in grouped.items()}


# the table's row order: dense, RDA and its ablations, gRDA, then the baselines (unknown names last, as trained)
ROW_ORDER = ("dense", "rda", "rda-l1", "rda-l1-da", "rda-prox", "grda", "magnitude", "gmp", "cyclical", "imp-weight",
             "imp-lr", "rigl", "set", "snip", "halo", "pat-lasso", "pat-min", "pat-global", "sr-ste")


def split_runs(results: dict) -> tuple[dict, list[dict]]:
    """(the results with the unstructured runs and dense only, the N:M runs "<method>@N:M")."""
    nm = [r for r in results["runs"] if "@" in r["method"]]
    return dict(results, runs=[r for r in results["runs"] if "@" not in r["method"]]), nm


def nm_table(results: dict, nm: list[dict]) -> str:
    """Rows: the N:M methods (dense for comparison), columns: the patterns, in the order first trained."""
    seeds = max((len({r["seed"] for r in results["runs"]}), 1))
    patterns = list(dict.fromkeys(r["method"].partition("@")[2] for r in nm))
    grouped = defaultdict(list)
    for run in nm:
        base, _, pattern = run["method"].partition("@")
        grouped[base, pattern].append(run)
    grid = {key: Cell(runs) for key, runs in grouped.items()}
    rank = {m: i for i, m in enumerate(ROW_ORDER)}
    methods = sorted({base for base, _ in grid}, key=lambda m: rank.get(m, len(ROW_ORDER)))
    best = {p: max(round(c.accuracy, 2) for (_, pp), c in grid.items() if pp == p) for p in patterns}
    lines = ["| method | " + " | ".join(f"{p} ({1 - int(p.split(':')[0]) / int(p.split(':')[1]):.0%})"
                                        for p in patterns) + " |", "|---|" + "--:|" * len(patterns)]
    dense = [r for r in results["runs"] if r["method"] == "dense"]
    if dense:
        lines.append("| dense | " + " | ".join([format_cell(Cell(dense), seeds, False, False)] * len(patterns)) + " |")
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(format_cell(grid.get((method, p)), seeds,
                                                              is_best(grid.get((method, p)), best[p]))
                                                  for p in patterns) + " |")
    return "\n".join(lines)


def method_order(results: dict) -> list[str]:
    """The methods present, in ROW_ORDER."""
    present = dict.fromkeys(r["method"] for r in results["runs"])
    rank = {m: i for i, m in enumerate(ROW_ORDER)}
    return sorted(present, key=lambda m: rank.get(m, len(ROW_ORDER)))


def targets(results: dict) -> list[float]:
    return sorted({round(r["target_sparsity"], 6) for r in results["runs"] if r["method"] != "dense"})


# ----------------------------------------------------------------------------------------------------------
# Design goal


def design_goal(results: dict) -> str:
    """One line: does RDA meet docs/DESIGN.md's accuracy target in these results, and where it falls short."""
    table = cells(results)
    dense = table.get(("dense", 0.0))
    rda = {t: c for (m, t), c in table.items() if m == "rda"}
    if dense is None or not rda:
        return "Design goal: not checked (needs the dense and rda rows)."

    close = []
    for t, c in sorted(rda.items()):
        if c.sparsity >= GOAL_SPARSITY - SPARSITY_SLACK:
            gap = c.accuracy - dense.accuracy
            close.append((gap >= -GOAL_POINTS, f"{c.sparsity:.1%}: {gap:+.2f}"))
    within = any(ok for ok, _ in close)
    within_at = ", ".join(note.split(":")[0] for ok, note in close if ok) or "no sparsity >= the goal's"

    ahead_notes, ahead, clear = [], True, True
    checked = [t for t in GOAL_AHEAD_AT if t in rda]
    for t in checked:
        rivals = {m: c for (m, tt), c in table.items() if tt == t and m not in NOT_BASELINES}
        if not rivals:
            ahead = False
            ahead_notes.append(f"{t:.0%}: no baselines")
            continue
        best_name, best = max(rivals.items(), key=lambda kv: kv[1].accuracy)
        lead = rda[t].accuracy - best.accuracy
        ahead &= lead > 0
        clear &= lead >= GOAL_LEAD
        # a fixed-lambda rival (pat-lasso) lands near the column, not on it: say where, as it counts all the same
        short = f" at {best.sparsity:.1%}" if best.sparsity < t - SPARSITY_SLACK else ""
        ahead_notes.append(f"{t:.0%}: {lead:+.2f} vs {best_name}{short}")
    missing = [f"{t:.0%}" for t in GOAL_AHEAD_AT if t not in rda]
    ahead &= not missing

    verdict = "MET" if within and ahead else "NOT MET"
    return (
        f"**Design goal** (docs/DESIGN.md: RDA at >= {GOAL_SPARSITY:.0%} sparsity within {GOAL_POINTS} point of "
        f"dense, and ahead of every baseline at {'/'.join(f'{t:.0%}' for t in GOAL_AHEAD_AT)}): **{verdict}**. "
        f"RDA minus dense, points, at achieved sparsity "
        f"{'; '.join(note for _, note in close) or f'(RDA never reached {GOAL_SPARSITY:.0%})'} "
        f"(within {GOAL_POINTS} at {within_at}). "
        f"RDA minus the best baseline: {'; '.join(ahead_notes) or 'no column'}"
        + (f" (no RDA runs at {', '.join(missing)})" if missing else "") + ". "
        f"Ahead by >= {GOAL_LEAD} point at each of them (issue 19's margin): "
        f"**{'MET' if clear and ahead and checked else 'NOT MET'}**."
    )


# ----------------------------------------------------------------------------------------------------------
# Markdown


def format_cell(c: Cell | None, seeds: int, bold: bool, show_sparsity: bool = True) -> str:
    if c is None:
        return "—"
    text = f"{c.accuracy:.2f} ± {c.spread:.2f}"
    text = f"**{text}**" if bold else text
    text += f" ({c.sparsity:.1%})" if show_sparsity else ""
    return text + (f" [{c.seeds} seed]" if c.seeds < seeds else "")


def is_best(c: Cell | None, best: float) -> bool:
    return c is not None and round(c.accuracy, 2) == best  # ties, as printed, are all bold


def table(results: dict) -> str:
    grid, columns = cells(results), targets(results)
    seeds = max((len({r["seed"] for r in results["runs"]}), 1))
    best = {}  # per column, the best accuracy of a sparse method (dense is the reference, not a contender)
    for t in columns:
        best[t] = max(round(c.accuracy, 2) for (_, tt), c in grid.items() if tt == t)
    lines = ["| method | " + " | ".join(f"{t:.0%}" for t in columns) + " | s/epoch |",
             "|---|" + "--:|" * len(columns) + "--:|"]
    for method in method_order(results):
        if method == "dense":
            c = grid[("dense", 0.0)]
            row = [format_cell(c, seeds, False, show_sparsity=False)] * len(columns)
            speed = c.seconds_per_epoch
        else:
            row = [format_cell(grid.get((method, t)), seeds, is_best(grid.get((method, t)), best[t]))
                   for t in columns]
            speeds = [c.seconds_per_epoch for (m, _), c in grid.items() if m == method]
            speed = statistics.fmean(speeds)
        lines.append(f"| {method} | " + " | ".join(row) + f" | {speed:.2f} |")
    return "\n".join(lines)


def merged_seeds(merged: dict) -> str:
    """' at seed(s) ...' for a part merged by seed (bench/accuracy_merge.py); older entries replaced all seeds."""
    seeds = merged.get("seeds")
    return f" at seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""


def markdown(results: dict) -> str:
    results, nm = split_runs(results)
    cfg, m = results["config"], results["machine"]
    hyper = cfg["hyper"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    out = common.report_header(f"Accuracy vs sparsity, {cfg['title']}, Fashion-MNIST", m) + [
        f"- command: `{cfg['command']}`",
        *[f"- then `{m['command']}` (run on its own and merged in; git {m['machine_git']}): its "
          f"{', '.join(m['methods'])} runs{merged_seeds(m)} replace any before"
          for m in results.get("merged_from", [])],
        f"- data: {cfg['train_examples']} training / {cfg['test_examples']} test examples; epochs: {cfg['epochs']}, "
        f"batch {hyper['batch_size']}, seeds {', '.join(map(str, seeds)) or '—'}; at a seed every method starts "
        f"from the same weights and sees the same batches ({hyper['data_order']})",
        f"- dense and every pruning method: SGD {fmt_kw(hyper['sgd'])}, {hyper['lr_schedule']}; "
        f"rda: RDA {fmt_kw(hyper['rda'])}, {hyper['rda_schedule']}; rda-l1: the same with reweight=False; "
        "rda-l1-da: reweight=False and averaging 1 throughout (plain l1 at its best, bench/results/l1_ablation.md); "
        "rda-prox: the same with averaging=0 throughout and a cosine lr alone; "
        f"grda: GRDA {fmt_kw(hyper['grda'])}, {hyper['grda_schedule']}; the rda rows and grda get "
        "target_sparsity = the column and steer lam / c to it; pat-*: torchao PAT's PruneOptimizer (version in each "
        "run's record) over the SGD above: pat-lasso ProxLasso at bench/lambda_sweep.py's lambda for the column, "
        "pat-min / pat-global the column's fraction of each tensor's / all weights' smallest latent values zeroed "
        "every step (bench/accuracy_pat.py)",
        "",
        "Cells: test accuracy in %, mean over seeds ± half the spread between them, and (in parentheses) the "
        "achieved sparsity: the fraction of exact zeros over the >= 2-D weight tensors (biases excluded), mean "
        "over seeds. Columns are target sparsities; the dense row repeats dense SGD's accuracy in every column for "
        "comparison. Bold: the best sparse method of the column (all of them if tied). [n seed]: only n of the "
        "seeds are in so far. "
        "s/epoch: mean training time per epoch of one run (evaluation excluded; runs trained while others shared the "
        "cores, as the load averages above say, are slower: compare speed in bench/optimizer_step.py's results).",
        "",
        design_goal(results),
        "",
        table(results),
    ]
    if nm:
        out += ["", "## N:M patterns", "",
                "Each method at the pattern's own sparsity 1 - N/M, at most N nonzeros in each group of M consecutive "
                "weights along the rows: rda: RDA as above with granularity ('nm', N, M) and target_sparsity = "
                "1 - N/M (so its controller holds lam near 0: the N:M prox of the dual average); sr-ste: SR-STE "
                "(pruning/srste.py, decay 2e-4) on SGD as above; magnitude / gmp: one-shot and gradual magnitude "
                "pruning with pattern=N:M. Same cells as above; bold: the best of the column.", "",
                nm_table(results, nm)]
    if results.get("failures"):
        out += ["", "Failed runs (a rerun retries them):", ""]
        out += [f"- {f['method']} at {f['target_sparsity']:.0%}, seed {f['seed']}: {f['error']}"
                for f in results["failures"]]
    return "\n".join(out) + "\n"


def fmt_kw(kw: dict) -> str:
    return "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()) + ")"


# ----------------------------------------------------------------------------------------------------------
# Plot


def plot(results: dict, path: Path) -> None:
    """Accuracy vs achieved sparsity, one line per method, dense as a horizontal line. The x axis is the fraction
    of weights kept (1 - sparsity) on a log scale, reversed so that sparser is to the right. Two panels: every
    point, and a zoom on the top (within ZOOM_POINTS of dense), where the methods that did not collapse differ."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    results, _ = split_runs(results)  # (the N:M table is in the markdown only)

    grid, columns = cells(results), targets(results)
    dense = grid.get(("dense", 0.0))
    methods = [m for m in method_order(results) if m != "dense"]
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    kept_all = [1 - t for t in columns]
    for i, method in enumerate(methods):
        points = sorted((c.sparsity, c) for (m, _), c in grid.items() if m == method)
        kept = [max(1 - s, 1e-4) for s, _ in points]  # all-zero weights would be log(0)
        kept_all += kept
        style = dict(label=method, marker="osD^v<>pP*XhH8d"[i % 15], markersize=5, capsize=2,
                     color="black" if method == "rda" else colors[(2 * i) % 20 + (2 * i) // 20],
                     linewidth=2.5 if method == "rda" else 1.2,
                     linestyle="--" if method in ("rda-l1", "rda-prox") else "-")
        for ax in axes:
            ax.errorbar(kept, [c.accuracy for _, c in points], yerr=[c.spread for _, c in points], **style)
    for ax in axes:
        if dense is not None:
            ax.axhline(dense.accuracy, color="gray", linestyle=":", linewidth=1.5,
                       label=f"dense ({dense.accuracy:.2f})")
        ax.set_xscale("log")
        if kept_all:
            ax.set_xlim(max(kept_all) * 1.25, min(kept_all) / 1.25)  # reversed: sparser to the right
        if columns:
            ax.set_xticks([1 - t for t in columns], [f"{t:.0%}" for t in columns])
            ax.minorticks_off()
        ax.set_xlabel("sparsity (x: fraction of weights kept, log scale)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("all runs")
    if dense is not None:
        axes[1].set_ylim(dense.accuracy - ZOOM_POINTS, dense.accuracy + 0.5)
        axes[1].set_title(f"zoom: within {ZOOM_POINTS} points of dense")
    cfg = results["config"]
    fig.suptitle(f"{cfg['title']}, Fashion-MNIST, {cfg['epochs']} epochs, mean over seeds (bars: half the spread)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
