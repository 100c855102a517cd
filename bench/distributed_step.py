#!/usr/bin/env python
"""The optimizer step of one global model on 1 and 2 gloo ranks (FSDP2, CPU), and the collectives' share.

    python bench/distributed_step.py              # the table in bench/results (~2 minutes on 2 cores)
    python bench/distributed_step.py --quick      # smaller weights, fewer steps: a smoke run

The model: ``--layers`` Linear layers of ``--width`` x ``--width`` (with biases), the same on every run. Each
run is spawned fresh, its ranks sharing the machine's cores (``cores // ranks`` torch threads each), and times
``optimizer.step()`` alone (the gradients of one backward pass, kept), the ranks started together by a barrier:
the median over ``--steps`` steps after 3 warm-up steps, the slowest rank's. "collectives" is the time the step
spent inside torch.distributed calls (the reweighting's max, the tile sums and the tile maps of block mode),
measured on rank 0. Runs: one process with plain tensors (the baseline), FSDP2 on 1 rank (the DTensor path, no
peers) and on 2 ranks (half of each weight per rank). Configurations: RDA element-wise, RDA in 32 x 32 blocks on
shards that fall on tile boundaries (``--width`` a multiple of 64) and on ones that do not (``--width`` + 40:
tiles straddle the boundary, their sums cross the ranks), GRDA (no collective), each on the native CPU kernels
and the reference.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import common

CONFIGS = {  # name -> (optimizer, options, width offset)
    "RDA element": ("RDA", dict(lr=0.5, lam=1e-4), 0),
    "RDA block 32x32, aligned shards": ("RDA", dict(lr=0.5, lam=1e-4, granularity=("block", 32, 32)), 0),
    "RDA block 32x32, straddling tiles": ("RDA", dict(lr=0.5, lam=1e-4, granularity=("block", 32, 32)), 40),
    "GRDA element": ("GRDA", dict(lr=0.1, c=1e-3), 0),
}
RUNS = (("1 process", 1, False), ("FSDP2, 1 rank", 1, True), ("FSDP2, 2 ranks", 2, True))


def make_model(width: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))


class CollectiveTimer:
    """Adds up the wall time of torch.distributed's all_reduce calls while active (wrapping the module function
    the library calls)."""

    def __init__(self):
        self.seconds, self._inner = 0.0, dist.all_reduce

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        dist.all_reduce = timed
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._inner


def rank_main(rank: int, world: int, port: int, sharded: bool, args: dict, out: str) -> None:
    import sparse_rda
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(max(1, common.usable_cpus() // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for name, (cls_name, options, extra) in CONFIGS.items():
        for backend in args["backends"]:
            model = make_model(args["width"] + extra, args["layers"])
            if sharded:
                for layer in model:
                    fully_shard(layer)
                fully_shard(model)
            opt = getattr(sparse_rda, cls_name)(model.parameters(), backend=backend, **options)
            x = torch.randn(16, args["width"] + extra)
            model(x).square().mean().backward()
            times, collectives = [], []
            for i in range(3 + args["steps"]):
                dist.barrier()
                with CollectiveTimer() as timer:
                    start = time.perf_counter()
                    opt.step()
                    elapsed = time.perf_counter() - start
                slowest = torch.tensor([elapsed])
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                if i >= 3:
                    times.append(float(slowest))
                    collectives.append(timer.seconds)
            results[f"{name} | {backend}"] = dict(ms=1e3 * statistics.median(times),
                                                  collectives_ms=1e3 * statistics.median(collectives))
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def markdown(report: dict) -> str:
    m, a = report["machine"], report["args"]
    lines = common.report_header("Optimizer step on 1 and 2 gloo ranks (FSDP2)", m)
    lines += [f"- command: `{report['command']}`", "",
              f"{a['layers']} Linear layers of {a['width']} x {a['width']} (+40 for the straddling run), the median "
              f"step over {a['steps']} steps, the slowest rank's; ranks share the {m['usable_cpus']} cores "
              "(threads = cores / ranks). collectives: the step's time in torch.distributed calls (rank 0).", "",
              "| configuration | backend | " + " | ".join(f"{run} ms" for run, _, _ in RUNS)
              + " | 2 ranks vs 1 process | collectives on 2 ranks |",
              "|---|---|" + "---:|" * (len(RUNS) + 2)]
    for key in report["runs"][RUNS[0][0]]:
        name, backend = key.split(" | ")
        cells = [report["runs"][run][key]["ms"] for run, _, _ in RUNS]
        two = report["runs"][RUNS[-1][0]][key]
        share = two["collectives_ms"] / two["ms"] if two["ms"] else 0.0
        lines.append(f"| {name} | {backend} | " + " | ".join(f"{c:.2f}" for c in cells)
                     + f" | {cells[0] / cells[-1]:.2f}x | {two['collectives_ms']:.2f} ms ({share:.0%}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backends", default="cpu,torch")
    ap.add_argument("--quick", action="store_true", help="width 256, 2 layers, 5 steps")
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.width, args.layers, args.steps = 256, 2, 5
    import sparse_rda

    backends = [b for b in common.csv(args.backends) if b in sparse_rda.backends()]
    shared = dict(width=args.width, layers=args.layers, steps=args.steps, backends=backends)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run, world, sharded in RUNS:
            out = os.path.join(tmp, f"{world}-{sharded}.json")
            mp.spawn(rank_main, args=(world, free_port(), sharded, shared, out), nprocs=world)
            runs[run] = json.loads(Path(out).read_text())
            print(f"{run}: " + ", ".join(f"{k} {v['ms']:.2f} ms" for k, v in runs[run].items()), flush=True)
    machine = common.machine_info(torch.device("cpu"))
    common.note_load_end(machine)
    report = dict(machine=machine, args=shared, runs=runs, command=common.command_line("distributed_step.py", argv))
    text = markdown(report)
    print(text)
    if not args.no_save:
        common.save_report(args.out, "distributed_step", torch.device("cpu"), machine, "", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
