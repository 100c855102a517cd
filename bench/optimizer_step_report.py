"""bench/optimizer_step.py's markdown: a table per parameter set, made from the report (its JSON) alone."""

from __future__ import annotations

from common import fmt, report_header


def markdown_table(s: dict) -> str:
    lines = [
        "| method | backend | B/elem | ms/step | GB/s | % of copy | vs torch ref | time / SGD |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in s["results"]:
        lines.append(
            f"| {r['method']} | {r['backend']} | {r['bytes_per_elem']} | {fmt(r['ms'], '.3f')} "
            f"| {fmt(r['gbps'], '.1f')} "
            f"| {fmt(r['pct_of_copy'], '.1f', '%')} | {fmt(r['speedup_vs_ref'], '.2f', 'x')} "
            f"| {fmt(r['time_vs_sgd'], '.2f', 'x')} |"
        )
    for k in s["skipped"]:
        lines.append(f"| {k.get('method', '')} | {k['backend']} | skipped: {k['reason']} | | | | | |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = report_header("Optimizer step", m) + [
        f"- command: `{cfg['command']}`",
        f"- timing: {cfg['timer']}, warm-up {cfg['warmup']}, reps {cfg['reps']}; ms/step is the median",
        "",
        "B/elem is the method's minimum bytes per parameter element and step (fp32 state): RDA 3s + 32 (44 B for "
        "fp32 params, reading w; 40 B if w is recomputed instead), gRDA 2s + 8, SGD-momentum 5s (s = param "
        "itemsize). GB/s = those bytes / time; % of copy = time of a copy_ moving the same bytes / time (on a "
        "CPU a copy also reads its destination, write-allocate, so in-place updates such as the axpy row can "
        "exceed 100%). "
        "vs torch ref = speed-up over the reference backend of the same optimizer; time / SGD = step time "
        "relative to torch SGD-momentum.",
    ]
    for s in report["sets"]:
        out += ["", f"## {s['name']}: {s['numel']:,} parameters, {s['tensors']} tensors, {s['dtype']}", "",
                markdown_table(s)]
    for k in report.get("skipped_sets", []):
        out += ["", f"## {k['name']}: skipped ({k['reason']})"]
    return "\n".join(out) + "\n"
