"""Block-sparse RDA under FSDP2: char_transformer.py's character transformer, sharded with ``fully_shard`` (each
block, then the model), its MLP weights trained by ``RDA(granularity=("block", 32, 32))`` with the CosineRDA
schedule and everything else by AdamW, data-parallel (each rank on its own batches).

    torchrun --nproc-per-node 2 examples/fsdp_train.py --quick     # gloo on CPU: ~30 s on 2 cores
    torchrun --nproc-per-node 2 examples/fsdp_train.py             # ~2 minutes on 2 cores
    torchrun --nproc-per-node 8 examples/fsdp_train.py --device cuda   # NCCL, one GPU per rank

Each rank steps its shards of the weights and of RDA's state; the reweighting's max, the tile sums of tiles
that straddle shard boundaries and the tile maps cross the ranks (sparse_rda/sharded.py, sharded_tiles.py).
Rank 0 prints the loss and the sparsity of the MLP weights as it goes, and at the end the val loss, the dead
tiles per layer and the time per step. Measured (2026-12-02, 2-vCPU AMD EPYC, torch 2.13.0+cpu, gloo): ``--quick``
26 s, 245 of 256 MLP tiles dead (95.7%), val loss 1.605, 68 ms per step; the default config 123 s, 510 of 512
dead, val loss 1.052, 229 ms per step; the same numbers on every run.

The tile maps are the optimizer's (``optimizer.state[w]["occupancy"]``, whole on every rank): under FSDP2 the
layers are plain ``nn.Linear`` (a ``SparseLinear``'s own map is not linked to a sharded weight).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_rda  # noqa: E402
from char_transformer import CONFIGS, DEFAULT_TEXT, CharData, CharTransformer, mlp_weights  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    p.add_argument("--quick", action="store_true", help="2 layers, 300 steps: a smoke run")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--steps", type=int, help="override the config's steps")
    p.add_argument("--lam", type=float, help="block penalty strength (default per config)")
    p.add_argument("--lr", type=float, default=3.0, help="RDA lr (default %(default)s)")
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def dead_tiles(opt, weights) -> tuple[int, int]:
    """(dead tiles, tiles) over the MLP weights, from the optimizer's tile maps (the same on every rank)."""
    maps = [sparse_rda.sharded.local(opt.state[w]["occupancy"]) for w in weights if "occupancy" in opt.state[w]]
    return sum(int((~m).sum()) for m in maps), sum(m.numel() for m in maps)


def mean_over_ranks(value: float, device) -> float:
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def main(argv=None):
    args = parse_args(argv)
    # torch warns that the model returns a view (an in-place op on it would skip FSDP2's hook); none is done here
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu":  # ranks share the cores: more threads each only wait on each other
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = dict(CONFIGS["quick" if args.quick else "cuda" if device.type == "cuda" else "cpu"])
    cfg["steps"] = args.steps or cfg["steps"]
    lam = cfg["lam"] if args.lam is None else args.lam
    data = CharData(args.text.read_text())

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = CharTransformer(data.vocab, cfg["layers"], cfg["d"], cfg["heads"], cfg["context"]).to(device)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    mlp = [w for _, w in mlp_weights(model)]  # (the sharded Parameters, after fully_shard)
    mlp_ids = {id(w) for w in mlp}
    others = [p for p in model.parameters() if id(p) not in mlp_ids]
    rda = sparse_rda.RDA(mlp, lr=args.lr, lam=lam, momentum_time=9.5, granularity=("block", 32, 32))
    adamw = torch.optim.AdamW(others, lr=args.adamw_lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedules = [sparse_rda.schedules.CosineRDA(rda, total_steps=cfg["steps"]),
                 torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=cfg["steps"])]
    if rank == 0:
        print(f"FSDP2 on {world} ranks ({device.type}, {dist.get_backend()}): {cfg['layers']} layers, d={cfg['d']}, "
              f"{cfg['steps']} steps, batch {cfg['batch']} per rank, block RDA lam={lam:g} on the MLP weights",
              flush=True)

    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own batches
    step_times = []
    for step in range(1, cfg["steps"] + 1):
        x, y = data.batch("train", cfg["batch"], cfg["context"], gen, device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        for opt in (rda, adamw):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        rda.step()
        adamw.step()
        for schedule in schedules:
            schedule.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - start)
        if step % args.log_every == 0 or step == cfg["steps"]:
            report = sparse_rda.sparsity(model, rda)  # (a collective: every rank calls it)
            train_loss = mean_over_ranks(float(loss.detach()), device)
            dead, tiles = dead_tiles(rda, mlp)
            if rank == 0:
                print(f"step {step:5d}  loss {train_loss:.3f}  MLP zeros {zero_fraction(report, model):.1%}  "
                      f"dead tiles {dead}/{tiles}", flush=True)

    model.eval()
    with torch.no_grad():
        val_gen = torch.Generator().manual_seed(12345 + rank)
        losses = [float(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
                  for x, y in (data.batch("val", cfg["batch"], cfg["context"], val_gen, device) for _ in range(10))]
    val = mean_over_ranks(sum(losses) / len(losses), device)
    dead, tiles = dead_tiles(rda, mlp)
    median_ms = 1e3 * sorted(step_times[10:] or step_times)[len(step_times[10:] or step_times) // 2]
    if rank == 0:
        print(f"val loss {val:.3f}; MLP weights: {dead}/{tiles} tiles dead ({dead / tiles:.1%}); "
              f"median step {median_ms:.1f} ms on {world} ranks")
        for (name, w) in mlp_weights(model):
            m = sparse_rda.sharded.local(rda.state[w]["occupancy"])
            print(f"  {name:<16} {tuple(w.shape)}: {int(m.sum())}/{m.numel()} tiles live")
    dist.barrier()  # (every rank done before the group goes)
    dist.destroy_process_group()


def zero_fraction(report, model) -> float:
    """The zeros of the MLP weights, from a sparsity report."""
    names = {f"{name}.weight" for name, _ in mlp_weights(model)}
    rows = [r for r in report.tensors if r.name in names]
    return sum(r.zeros for r in rows) / sum(r.numel for r in rows)


if __name__ == "__main__":
    main()
