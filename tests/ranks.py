"""What each rank runs in tests/test_distributed.py: ``python tests/ranks.py SCENARIO WORLD RESULTS [ARGS]``
spawns WORLD gloo ranks on CPU (meeting through a file in RESULTS); each writes its findings, one line each, to
RESULTS/rank<r> (their stdout would interleave). A failed check raises, so the run exits nonzero with the traceback on stderr.

Scenarios compare a distributed run with one process on the global batch: the gathered state within 1e-6 of each
tensor's largest value and the weights within 1e-6 of their iterate's (float32 rounding: the ranks' gradient
reductions add in another order), the nonzero counts equal."""

from __future__ import annotations

import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 20
GLOBAL_BATCH = 12  # divisible by 2 and 3 ranks
RTOL = 1e-6
CLASSES = {"mlp": 2, "cnn": 5}

RDA_OPTIONS = dict(lr=0.5, lam=3e-3)
GRDA_OPTIONS = dict(lr=0.1, c=0.02, mu=0.55)
TARGET = dict(target_sparsity=0.6, total_steps=STEPS)
# (name, model, optimizer class name, options)
FSDP_CASES = [
    ("mlp-rda-element", "mlp", "RDA", RDA_OPTIONS),
    ("mlp-rda-target", "mlp", "RDA", {**RDA_OPTIONS, **TARGET}),
    ("mlp-grda-element", "mlp", "GRDA", GRDA_OPTIONS),
    ("mlp-grda-target", "mlp", "GRDA", {**GRDA_OPTIONS, **TARGET}),
    ("mlp-rda-block", "mlp", "RDA", {**RDA_OPTIONS, "granularity": ("block", 4, 8), "lam": 2e-2}),
    ("mlp-rda-block-target", "mlp", "RDA", {**RDA_OPTIONS, "granularity": ("block", 4, 8), **TARGET}),
    ("mlp-rda-block-plain-l1", "mlp", "RDA", {**RDA_OPTIONS, "granularity": ("block", 3, 5), "reweight": False,
                                                 "lam": 6e-2}),
    ("cnn-rda-kernel", "cnn", "RDA", {**RDA_OPTIONS, "granularity": "kernel"}),
    ("cnn-rda-channel", "cnn", "RDA", {**RDA_OPTIONS, "granularity": "channel", "lam": 1e-3}),
    ("cnn-rda-element", "cnn", "RDA", {**RDA_OPTIONS, "lr": 0.3}),
    ("cnn-grda-element", "cnn", "GRDA", GRDA_OPTIONS),
    ("mlp-rda-nm", "mlp", "RDA", {**RDA_OPTIONS, "granularity": ("nm", 2, 4)}),
    ("mlp-rda-nm-target", "mlp", "RDA", {**RDA_OPTIONS, "granularity": ("nm", 2, 4), **TARGET}),
    ("cnn-rda-nm", "cnn", "RDA", {**RDA_OPTIONS, "granularity": ("nm", 1, 4)}),
]


def report(results: str, rank: int, line: str) -> None:
    with open(os.path.join(results, f"rank{rank}"), "a") as f:
        f.write(line + "\n")


def make_model(kind: str) -> torch.nn.Module:
    """Odd sizes, so that 2 and 3 ranks get uneven shards (a last shard of 1 row; on 3 ranks none of the MLP's
    2-row output layer)."""
    torch.manual_seed(0)
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(20, 33), torch.nn.ReLU(), torch.nn.Linear(33, 13), torch.nn.ReLU(),
                                   torch.nn.Linear(13, CLASSES[kind]))
    return torch.nn.Sequential(torch.nn.Conv2d(1, 7, 3), torch.nn.ReLU(), torch.nn.Conv2d(7, 5, 3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 5))


def batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    shape = (GLOBAL_BATCH, 20) if kind == "mlp" else (GLOBAL_BATCH, 1, 8, 8)
    return [(torch.randn(shape, generator=gen), torch.randint(0, CLASSES[kind], (GLOBAL_BATCH,), generator=gen))
            for _ in range(STEPS)]


def train(model, opt, data, rank: int = 0, world: int = 1) -> None:
    """Each rank on its slice of every global batch (the mean loss: FSDP2 and DDP average the grads)."""
    n = GLOBAL_BATCH // world
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[n * rank:n * rank + n]), y[n * rank:n * rank + n]).backward()
        opt.step()


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def compare(where: str, params, opt, ref_params, ref_opt) -> None:
    """Gathered weights and state against one process's, and the nonzero counts. A weight is the prox of the
    optimizer's iterate (RDA's T, gRDA's acc), so its error is measured on the iterate's scale: a tensor mostly
    thresholded to small values keeps the iterate's absolute rounding (the ranks' gradient sums round otherwise)."""
    params, ref_params = list(params), list(ref_params)
    worst = 0.0
    for i, (p, q) in enumerate(zip(params, ref_params)):
        iterate = ref_opt.state[q]["T" if "T" in ref_opt.state[q] else "acc"]
        pairs = [("weight", full(p.detach()), q.detach())]
        pairs += [(key, full(value), ref_opt.state[q][key]) for key, value in opt.state[p].items()]
        for key, mine, theirs in pairs:
            scale = (iterate if key == "weight" else theirs).double().abs().max().clamp_min(1e-30)
            error = float((mine.double() - theirs.double()).abs().max() / scale)
            assert error <= RTOL, f"{where}: param {i} {key}: off by {error:.3g} of its max"
            worst = max(worst, error)
    if dist.get_rank() == 0:
        print(f"{where}: worst error {worst:.2g} of the scale", flush=True)  # (for a reader: not checked)
    nnz, ref_nnz = opt.nnz(), ref_opt.nnz()
    assert [nnz[p] for p in params] == [ref_nnz[q] for q in ref_params], f"{where}: nonzero counts differ"
    assert sum(ref_nnz.values()) < sum(q.numel() for q in ref_params), f"{where}: nothing was zeroed"


def fsdp2_matches(rank: int, world: int, backend: str, cases: str) -> list[str]:
    """FSDP2 (fully_shard on every layer and the model) on ``world`` ranks against one process, per case."""
    from torch.distributed.fsdp import fully_shard

    import sparse_rda

    lines = []
    for name, kind, cls_name, options in FSDP_CASES:
        if cases != "all" and name not in cases.split(","):
            continue
        cls = getattr(sparse_rda, cls_name)
        model = make_model(kind)
        for layer in model:
            if list(layer.parameters()):
                fully_shard(layer)
        fully_shard(model)
        opt = cls(model.parameters(), backend=backend, **options)
        data = batches(kind)
        train(model, opt, data, rank, world)
        single = make_model(kind)
        ref_opt = cls(single.parameters(), backend=backend, **options)
        train(single, ref_opt, data)
        compare(f"{name} on {world} ranks", model.parameters(), opt, single.parameters(), ref_opt)
        if "target_sparsity" in options:  # the controller's scale is the one process's
            key = "lam" if cls_name == "RDA" else "c"
            mine, theirs = opt.param_groups[0][key], ref_opt.param_groups[0][key]
            assert abs(mine - theirs) <= RTOL * theirs, f"{name}: {key} {mine} vs {theirs}"
        lines.append(f"{name} matches")
    return lines


def placements(rank: int, world: int, backend: str) -> list[str]:
    """DTensors made by hand on a 1-D mesh: Shard(1) of a 2-D weight (element mode) and of conv weights (kernel
    and channel mode: channel mode's groups then span the shards), and a Replicate one, against the full tensors
    stepped in one process with the same gradients."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import sparse_rda

    mesh = init_device_mesh("cpu", (world,))
    lines = []
    cases = [("shard1-element", [(9, 11), (6,)], [Shard(1), Replicate()], "element"),
             ("shard1-kernel", [(4, 5, 3, 3)], [Shard(1)], "kernel"),
             ("shard1-channel", [(4, 5, 3, 3)], [Shard(1)], "channel"),
             ("shard0-channel", [(5, 3, 3, 3)], [Shard(0)], "channel"),
             ("shard1-block", [(9, 22), (7, 10)], [Shard(1), Replicate()], ("block", 4, 6)),
             ("shard0-block", [(22, 9)], [Shard(0)], ("block", 6, 4)),
             # on 3 ranks rows [0, 6), [6, 12), [12, 16): only ranks 0 and 1 hold parts of a straddling tile
             ("shard0-block-two-holders", [(16, 9)], [Shard(0)], ("block", 4, 3))]
    for name, shapes, places, granularity in cases:
        gen = torch.Generator().manual_seed(2)
        full_params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        mine = [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [place]))
                for p, place in zip(full_params, places)]
        lam = 0.3 if isinstance(granularity, tuple) else 2e-2  # (a tile dies later than its elements would)
        options = dict(lr=0.5, lam=lam, granularity=granularity, sparsify_1d=True, backend=backend)
        opt, ref_opt = sparse_rda.RDA(mine, **options), sparse_rda.RDA(full_params, **options)
        for _ in range(8):
            for p, q, place in zip(mine, full_params, places):
                q.grad = torch.randn(q.shape, generator=gen) * (1 + torch.arange(q.shape[0]).view(-1, *[1] * (q.dim() - 1)))
                p.grad = distribute_tensor(q.grad.clone(), mesh, [place])
            opt.step()
            ref_opt.step()
        compare(f"{name} on {world} ranks", mine, opt, full_params, ref_opt)
        lines.append(f"{name} matches")
    return lines


def ddp_matches(rank: int, world: int, backend: str) -> list[str]:
    """DDP: each rank holds whole parameters; the ranks stay identical and equal one process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sparse_rda

    lines = []
    for cls, options in ((sparse_rda.RDA, RDA_OPTIONS), (sparse_rda.GRDA, GRDA_OPTIONS)):
        model = DDP(make_model("mlp"))
        opt = cls(model.parameters(), backend=backend, **options)
        data = batches("mlp")
        train(model, opt, data, rank, world)
        single = make_model("mlp")
        ref_opt = cls(single.parameters(), backend=backend, **options)
        train(single, ref_opt, data)
        for p in model.parameters():
            others = [torch.empty_like(p) for _ in range(world)]
            dist.all_gather(others, p.detach())
            assert all(torch.equal(o, p) for o in others), "the ranks differ"
        compare(f"DDP {cls.__name__}", model.module.parameters(), opt, single.parameters(), ref_opt)
        lines.append(f"{cls.__name__} matches")
        del model  # (its reducer gone before the process group: gloo once aborted at exit otherwise)
        gc.collect()
    return lines


def dcp_save(rank: int, world: int, backend: str, runs: str, path: str) -> list[str]:
    """FSDP2 on ``world`` ranks, for each of ``runs`` (DCP_RUNS' names): 10 steps, a torch.distributed.checkpoint
    of the model and optimizer, 10 more steps; rank 0 saves the final gathered weights and state beside it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    for run in runs.split(","):
        model, opt = _fsdp_run(backend, run)
        data = batches("mlp")
        train(model, opt, data[:10], rank, world)
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=os.path.join(path, run))
        train(model, opt, data[10:], rank, world)
        final = _gathered(model, opt)
        if rank == 0:
            torch.save(final, os.path.join(path, run, "uninterrupted.pt"))
    return [f"{run} saved" for run in runs.split(",")]


def dcp_resume(rank: int, world: int, backend: str, runs: str, path: str) -> list[str]:
    """Loads dcp_save's checkpoints on ``world`` ranks (resharded), steps the last 10 steps, and compares with the
    uninterrupted runs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    for run in runs.split(","):
        model, opt = _fsdp_run(backend, run)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(state, checkpoint_id=os.path.join(path, run))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        train(model, opt, batches("mlp")[10:], rank, world)
        mine, theirs = _gathered(model, opt), torch.load(os.path.join(path, run, "uninterrupted.pt"))
        assert sorted(mine) == sorted(theirs), (sorted(mine), sorted(theirs))
        for key, value in theirs.items():
            scale = value.double().abs().max().clamp_min(1e-30)
            error = float((mine[key].double() - value.double()).abs().max() / scale)
            assert error <= RTOL, f"{run}: {key}: the resumed run is off by {error:.3g} of its max"
    return [f"{run} resumed" for run in runs.split(",")]


def _fsdp_run(backend: str, cls_name: str):
    from torch.distributed.fsdp import fully_shard

    import sparse_rda

    model = make_model("mlp")
    for layer in model:
        if list(layer.parameters()):
            fully_shard(layer)
    fully_shard(model)
    options = DCP_RUNS[cls_name]
    return model, getattr(sparse_rda, cls_name.split("-")[0])(model.parameters(), backend=backend, **options)


def _gathered(model, opt) -> dict[str, torch.Tensor]:
    """Weights, state and the controller's scale, whole (every rank must call it: full_tensor gathers)."""
    out = {}
    for i, p in enumerate(model.parameters()):
        out[f"{i}.weight"] = full(p.detach()).clone()
        for key, value in opt.state[p].items():
            out[f"{i}.{key}"] = full(value).clone().reshape(-1)
    scale = "lam" if "lam" in opt.param_groups[0] else "c"
    out[scale] = torch.tensor([opt.param_groups[0][scale]], dtype=torch.float64)
    return out


DCP_RUNS = {"RDA": {**RDA_OPTIONS, **TARGET}, "GRDA": {**GRDA_OPTIONS, **TARGET},
            "RDA-block": {**RDA_OPTIONS, "granularity": ("block", 4, 8), "lam": 2e-2}}

SCENARIOS = {"fsdp2": fsdp2_matches, "placements": placements, "ddp": ddp_matches, "dcp_save": dcp_save,
             "dcp_resume": dcp_resume}


def rank_main(rank: int, world: int, results: str, scenario: str, args: list[str]) -> None:
    torch.set_num_threads(1)  # ranks share the cores: more threads each only wait on each other (100x slower)
    # a rendezvous file in the run's own folder: no port to race other runs for
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(results, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        for line in SCENARIOS[scenario](rank, world, *args):
            report(results, rank, line)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    scenario, world, results, *rest = sys.argv[1:]
    mp.spawn(rank_main, args=(int(world), results, scenario, rest), nprocs=int(world))
