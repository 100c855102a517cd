"""bench/masked_matmul.py's markdown, made from the report (its JSON) alone, and the met / missed counts."""

from __future__ import annotations

from common import fmt, report_header
from masked_matmul_shape import BLOCK, TARGET_FACTOR, TARGET_MAX_SPARSITY


def markdown_tables(shape: dict) -> str:
    dense = shape["dense"]
    lines = [
        f"dense (cuBLAS / F.linear, dense random weight): fwd {dense['fwd']['ms']:.3f} ms "
        f"({dense['fwd']['tflops']:.3g} TFLOP/s), dX {dense['dx']['ms']:.3f} ms, dW {dense['dw']['ms']:.3f} ms, "
        f"bwd (dX + dW) {dense['bwd']['ms']:.3f} ms",
        "",
    ]
    for op, title, dense_op in (("fwd", "Forward y = x @ W.T", "fwd"), ("dx", "Backward dX = dY @ W", "dx")):
        lines += [
            f"**{title}** (dense {dense[dense_op]['ms']:.3f} ms)",
            "",
            "| sparsity | live tiles | masked ms | x dense | target ms | BSR ms | CSR ms | masked vs BSR | target |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for row in shape["rows"]:
            res, sk, t = row["results"], row["skipped"], row["targets"].get(op, {})

            def cell(key):
                if key in res:
                    return f"{res[key]['ms']:.3f}"
                return "unsupported" if sk.get(key, "").startswith("unsupported") else ("error" if key in sk else "—")

            lines.append(
                f"| {row['sparsity']:.0%} | {row['live_tiles']}/{row['tiles']} | {cell(f'masked.{op}')} "
                f"| {fmt(t.get('vs_dense'), '.3f')} | {fmt(t.get('budget_ms'), '.3f')} | {cell(f'bsr.{op}')} "
                f"| {cell(f'csr.{op}')} | {fmt(t.get('vs_bsr'), '.2f', 'x')} | {t.get('status', '—')} |")
        lines.append("")
    lines += [
        f"**Backward with weight gradient** (dense dX + dW {dense['bwd']['ms']:.3f} ms; dense dW alone "
        f"{dense['dw']['ms']:.3f} ms)",
        "",
        "| sparsity | masked bwd ms (dX + dense dW) | x dense bwd | dW live-only ms | x dense dW | target ms "
        "| target |",
        "|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in shape["rows"]:
        res, t = row["results"], row["targets"].get("dw_live", {})
        bwd, dwl = res.get("masked.bwd"), res.get("masked.dw_live")
        lines.append(
            f"| {row['sparsity']:.0%} | {fmt(bwd and bwd['ms'], '.3f')} "
            f"| {fmt(bwd and bwd['ms'] / dense['bwd']['ms'], '.3f')} | {fmt(dwl and dwl['ms'], '.3f')} "
            f"| {fmt(dwl and dwl['ms'] / dense['dw']['ms'], '.3f')} | {fmt(t.get('budget_ms'), '.3f')} "
            f"| {t.get('status', '—')} |")
    notes = sorted({f"{k}: {v}" for row in shape["rows"] for k, v in row["skipped"].items()})
    impls = sorted({f"{k}: {r['impl']}" for row in shape["rows"] for k, r in row["results"].items()
                    if k.split(".")[0] in ("bsr", "csr") and "impl" in r})
    if impls:
        lines += ["", "torch.sparse calls used: " + "; ".join(impls)]
    if notes:
        lines += ["", "Not timed:", ""] + [f"- {x}" for x in notes]
    return "\n".join(lines)


def summary(report: dict) -> dict:
    counts = {}
    for shape in report["shapes"]:
        for row in shape["rows"]:
            for op, t in row["targets"].items():
                if t["status"] != "—":
                    key = "met" if t["status"].startswith("met") else "missed"
                    counts.setdefault(op, {"met": 0, "missed": 0})[key] += 1
    return counts


def markdown_report(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = report_header("Masked matmul", m) + [
        f"- command: `{cfg['command']}`",
        f"- dtype {cfg['dtype']}, tiles {BLOCK[0]}x{BLOCK[1]}, no bias; masked_linear runs: {cfg['masked_impl']}",
        f"- timing: {cfg['timer']}; ms is the median",
        "",
    ]
    if m["device"] != "cuda":
        out += ["**CPU run: these numbers are NOT the benchmark.** Without a GPU masked_linear is the dense "
                "F.linear fallback (or the Triton interpreter under TRITON_INTERPRET=1); this run only shows that "
                "the runner works. The benchmark is the H200 bf16 run.", ""]
    out += [
        f"Target (docs/DESIGN.md): masked time <= {TARGET_FACTOR} x (1 - sparsity) x dense for sparsity <= "
        f"{TARGET_MAX_SPARSITY:.0%} (\"target ms\"), and faster than torch BSR; \"met\" needs both where they "
        "apply. x dense = masked time / dense time (the dense layer: a dense random weight, cuBLAS). BSR/CSR: "
        "torch.sparse with the same masked weight; 'unsupported' = no call of that layout ran (reasons below).",
    ]
    s = report.get("summary") or {}
    if s:
        out += ["", "Summary: " + "; ".join(f"{op}: {c['met']} met, {c['missed']} missed" for op, c in s.items())]
    for shape in report["shapes"]:
        out += ["", f"## {shape['name']}: M={shape['m']}, K={shape['k']} -> N={shape['n']}, {shape['dtype']}", "",
                markdown_tables(shape)]
    for k in report.get("skipped_shapes", []):
        out += ["", f"## {k['name']}: skipped ({k['reason']})"]
    return "\n".join(out) + "\n"
