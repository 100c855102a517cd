#!/usr/bin/env python
"""From sparse training to a smaller, faster model: trained models' checkpoints with and without their zeros, and
their forward latency before and after ``sparse_rda.to_inference``, side by side.

    python bench/sparse_models.py            # LeNet-300-100 at 96.8% and the char transformer (~10 min, 1 core)
    python bench/sparse_models.py --quick    # smoke run: 1 epoch / 20 steps, tiny transformer

Models (trained here with the accuracy benchmarks' own runs, seed 0):
- ``lenet-300-100``: bench/accuracy.py's LeNet-300-100 and RDA run (20 epochs, target_sparsity 0.968, the demo's
  sparsity), Fashion-MNIST;
- ``transformer-rda-95`` / ``transformer-rda-block-95`` / ``transformer-rda@2:4``: bench/accuracy_transformer.py's
  runs of the char transformer (MLP weights at 95% element / 95% in 64x64 blocks / 2:4; the rest dense).

Sizes: ``torch.save`` of the state dict, ``save_sparse`` (exact), ``save_sparse(values_dtype=torch.bfloat16)``;
each file is loaded back into a fresh model and its outputs compared. Latency (median, CPU): the model's forward
under ``torch.no_grad`` as trained (dense F.linear) and after ``to_inference(model, batch_size=rows)``, at the
batch sizes given (LeNet: inputs of batch 1 and 128; the transformer: 1 and 16 sequences of 128 characters, so
its linear layers see, and to_inference is told, 128 and 2048 rows).
Results: bench/results/sparse_models-cpu-<cpu>[-quick].{json,md}.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

import accuracy
import accuracy_training
import accuracy_transformer as at
import common
import sparse_rda
from timing import time_adaptive

ct = at.ct  # examples/char_transformer.py

LENET_TARGET = 0.968


def train_lenet(args):
    quick = args.quick
    data = accuracy.fashion_mnist.load(args.data)
    if quick:
        data = (data[0][:2000], data[1][:2000], data[2][:1000], data[3][:1000])
    with tqdm(total=0, leave=False, dynamic_ncols=True, mininterval=1.0) as bar:
        model = accuracy_training.train_model("lenet", "rda", LENET_TARGET, 0, 1 if quick else 20, data, bar)[0]
    model.eval()
    return model, lambda batch: data[2][:batch], lambda: accuracy_training.MODELS["lenet"][0]()


def train_transformer(name: str, args):
    quick = args.quick
    text, _ = at.load_corpus(args.text)
    cfg = dict(at.CONFIG, **{k: v for k, v in at.QUICK.items() if k != "text_bytes"}) if quick else dict(at.CONFIG)
    data = ct.CharData(text[: at.QUICK["text_bytes"]] if quick else text)
    model = at.train_model(name, 0, data, cfg)[0]
    model.eval()
    gen = torch.Generator().manual_seed(0)

    def inputs(batch):
        return data.batch("val", batch, cfg["context"], gen, "cpu")[0]

    return model, inputs, lambda: ct.CharTransformer(data.vocab, cfg["layers"], cfg["d"], cfg["heads"],
                                                     cfg["context"])


MODELS = {"lenet-300-100": (train_lenet, (1, 128)),
          **{f"transformer-{run}": (lambda args, run=run: train_transformer(run, args), (1, 16))
             for run in ("rda-95", "rda-block-95", "rda@2:4")}}


def sizes(model, fresh, x) -> dict:
    """Checkpoint bytes in each form, each loaded back into a fresh model and its output compared."""
    with torch.no_grad():
        want = model(x)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp) / "dense.pt"
        torch.save(model.state_dict(), dense_path)
        out["torch_save_bytes"] = dense_path.stat().st_size
        for key, kw in (("sparse_bytes", {}), ("sparse_bf16_bytes", {"values_dtype": torch.bfloat16})):
            path = Path(tmp) / f"{key}.safetensors"
            sparse_rda.save_sparse(model, path, **kw)
            out[key] = os.path.getsize(path)
            loaded = fresh()
            sparse_rda.load_sparse(path, loaded)
            loaded.eval()
            with torch.no_grad():
                got = loaded(x)
            exact = torch.equal(got, want)
            if not kw and not exact:
                raise AssertionError("save_sparse -> load_sparse changed the model's output")
            out[key.replace("bytes", "max_abs_diff")] = float((got - want).abs().max())
    return out


def latencies(model, inputs, batches, quick) -> dict:
    out = {}
    for batch in batches:
        x = inputs(batch)
        with torch.no_grad():
            dense_ms = time_adaptive(lambda: model(x), torch.device("cpu"), quick)["ms"]
            converted = copy.deepcopy(model)
            # to_inference's batch_size is the rows each linear layer sees: a float input's leading dimensions,
            # every token of a [batch, sequence] one
            rows = x.numel() // x.shape[-1] if x.is_floating_point() else x.numel()
            report = sparse_rda.to_inference(converted, batch_size=rows)
            sparse_ms = time_adaptive(lambda: converted(x), torch.device("cpu"), quick)["ms"]
            diff = float((converted(x).float() - model(x).float()).abs().max())
        formats = sorted({v.split(":")[0] for v in report.values()})
        out[str(batch)] = dict(dense_ms=dense_ms, inference_ms=sparse_ms, speedup=dense_ms / sparse_ms,
                               formats=formats, max_abs_diff=diff, report=report)
    return out


def markdown(results: dict) -> str:
    out = common.report_header("Trained sparse models: checkpoint size and inference latency", results["machine"])
    out += [f"- command: `{results['command']}`; threads {results['threads']}; latency: median forward under "
            "torch.no_grad, dense vs after to_inference(model, batch_size)", "",
            "| model | weights zero | torch.save | save_sparse (exact) | with bf16 values | batch | dense ms | "
            "to_inference ms | speedup | formats |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for name, r in results["models"].items():
        for i, (batch, lat) in enumerate(r["latency"].items()):
            first = i == 0
            cells = [name if first else "", f"{r['sparsity']:.1%}" if first else "",
                     f"{r['torch_save_bytes'] / 1024:.0f} KiB" if first else "",
                     f"{r['sparse_bytes'] / 1024:.0f} KiB ({r['torch_save_bytes'] / r['sparse_bytes']:.1f}x)"
                     if first else "",
                     f"{r['sparse_bf16_bytes'] / 1024:.0f} KiB ({r['torch_save_bytes'] / r['sparse_bf16_bytes']:.1f}x)"
                     if first else "",
                     batch, f"{lat['dense_ms']:.3f}", f"{lat['inference_ms']:.3f}", f"{lat['speedup']:.2f}x",
                     ", ".join(lat["formats"])]
            out.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--models", help=f"comma-separated from {', '.join(MODELS)} (default: all)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=accuracy.default_data_dir(), help="Fashion-MNIST IDX folder")
    ap.add_argument("--text", type=Path, help="the transformer's corpus (default: the KJV, as accuracy_transformer)")
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    names = common.csv(args.models) if args.models else list(MODELS)
    if any(n not in MODELS for n in names):
        sys.exit(f"--models: choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    machine = common.machine_info(torch.device("cpu"))
    results = dict(machine=machine, command=common.command_line("sparse_models.py", argv), threads=args.threads,
                   models={})
    for name in names:
        train, batches = MODELS[name]
        model, inputs, fresh = train(args)
        sparsity, _ = accuracy_training.weight_sparsity(model)
        row = dict(sparsity=sparsity, **sizes(model, fresh, inputs(batches[0])),
                   latency=latencies(model, inputs, batches, args.quick))
        results["models"][name] = row
        print(f"{name}: {sparsity:.1%} zeros; torch.save {row['torch_save_bytes']} B, save_sparse "
              f"{row['sparse_bytes']} B; " + "; ".join(f"batch {b}: {v['dense_ms']:.3f} -> {v['inference_ms']:.3f} ms"
                                                      for b, v in row["latency"].items()), flush=True)
    common.note_load_end(machine)
    text = markdown(results)
    print(text)
    if not args.no_save:
        common.save_report(args.out, "sparse_models", torch.device("cpu"), machine, "-quick" if args.quick else "",
                           results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
