"""bench/train_step.py's verdict and markdown: the speed-ups against the dense step and the table, made from the
report (its JSON) alone."""

from __future__ import annotations

from common import fmt, report_header

TARGET_SPEEDUP = 2.0
# variant keys (stable, used in the summary)
DENSE_ELEMENT, DENSE_BLOCK, SPARSE_BLOCK, SPARSE_BLOCK_REF, LIVE_ONLY = (
    "dense + RDA element", "dense + RDA block", "sparse + RDA block", "sparse + RDA block (reference)",
    "sparse, dW live-only")


def summarize(rows: list[dict], sparsity: float, on_gpu: bool = True) -> dict:
    by = {r["variant"]: r for r in rows}

    def ms(variant, part):
        r = by.get(variant)
        return r["parts"][part]["ms"] if r and part in r["parts"] else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = dict(
        block_backend=by[SPARSE_BLOCK]["backend"] if SPARSE_BLOCK in by else None,
        full_step_speedup=ratio(ms(DENSE_ELEMENT, "full_step"), ms(SPARSE_BLOCK, "full_step")),
        full_step_speedup_same_optimizer=ratio(ms(DENSE_BLOCK, "full_step"), ms(SPARSE_BLOCK, "full_step")),
        full_step_speedup_reference=ratio(ms(DENSE_ELEMENT, "full_step"), ms(SPARSE_BLOCK_REF, "full_step")),
        matmul_speedup=ratio(ms(DENSE_ELEMENT, "fwd_bwd"), ms(SPARSE_BLOCK, "fwd_bwd")),
        matmul_speedup_dw_live_only=ratio(ms(DENSE_ELEMENT, "fwd_bwd"), ms(LIVE_ONLY, "fwd_bwd")),
        opt_block_vs_element=ratio(ms(SPARSE_BLOCK, "opt_step"), ms(DENSE_ELEMENT, "opt_step")),
        opt_block_reference_vs_element=ratio(ms(SPARSE_BLOCK_REF, "opt_step"), ms(DENSE_ELEMENT, "opt_step")),
        # the matmul work left with a dense dW: fwd and dX scale with the live fraction, dW does not
        matmul_speedup_bound_dense_dw=3.0 / (2.0 * (1.0 - sparsity) + 1.0),
    )
    parts = [ms(SPARSE_BLOCK, "fwd_bwd"), ms(DENSE_ELEMENT, "opt_step")]
    if all(p is not None for p in parts):
        out["estimated_sparse_step_with_fused_optimizer_ms"] = sum(parts)
        out["estimated_speedup_with_fused_optimizer"] = ratio(ms(DENSE_ELEMENT, "full_step"), sum(parts))
    sp = out["full_step_speedup"]
    out["target_status"] = "—" if sp is None else ("met" if sp >= TARGET_SPEEDUP else "missed")
    if not on_gpu and sp is not None:
        out["target_status"] += " (CPU: not the benchmark)"
    out["target"] = (f">= {TARGET_SPEEDUP:g}x the dense step (nn.Linear + fused element RDA) at 90% block "
                     f"sparsity: {out['target_status']}")
    if abs(sparsity - 0.9) > 1e-9:
        out["target"] += f" (this run: {sparsity:.0%}; the target is stated for 90%)"
    return out


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["variant"] == DENSE_ELEMENT), None)
    base_full = base["parts"].get("full_step", {}).get("ms") if base else None
    lines = [
        "| variant | optimizer (backend) | live tiles start -> end | fwd+bwd ms | opt step ms | refresh ms "
        "| full step ms | dense full / this |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        p = r["parts"]
        full = p.get("full_step", {}).get("ms")
        opt = "— (fwd+bwd only)"
        if r["optimizer"]:
            opt = r["optimizer"] + (f" ({r['backend']})" if r["backend"] else "")
        lines.append(
            f"| {r['variant']} | {opt} "
            f"| {r['live_tiles_start']}/{r['tiles']} -> {r['live_tiles_end']}/{r['tiles']} "
            f"| {fmt(p.get('fwd_bwd', {}).get('ms'), '.3f')} | {fmt(p.get('opt_step', {}).get('ms'), '.3f')} "
            f"| {fmt(p.get('refresh', {}).get('ms'), '.3f')} | {fmt(full, '.3f')} "
            f"| {fmt(base_full / full if base_full and full else None, '.2f', 'x')} |")
    for k in result.get("skipped", []):
        lines.append(f"| {k['variant']} | skipped: {k['reason']} | | | | | | |")
    s = result["summary"]
    lines += [
        "",
        f"- **full step, sparse + block RDA ({s['block_backend']}) vs dense + fused element RDA**: "
        f"{fmt(s['full_step_speedup'], '.2f', 'x')}; target {s['target']}",
        "- full step, same optimizer (block RDA) on both sides: "
        f"{fmt(s['full_step_speedup_same_optimizer'], '.2f', 'x')}",
    ]
    if s.get("full_step_speedup_reference") is not None:
        lines.append(f"- full step, sparse + block RDA on the reference backend: "
                     f"{fmt(s['full_step_speedup_reference'], '.2f', 'x')}")
    lines += [
        f"- matmul part (fwd + bwd, dense dW): {fmt(s['matmul_speedup'], '.2f', 'x')} (bound at this sparsity "
        f"with a dense dW: {s['matmul_speedup_bound_dense_dw']:.2f}x); with dW on live tiles only: "
        f"{fmt(s['matmul_speedup_dw_live_only'], '.2f', 'x')}",
        f"- optimizer part: the block RDA step ({s['block_backend']}) takes "
        f"{fmt(s['opt_block_vs_element'], '.1f', 'x')} the fused element-wise step"
        + (f"; on the reference backend {fmt(s['opt_block_reference_vs_element'], '.1f', 'x')}"
           if s.get("opt_block_reference_vs_element") is not None else ""),
        f"- ESTIMATE (not measured): sparse fwd+bwd + a block step as fast as the fused element step = "
        f"{fmt(s.get('estimated_sparse_step_with_fused_optimizer_ms'), '.3f', ' ms')}, "
        f"speed-up {fmt(s.get('estimated_speedup_with_fused_optimizer'), '.2f', 'x')} over the dense step",
    ]
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    m, cfg, res = report["machine"], report["config"], report["result"]
    out = report_header("Training step, MLP block", m) + [
        f"- command: `{cfg['command']}`",
        f"- model: Linear({cfg['d']}, {4 * cfg['d']}) -> GELU -> Linear({4 * cfg['d']}, {cfg['d']}), "
        f"{cfg['tokens']} tokens, {cfg['dtype']} params (fp32 optimizer state); sparse: {cfg['sparsity']:.0%} of "
        f"{cfg['block'][0]}x{cfg['block'][1]} tiles dead; SparseLinear's matmul runs: {cfg['masked_impl']}",
        f"- RDA {cfg['rda']}; loss mean(y^2) (tiny gradients: the dead tiles stay dead while timing)",
        f"- timing: {cfg['timer']}; ms is the median",
        "",
    ]
    if m["device"] != "cuda":
        out += ["**CPU run: these numbers are NOT the benchmark.** Without a GPU masked_linear is the dense "
                "F.linear fallback (or the Triton interpreter under TRITON_INTERPRET=1): this run only shows that "
                "the runner works. The benchmark is the GPU run.", ""]
    backend = res["summary"].get("block_backend")
    if backend == "torch":
        out += ["Block RDA ran on the reference backend (pure torch, the only block implementation where this ran): "
                "the sparse full step carries that slow optimizer step. The matmul part and the optimizer part "
                "are given separately below; the last line is an estimate, not a measurement.", ""]
    else:
        out += [f"Block RDA ran on the {backend!r} backend; the reference-backend row shows the pure-torch step. "
                "The last line below is an estimate, not a measurement.", ""]
    out += [markdown_table(res)]
    return "\n".join(out) + "\n"
