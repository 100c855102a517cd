"""Dense SGD vs sparse RDA on Fashion-MNIST with LeNet-300-100.

Trains the same network twice (same seed, same data order, same number of steps):

* dense:  SGD(lr=0.1, momentum=0.9, weight_decay=5e-4) with a per-step cosine schedule;
* sparse: sparse_rda.RDA(lr=1.0, momentum_time=9.5, weight_decay=5e-4) with CosineRDA, whose own update
  sets weights exactly to zero (no pruning pass, no mask).

Then prints test accuracy, sparsity and training time side by side, the RDA model's per-tensor sparsity, its
checkpoint and forward latency with and without its zeros (save_sparse, to_inference), and how long one
optimizer step takes for each available backend compared with torch's SGD.

    python examples/fashion_mnist_demo.py            # the full demo (about 3 minutes on 2 idle CPU cores)
    python examples/fashion_mnist_demo.py --quick    # smoke test: 1 epoch on a subset, seconds

Data: the four IDX files of Fashion-MNIST (``train-images-idx3-ubyte.gz`` ...) in ``--data``, else
``$FASHION_MNIST_DIR``, else /usr/share/datasets/fashion-mnist (Debian: ``apt-get install
dataset-fashion-mnist``). Without them the demo runs on a synthetic 10-class problem instead.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparse_rda
from machine_load import LoadMonitor, busy_now_note  # examples/machine_load.py, beside this script
from sparse_rda.datasets import DatasetNotFoundError, default_data_dir, load_fashion_mnist

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is only for the progress bars: run without them
    tqdm = None

# Tuned on this demo (sweep in examples/README.md): about 97% of the weights end up zero, about half a point
# of test accuracy below dense SGD. Larger lam: sparser and less accurate; more epochs help both.
DEFAULT_LAM = 3.5e-6
DEFAULT_EPOCHS = 60


# ----------------------------------------------------------------------------------------------------------
# Data


def synthetic_problem(n_train: int = 20000, n_test: int = 5000, seed: int = 0):
    """A stand-in with Fashion-MNIST's shapes: 10 Gaussian classes in 784 dims whose means differ on only
    50 of the features (the rest is noise), so a sparse network can do as well as a dense one. The class
    separation is set for roughly 85-90% test accuracy, so the task is neither trivial nor hopeless."""
    gen = torch.Generator().manual_seed(seed)
    informative = torch.randperm(784, generator=gen)[:50]
    centers = torch.zeros(10, 784)
    centers[:, informative] = 0.45 * torch.randn(10, 50, generator=gen)

    def sample(n):
        y = torch.randint(0, 10, (n,), generator=gen)
        return centers[y] + torch.randn(n, 784, generator=gen), y

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return train_x, train_y, test_x, test_y


def get_data(data_dir: Path):
    """Fashion-MNIST if its files are there, else the synthetic problem (with a note on getting the data)."""
    try:
        return "Fashion-MNIST", load_fashion_mnist(data_dir)
    except DatasetNotFoundError as err:
        print(f"{err}\n  Falling back to a synthetic 10-class problem so the demo still runs end to end.\n",
              file=sys.stderr)
    return "synthetic (Fashion-MNIST not found)", synthetic_problem()


# ----------------------------------------------------------------------------------------------------------
# Model and training


def lenet_300_100() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )  # fmt: skip


def make_sgd(model, total_steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def make_rda(model, total_steps, lam):
    # param_groups: weight matrices are thresholded, biases are trained without a penalty.
    groups = sparse_rda.param_groups(model, lr=1.0, lam=lam, momentum_time=9.5, weight_decay=5e-4)
    opt = sparse_rda.RDA(groups)
    return opt, sparse_rda.schedules.CosineRDA(opt, total_steps=total_steps)


def batches(n, batch_size, epoch, seed):
    """The shuffled batch indices of one epoch; a function of (seed, epoch) only, so both runs see the
    same data in the same order."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=gen).split(batch_size)


@dataclass
class Timing:
    """The training steps alone: forward, backward, optimizer step and schedule, timed one by one."""

    step_seconds: list[float]
    load: LoadMonitor

    @property
    def total(self) -> float:
        return sum(self.step_seconds)

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.step_seconds)


def train(name, make_opt, data, args, device, show_sparsity=False):
    """Trains a fresh LeNet-300-100; returns (model, Timing). Every method is timed the same way: each training
    step alone, so the progress bar's updates (which read the loss and, for RDA, count zeros) and evaluation
    are left out; the machine's load is watched meanwhile."""
    train_x, train_y = data[0].to(device), data[1].to(device)
    torch.manual_seed(args.seed)  # same initial weights for both methods
    model = lenet_300_100().to(device)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    opt, schedule = make_opt(model, args.epochs * steps_per_epoch)

    step_seconds = []
    with LoadMonitor() as load:
        for epoch in range(args.epochs):
            order = batches(len(train_x), args.batch_size, epoch, args.seed)
            bar = progress(order, desc=f"{name} epoch {epoch + 1}/{args.epochs}")
            model.train()
            for i, idx in enumerate(bar):
                start = time.perf_counter()
                loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                sync(device)
                step_seconds.append(time.perf_counter() - start)
                if tqdm is not None and (i % 50 == 0 or i == len(order) - 1):
                    # Reading the loss (and counting zeros) syncs with the device, so only now and then.
                    postfix = {"loss": f"{loss.item():.3f}"}
                    if show_sparsity:
                        postfix["sparsity"] = f"{sparse_rda.sparsity(model).penalized:.1%}"
                    bar.set_postfix(postfix, refresh=False)
    return model, Timing(step_seconds, load)


@torch.no_grad()
def accuracy(model, x, y, device, batch_size=2000):
    model.eval()
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
    return correct / len(x)


def progress(iterable, desc):
    if tqdm is None:
        print(desc, flush=True)
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# Optimizer-step timing


def time_steps(opt, device, runs, warmup=10):
    """Median milliseconds of opt.step() alone (gradients already in place), after warm-up."""
    for _ in range(warmup):
        opt.step()
    sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def sgd_kwargs(device):
    """torch's fastest SGD on this device: fused where this torch supports it, else foreach."""
    try:
        probe = torch.zeros(2, device=device, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        torch.optim.SGD([probe], lr=0.1, momentum=0.9, fused=True).step()
        return {"fused": True}
    except (RuntimeError, ValueError, TypeError):
        return {"foreach": True}


def benchmark_steps(model, device, lam, runs):
    """Times one optimizer step on copies of the model's parameters with random gradients, for torch SGD
    and for every RDA backend this installation has. Returns rows (name, ms or None, note)."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def fresh_params():
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-2
        return params

    params = fresh_params()
    kwargs = sgd_kwargs(device)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, **kwargs)
    label = "torch SGD (" + ("fused" if "fused" in kwargs else "foreach") + ")"
    rows = [(label, time_steps(sgd, device, runs), "momentum 0.9")]

    for backend in sparse_rda.backends():
        params = fresh_params()
        # Same groups as training: the 2-D weights are penalized, the biases are not.
        groups = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "penalize": False},
        ]
        try:
            # averaging=0.5: a mid-schedule step (the cost does not depend on the value).
            opt = sparse_rda.RDA(groups, lr=1.0, lam=lam, weight_decay=5e-4, averaging=0.5, backend=backend)
            rows.append((f"RDA backend={backend}", time_steps(opt, device, runs), ""))
        except Exception as err:  # e.g. a GPU-only backend on a CPU model
            rows.append((f"RDA backend={backend}", None, f"skipped: {type(err).__name__}: {err}"))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per method (default %(default)s)")
    parser.add_argument("--lam", type=float, default=DEFAULT_LAM, help="RDA penalty strength (default %(default)g)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order (default %(default)s)")
    parser.add_argument(
        "--data",
        type=Path,
        default=default_data_dir(),
        help="directory with the Fashion-MNIST *-ubyte.gz files (default: $FASHION_MNIST_DIR, else %(default)s)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch on a 6000-example subset")
    parser.add_argument("--skip-dense", action="store_true", help="train only the RDA model (for lam sweeps)")
    parser.add_argument(
        "--bench-runs", type=int, default=200, help="timed optimizer steps per method (default %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset, data = get_data(args.data)
    if args.quick:
        args.epochs = 1
        args.bench_runs = min(args.bench_runs, 20)
        data = (data[0][:6000], data[1][:6000], data[2], data[3])
    if note := busy_now_note():
        print(note)
    print(
        f"{dataset}: {len(data[0])} train / {len(data[2])} test examples | LeNet-300-100 | {args.epochs} epochs, "
        f"batch {args.batch_size}, seed {args.seed} | device {device}, {torch.get_num_threads()} threads | "
        f"RDA lam={args.lam:g}"
    )

    runs = []
    if not args.skip_dense:
        runs.append(("dense SGD", make_sgd, False))
    runs.append(("RDA", lambda model, steps: make_rda(model, steps, args.lam), True))
    results = []
    for name, make_opt, show_sparsity in runs:
        model, timing = train(name, make_opt, data, args, device, show_sparsity)
        acc = accuracy(model, data[2], data[3], device)
        results.append((name, model, acc, sparse_rda.sparsity(model), timing))
        print(f"{name} done: test accuracy {acc:.2%}, sparsity {results[-1][3].penalized:.2%}, {timing.total:.1f} s "
              f"training ({timing.median_ms:.2f} ms/step median; {timing.load.describe()})")
    print_comparison(results)

    rda_model = results[-1][1]
    print("\nRDA model, zeros per tensor:")
    print(sparse_rda.sparsity(rda_model))

    print_checkpoint_sizes(rda_model)
    print_inference_latency(rda_model, data[2], device)

    print(f"\nOptimizer step alone on LeNet-300-100's {sum(p.numel() for p in rda_model.parameters())} parameters "
          f"(median of {args.bench_runs} steps after warm-up, device {device}):")
    with LoadMonitor() as load:
        rows = benchmark_steps(rda_model, device, args.lam, args.bench_runs)
    print_benchmark(rows, load)


def print_checkpoint_sizes(model):
    """The trained model's zeros leave the run: its checkpoint with and without them."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "dense.pt")
        dense = (Path(tmp) / "dense.pt").stat().st_size
        exact = sparse_rda.save_sparse(model, Path(tmp) / "sparse.safetensors")["file_bytes"]
        half = sparse_rda.save_sparse(model, Path(tmp) / "bf16.safetensors", values_dtype=torch.bfloat16)["file_bytes"]
    print(f"\nRDA model's checkpoint: torch.save {dense / 1024:.0f} KiB; sparse_rda.save_sparse {exact / 1024:.0f} KiB "
          f"({dense / exact:.1f}x smaller, exact), {half / 1024:.0f} KiB with bf16 values ({dense / half:.1f}x)")


def print_inference_latency(model, x_test, device, reps=200):
    """The trained model's zeros as time saved: its forward as trained (dense math) and after to_inference,
    whose layers keep only the nonzeros (CSR on CPU), at batch 1 and 128 (median of ``reps`` forwards)."""
    model = model.eval()
    print("\nRDA model's forward (median, torch.no_grad): as trained vs sparse_rda.to_inference")
    for batch in (1, 128):
        x = x_test[:batch].to(device)
        fast = copy.deepcopy(model)
        formats = sorted({why.split(":")[0] for why in sparse_rda.to_inference(fast, batch_size=batch).values()})
        with torch.no_grad():
            if not torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-5):
                raise AssertionError("to_inference changed the model's outputs")
            dense_ms, sparse_ms = (median_forward_ms(m, x, device, reps) for m in (model, fast))
        print(f"  batch {batch:>3}: {dense_ms:.3f} ms -> {sparse_ms:.3f} ms ({dense_ms / sparse_ms:.1f}x faster; "
              f"layers as {', '.join(formats)})")


def median_forward_ms(model, x, device, reps):
    for _ in range(10):
        model(x)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        model(x)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def print_comparison(results):
    print(f"\n{'method':<10}  {'test acc':>8}  {'sparsity (weights)':>18}  {'sparsity (all)':>14}  {'train time':>10}  "
          f"{'ms/step':>7}")
    for name, _, acc, report, timing in results:
        print(f"{name:<10}  {acc:>8.2%}  {report.penalized:>18.2%}  {report.total:>14.2%}  {timing.total:>9.1f}s  "
              f"{timing.median_ms:>7.2f}")
    if len(results) != 2:
        return
    (_, _, dense_acc, _, dense_timing), (_, _, rda_acc, rda_report, rda_timing) = results
    kept = 1 - rda_report.penalized
    fewer = f"{1 / kept:.1f}x fewer" if kept else "none left"
    points = 100 * (rda_acc - dense_acc)
    print(f"RDA vs dense: {points:+.2f} points of test accuracy, keeping {kept:.2%} of the weights ({fewer}).")
    busy = [(name, t.load) for name, t in (("dense SGD", dense_timing), ("RDA", rda_timing)) if t.load.loaded]
    if busy:
        print("warning: the training times are not comparable: " + "; ".join(
            f"while {name} trained, {load.describe()}" for name, load in busy) + ". Rerun on an idle machine.")
    else:
        note = "" if rda_timing.load.others_cores is not None else " (machine load not checked here)"
        print(f"Training step (median, timed alike, one run after the other): RDA takes "
              f"{rda_timing.median_ms / dense_timing.median_ms:.2f}x the time of dense SGD{note}. On a CPU the zeros "
              "save no time: the matmuls are dense.")


def print_benchmark(rows, load):
    sgd_ms = rows[0][1]
    print(f"{'optimizer':<28}  {'ms/step':>8}  {'time vs SGD':>11}  note")
    for name, ms, note in rows:
        if ms is None:
            print(f"{name:<28}  {'-':>8}  {'-':>11}  {note}")
        else:
            print(f"{name:<28}  {ms:>8.3f}  {ms / sgd_ms:>10.2f}x  {note}")
    if load.loaded:
        print(f"warning: {load.describe()} during these timings: the ratios are not reliable. "
              "Rerun on an idle machine.")


if __name__ == "__main__":
    main()
