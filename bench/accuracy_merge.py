#!/usr/bin/env python
"""Merges accuracy tables trained apart (e.g. two processes, one core each, each with its own ``--out``) into
one committed table, then writes its markdown and plot again.

    python bench/accuracy_merge.py bench/results/accuracy-cnn.json /tmp/a/accuracy-cnn.json /tmp/b/accuracy-cnn.json

Each part's runs replace the table's runs of the same method and seed (every target: the part retrained that
method at that seed), and the table records the part in ``merged_from`` (its command, methods, seeds, git), which
the report lists. A part trained with another config (epochs, data, hyper-parameters) is refused, as
``accuracy.py`` refuses to resume from one.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import accuracy
import accuracy_report
import common


def portable_command(command: str) -> str:
    """The part's command without its ``--out`` folder (a scratch path of the machine that ran it)."""
    return re.sub(r"\s--out(=|\s+)\S+", "", command)


def merge(table: dict, part: dict) -> dict:
    """``table`` with ``part``'s runs in place of its runs of the same (method, seed)."""
    differs = accuracy.config_differences(table["config"], part["config"])
    if differs:
        raise ValueError(f"the part was trained with another config (differs in: {', '.join(differs)})")
    replaced = {(r["method"], r["seed"]) for r in part["runs"]}
    if not replaced:
        raise ValueError("the part holds no runs")
    merged = dict(table)
    merged["runs"] = [r for r in table["runs"] if (r["method"], r["seed"]) not in replaced] + part["runs"]
    merged["failures"] = [f for f in table.get("failures", []) if (f["method"], f["seed"]) not in replaced] + \
        part.get("failures", [])
    # the table's config keeps its settings; a method new in the part brings its hyper-parameters
    merged["config"] = dict(table["config"], hyper={**part["config"]["hyper"], **table["config"]["hyper"]})
    methods = list(dict.fromkeys(r["method"] for r in part["runs"]))
    merged["merged_from"] = table.get("merged_from", []) + [dict(
        command=portable_command(part["config"]["command"]), methods=methods,
        seeds=sorted({r["seed"] for r in part["runs"]}), machine_git=part["machine"].get("git"),
        runs=len(part["runs"]))]
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="the accuracy-<model>.json to merge into (rewritten)")
    parser.add_argument("parts", type=Path, nargs="+", help="accuracy-<model>.json files trained apart")
    args = parser.parse_args(argv)
    table = json.loads(args.table.read_text())
    for path in args.parts:
        try:
            table = merge(table, json.loads(path.read_text()))
        except ValueError as err:
            sys.exit(f"{path}: {err}; nothing written")
    common.write_json(args.table, table)
    args.table.with_suffix(".md").write_text(accuracy_report.markdown(table))
    accuracy_report.plot(table, args.table.with_suffix(".png"))
    print(f"wrote {args.table}, .md and .png ({len(table['runs'])} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
