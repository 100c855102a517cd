"""A small character-level transformer trained with block-sparse RDA on its MLP weights, next to the same model
trained dense.

Trains the same network twice (same seed, same initial weights, same batches, same number of steps):

* sparse: the MLP layers swapped for ``SparseLinear`` by ``sparse_rda.sparsify`` (same Parameters) and their
  weights trained by ``RDA(granularity=("block", 32, 32))`` (64 x 64 tiles for d >= 512) with the ``CosineRDA``
  schedule: the group prox zeroes whole tiles, and ``refresh_occupancy(model)`` after each step lets the masked
  matmul skip them. Attention, embeddings, head, biases and norms are trained by AdamW (``--optimizer rda``:
  by the same RDA, unpenalized; plain RDA is SGD with momentum, which trains a transformer slowly);
* dense: the same optimizers with ``lam=0`` (no penalty: RDA is then SGD with momentum in RDA's units), so the
  only difference is the penalty; or AdamW on everything with ``--dense-optimizer adamw``.

Then prints train/val loss, the sparsity of the MLP weights (dead tiles and zero elements), step time vs dense,
the sparse model's tiles per layer, and a text sample from each model.

    python examples/char_transformer.py --quick             # smoke run: < 1 minute on a 2-core CPU
    python examples/char_transformer.py                     # 4 layers, d=128, context 128: a few minutes on CPU
    python examples/char_transformer.py --device cuda       # 6 layers, d=512, context 256, bf16 autocast

On CPU ``masked_linear`` is the dense ``F.linear`` fallback (the Triton kernels need a GPU, or TRITON_INTERPRET=1,
which is far too slow to train with): the sparse model computes exactly the same, but its step is not faster
(both runs use the same optimizers, block RDA on the reference backend; the sparse one also refreshes its tile
maps). On a GPU the Triton kernels skip the dead tiles in the forward pass and in dX (dW stays dense: RDA needs it
to regrow tiles), and block RDA runs on its Triton step.

Measured here (2-core CPU, one thread): ``--quick`` ~30 s, 88% of the MLP tiles dead, val loss 1.69 vs 1.73 dense;
the default ~3 minutes, 91% dead, val loss 1.14 vs 1.09 dense (whole MLPs of the upper layers die: this small
text needs little MLP capacity). The GPU config's lam is untuned (no GPU was at hand): adjust ``--lam``.

Data: ``examples/data/tiny_text.txt`` (~150 KB of small stories generated from a tiny grammar, CC0) or ``--text``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparse_rda
from machine_load import LoadMonitor  # examples/machine_load.py, beside this script
from sparse_rda.nn import SparseLinear, refresh_occupancy, sparsify

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is only for the progress bar
    tqdm = None

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "tiny_text.txt"

# lam (the block penalty) was tuned on this text for each config (--optimizer hybrid, lr 3): the thresholds grow
# with the schedule's length, so another --steps or --lr needs another lam (see --lam)
CONFIGS = {
    "quick": dict(layers=2, d=128, heads=4, context=64, batch=16, steps=300, lam=5e-5),
    "cpu": dict(layers=4, d=128, heads=4, context=128, batch=16, steps=500, lam=3e-5),
    "cuda": dict(layers=6, d=512, heads=8, context=256, batch=64, steps=3000, lam=3e-5),  # lam: untuned
}


# ----------------------------------------------------------------------------------------------------------
# Data


class CharData:
    """The text as int64 character ids, a 90/10 train/val split, and random context windows."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        n = int(0.9 * len(ids))
        self.train, self.val = ids[:n], ids[n:]

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def batch(self, split: str, batch: int, context: int, gen: torch.Generator, device):
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - context - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + context] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + context] for s in starts])
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


# ----------------------------------------------------------------------------------------------------------
# Model


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, layers: int, d: int, heads: int, context: int):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        for name, p in self.named_parameters():  # GPT-2 style init
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def mlp_weights(model: CharTransformer) -> list[tuple[str, nn.Parameter]]:
    return [(f"blocks.{i}.mlp.{n}", getattr(b.mlp, n).weight)
            for i, b in enumerate(model.blocks) for n in ("fc1", "fc2")]


def tile_block(d: int) -> tuple[int, int]:
    return (64, 64) if d >= 512 else (32, 32)


# ----------------------------------------------------------------------------------------------------------
# Optimizers


def split_params(model: CharTransformer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(MLP weights, everything else)."""
    mlp = {id(p) for _, p in mlp_weights(model)}
    return ([p for p in model.parameters() if id(p) in mlp], [p for p in model.parameters() if id(p) not in mlp])


def make_optimizers(kind: str, model, lam: float, block, args, total_steps: int):
    """[(optimizer, schedule)] for one run.

    - "hybrid": the MLP weights by RDA (block granularity, penalty ``lam``; lam=0 is plain RDA, i.e. SGD with
      momentum in RDA's units), everything else (attention, embeddings, head, biases, norms) by AdamW.
    - "rda": everything by RDA; only the MLP weights are penalized.
    - "adamw": everything by AdamW (a dense baseline only).
    """
    mlp, others = split_params(model)

    def adamw(params):
        opt = torch.optim.AdamW(params, lr=args.adamw_lr, weight_decay=0.1 if kind == "adamw" else 0.0,
                                betas=(0.9, 0.95))
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

    if kind == "adamw":
        return [adamw(model.parameters())]
    opts = dict(lr=args.lr, momentum_time=9.5, weight_decay=args.weight_decay)
    groups = [dict(params=mlp, lam=lam, granularity=("block", *block), **opts)]
    if kind == "rda":
        groups.append(dict(params=others, penalize=False, **opts))
    rda = sparse_rda.RDA(groups)
    out = [(rda, sparse_rda.schedules.CosineRDA(rda, total_steps=total_steps))]
    if kind == "hybrid":
        out.append(adamw(others))
    return out


# ----------------------------------------------------------------------------------------------------------
# Training


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, data: CharData, cfg: dict, device, batches: int, seed: int) -> dict:
    """Mean loss over the same fixed random windows of each split (independent of the training batches)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(seed + 7)
        losses = []
        for _ in range(batches):
            x, y = data.batch(split, cfg["batch"], cfg["context"], gen, device)
            with autocast(device):
                logits = model(x)
            losses.append(F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1)).item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def tiles(model) -> tuple[int, int]:
    """(live, total) tiles over the SparseLinear layers."""
    live = total = 0
    for m in model.modules():
        if isinstance(m, SparseLinear):
            live += int(m.occupancy.sum())
            total += m.occupancy.numel()
    return live, total


def train(name: str, model, data: CharData, cfg: dict, args, device, sparse: bool, optimizer: str):
    steps = cfg["steps"]
    block = tile_block(cfg["d"])
    if sparse:
        for b in model.blocks:
            sparsify(b.mlp, block=block)  # SparseLinear holding the same Parameters
    optimizers = make_optimizers(optimizer, model, cfg["lam"] if sparse else 0.0, block, args, steps)
    gen = torch.Generator().manual_seed(args.seed + 1)  # same batches for both runs
    step_ms, history = [], []
    bar = range(steps)
    if tqdm is not None:
        bar = tqdm(bar, desc=name, dynamic_ncols=True, mininterval=0.5, file=sys.stdout)
    model.train()
    load = LoadMonitor().start()
    for step in bar:
        x, y = data.batch("train", cfg["batch"], cfg["context"], gen, device)
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for opt, sched in optimizers:
            opt.step()
            sched.step()
        if sparse:
            # the masked matmul skips the tiles this step zeroed. RDA in the layers' own tiles already wrote their
            # shared maps in its step; the refresh also covers other optimizers and tile sizes (one pass over W)
            refresh_occupancy(model)
        sync(device)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if step % 25 == 0 or step == steps - 1:
            postfix = {"loss": f"{loss.item():.3f}"}
            if sparse:
                live, total = tiles(model)
                postfix["dead tiles"] = f"{1 - live / total:.1%}"
            history.append((step, loss.item()))
            if tqdm is not None:
                bar.set_postfix(postfix, refresh=False)
        if args.eval_every and step and step % args.eval_every == 0:
            ev = evaluate(model, data, cfg, device, args.eval_batches, args.seed)
            msg = f"{name} step {step}: train {ev['train']:.3f}, val {ev['val']:.3f}"
            if sparse:
                live, total = tiles(model)
                msg += f", dead tiles {1 - live / total:.1%}"
            (tqdm.write if tqdm is not None else print)(msg)
    load.stop()
    if tqdm is not None:
        bar.close()
    ev = evaluate(model, data, cfg, device, args.eval_batches, args.seed)
    warm = step_ms[min(10, len(step_ms) - 1):]  # leave out the first steps (allocation, kernel compiles)
    return dict(name=name, model=model, eval=ev, ms=statistics.median(warm), ms_mean=sum(warm) / len(warm),
                seconds=sum(step_ms) / 1e3, history=history, optimizer=optimizer, load=load)


@torch.no_grad()
def sample(model, data: CharData, device, prompt: str, length: int, seed: int, temperature: float = 0.8) -> str:
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([[data.stoi.get(c, 0) for c in prompt]], device=device)
    for _ in range(length):
        with autocast(device):
            logits = model(ids[:, -model.context :])[0, -1].float()
        nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=gen)
        ids = torch.cat([ids, nxt[None]], dim=1)
    return data.decode(ids[0].tolist())


def mlp_sparsity(model) -> tuple[float, float]:
    """(fraction of dead tiles, fraction of zero elements) over the MLP weights."""
    zeros = numel = 0
    for _, w in mlp_weights(model):
        zeros += int((w == 0).sum())
        numel += w.numel()
    live, total = tiles(model)
    return (1 - live / total if total else 0.0), zeros / numel


# ----------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; cuda picks the larger config)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 layers, context 64, 300 steps (< 1 minute on CPU)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training text (default: %(default)s)")
    for key in ("layers", "d", "heads", "context", "batch", "steps"):
        p.add_argument(f"--{key}", type=int, help=f"override the config's {key}")
    p.add_argument("--lam", type=float, help="block penalty strength of the sparse run (default per config)")
    p.add_argument("--optimizer", choices=("hybrid", "rda"), default="hybrid",
                   help="hybrid: RDA on the MLP weights, AdamW on the rest; rda: RDA on everything "
                   "(default %(default)s)")
    p.add_argument("--lr", type=float, default=3.0,
                   help="RDA lr (1.0 ~ SGD lr 0.1 with momentum 0.9) (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="RDA weight decay (default %(default)s)")
    p.add_argument("--dense-optimizer", choices=("same", "adamw"), default="same",
                   help="the dense baseline: the sparse run's optimizer with lam=0, or AdamW on everything")
    p.add_argument("--adamw-lr", type=float, default=3e-3, help="AdamW lr (default %(default)s)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: only at the end)")
    p.add_argument("--eval-batches", type=int, default=10, help="batches per split for the loss (default %(default)s)")
    p.add_argument("--skip-dense", action="store_true", help="train only the sparse model (for lam sweeps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu" and hasattr(os, "getloadavg") and torch.get_num_threads() > 1:
        # other processes on the cores: a multi-threaded op then waits a scheduler tick at every barrier, which
        # made steps 20-50x slower on a loaded 2-core box; one thread is steadier
        load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if load > 0.5 * cpus:
            print(f"note: load average {load:.1f} on {cpus} CPUs: using 1 thread (--threads N to choose)")
            torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    cfg = dict(CONFIGS["quick" if args.quick else ("cuda" if device.type == "cuda" else "cpu")])
    for key in ("layers", "d", "heads", "context", "batch", "steps", "lam"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if cfg["d"] % cfg["heads"]:
        sys.exit(f"--d {cfg['d']} must be a multiple of --heads {cfg['heads']}")
    text = args.text.read_text(encoding="utf-8")
    data = CharData(text)
    block = tile_block(cfg["d"])
    matmul = {"triton": "Triton masked matmul",
              "cpu-tiles": "live tiles in ATen matmuls (sparse_rda.cpu_tiles)",
              "dense": "dense F.linear fallback (same math, no skipping)"}[sparse_rda.nn.matmul_kernel(device)]
    print(f"{args.text.name}: {len(text):,} chars, vocab {data.vocab} | {cfg['layers']} layers, d={cfg['d']}, "
          f"{cfg['heads']} heads, context {cfg['context']}, batch {cfg['batch']}, {cfg['steps']} steps | "
          f"device {device} ({torch.get_num_threads()} threads) | sparse MLP: RDA block {block[0]}x{block[1]}, "
          f"lam={cfg['lam']:g}; matmul: {matmul}")

    results = []
    dense_opt = args.optimizer if args.dense_optimizer == "same" else "adamw"
    runs = [] if args.skip_dense else [("dense", False, dense_opt)]
    runs.append(("sparse", True, args.optimizer))
    for name, sparse, optimizer in runs:
        torch.manual_seed(args.seed)  # same initial weights for both runs
        model = CharTransformer(data.vocab, cfg["layers"], cfg["d"], cfg["heads"], cfg["context"]).to(device)
        label = f"{name} ({'AdamW' if optimizer == 'adamw' else 'lam=0' if not sparse else 'block RDA'})"
        results.append(train(label, model, data, cfg, args, device, sparse, optimizer))
        r = results[-1]
        print(f"{label}: train loss {r['eval']['train']:.3f}, val loss {r['eval']['val']:.3f}, "
              f"{r['ms']:.1f} ms/step (median), {r['seconds']:.1f} s ({r['load'].describe()})")

    print(f"\n{'run':<22} {'train loss':>10} {'val loss':>9} {'MLP dead tiles':>15} {'MLP zero weights':>17} "
          f"{'all zero':>9} {'ms/step':>8} {'time vs dense':>13}")
    busy = [r for r in results if r["load"].loaded]
    dense_ms = results[0]["ms"] if not args.skip_dense and not busy else None
    for r in results:
        dead, zero = mlp_sparsity(r["model"])
        total = sparse_rda.sparsity(r["model"]).total
        has_tiles = any(isinstance(m, SparseLinear) for m in r["model"].modules())
        vs = f"{r['ms'] / dense_ms:.2f}x" if dense_ms else "—"
        print(f"{r['name']:<22} {r['eval']['train']:>10.3f} {r['eval']['val']:>9.3f} "
              f"{(f'{dead:.1%}' if has_tiles else '—'):>15} {zero:>17.1%} {total:>9.1%} {r['ms']:>8.1f} {vs:>13}")
    if busy:
        print("warning: the step times are not comparable: " + "; ".join(
            f"while {r['name']} trained, {r['load'].describe()}" for r in busy) + ". Rerun on an idle machine.")
    if device.type != "cuda":
        print("(step time on CPU: the masked matmul is the dense F.linear fallback here, so the sparse step cannot be "
              "faster; " + ("both runs use the same optimizers, so the difference is the occupancy refresh and noise)"
                            if args.dense_optimizer == "same" else "the runs use different optimizers)"))
    elif any(isinstance(m, SparseLinear) for m in results[-1]["model"].modules()):
        print("(step time on GPU: the masked matmul skips dead tiles in the forward pass and in dX; dW stays dense. "
              "Block RDA runs on the backend sparse_rda picks for it, the reference one where no kernel exists)")

    sparse_model = results[-1]["model"]
    print("\nsparse model, MLP tiles per layer:")
    for name, m in sparse_model.named_modules():
        if isinstance(m, SparseLinear):
            live, total = int(m.occupancy.sum()), m.occupancy.numel()
            zeros = int((m.weight == 0).sum())
            print(f"  {name:<16} {tuple(m.weight.shape)!s:>12}  live tiles {live:>5}/{total:<5} "
                  f"({1 - live / total:.1%} dead), zero weights {zeros / m.weight.numel():.1%}")

    prompt = "Once upon a time"
    for r in results:
        print(f"\n--- sample from the {r['name']} model ---")
        print(sample(r["model"], data, device, prompt, 200 if not args.quick else 120, args.seed))
    return results


if __name__ == "__main__":
    main()
