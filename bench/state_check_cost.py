"""What the per-step state check costs (SparseOptimizer._check_live_state): the same optimizer stepped with the
check and with it switched off, interleaved in one process (ABAB...), median step times.

    python bench/state_check_cost.py [--reps 300] [--threads 1]

Sets: the demo's LeNet-300-100 (6 tensors, the step is mostly fixed cost) and ResNet-18's 62 tensors
(bench/param_sets.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import param_sets
import sparse_rda


def median_us(opt, reps: int, checked: bool) -> float:
    check = type(opt)._check_live_state
    if not checked:
        opt._check_live_state = lambda *args: None  # this instance only
    try:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    finally:
        opt.__dict__.pop("_check_live_state", None)
    assert type(opt)._check_live_state is check
    return statistics.median(times) * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4, help="A/B pairs per set")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.reps} steps per measurement")
    print("| set | optimizer | tensors | with check (us) | without (us) | difference (us) |")
    print("|---|---|--:|--:|--:|--:|")
    lenet = [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    for set_name, shapes in (("lenet-300-100", lenet), ("resnet18", param_sets.shapes("resnet18"))):
        for make in (lambda ps: sparse_rda.RDA(ps, lr=0.1, backend="cpu"),
                     lambda ps: sparse_rda.GRDA(ps, lr=0.1, c=1e-3, mu=0.55, backend="cpu")):
            opt = make(param_sets.make_params(shapes))
            for _ in range(10):
                opt.step()
            pairs = [(median_us(opt, args.reps, True), median_us(opt, args.reps, False)) for _ in range(args.rounds)]
            on, off = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
            print(f"| {set_name} | {type(opt).__name__} | {len(shapes)} | {on:.1f} | {off:.1f} | {on - off:+.1f} |")


if __name__ == "__main__":
    main()
