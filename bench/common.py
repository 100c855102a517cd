"""What every bench runner shares: machine info, the report header, result files, and the common command-line
options. Runners import it as ``import common`` (``python bench/x.py`` puts bench/ first on sys.path, and so does
pytest for the tests in bench/)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import sparse_rda

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ----------------------------------------------------------------------------------------------------------
# Machine info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_id() -> str | None:
    """Vendor, family, model and stepping from /proc/cpuinfo (names the part when "model name" is generic)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return None
    if "cpu family" not in fields:
        return None
    return (f"{fields.get('vendor_id', '?')} family {fields['cpu family']} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16") if f in have]
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (containers, taskset)
    except AttributeError:  # not on every OS
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def note_load_end(machine: dict) -> None:
    """The load average at the end of a run, next to the one at its start: was the machine busy meanwhile?"""
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = load_average()


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except Exception:
        return None


def machine_info(device: torch.device) -> dict:
    try:
        import triton  # optional: the CPU routes run without it

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    info = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        device=device.type,
        cpu=cpu_model(),
        cpu_id=cpu_id(),
        cpu_flags=cpu_flags(),
        logical_cpus=os.cpu_count(),
        usable_cpus=usable_cpus(),
        torch_threads=torch.get_num_threads(),
        load_average=load_average(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        triton=triton_version,
        sparse_rda=sparse_rda.__version__,
        backends=sparse_rda.backends(),
        git=git_revision(),
    )
    try:
        info["auto_backend"] = sparse_rda.dispatch.resolve("auto", device)
    except Exception:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / 2**30, 1),
                    gpu_capability=f"{prop.major}.{prop.minor}", gpu_sms=prop.multi_processor_count)
    return info


# ----------------------------------------------------------------------------------------------------------
# Reports and result files


def report_header(title: str, m: dict) -> list[str]:
    """The first lines of every runner's markdown report: what ran where, with which versions."""
    where = f"GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, sm {m['gpu_capability']}), " if m.get("gpu") else ""
    flags = f"; flags {', '.join(m['cpu_flags']) or 'n/a'}" if "cpu_flags" in m else ""
    backends = f" (backends {', '.join(m['backends'])}; auto -> {m.get('auto_backend')})" if "backends" in m else ""
    return [
        f"# {title}: {m['device']}, {m.get('gpu') or m['cpu']}",
        "",
        f"- date: {m['date']}; git {m['git']}",
        f"- machine: {where}CPU {m['cpu']} [{m.get('cpu_id')}] ({m['usable_cpus']} usable of {m['logical_cpus']} "
        f"logical CPUs, torch threads {m['torch_threads']}{flags}; load average {m.get('load_average')} at start, "
        f"{m.get('load_average_end')} at end)",
        f"- python {m['python']}, torch {m['torch']} (CUDA {m['torch_cuda']}), triton {m['triton']}, "
        f"sparse_rda {m['sparse_rda']}{backends}",
    ]


def fmt(x, spec: str, suffix: str = "") -> str:
    """A table cell: the value in ``spec``, or a dash for a missing one."""
    return "—" if x is None else f"{x:{spec}}{suffix}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def error_text(e: BaseException, limit: int = 200) -> str:
    """An exception's type and the first line of its message, cut to ``limit`` characters (for a table cell)."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def command_line(script: str, argv) -> str:
    """The command as a user would retype it, for the report (``argv`` None: this process's own arguments)."""
    return f"python bench/{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: an interruption leaves the old file or the new one


def save_report(out: str | Path, kind: str, device: torch.device, machine: dict, suffix: str, report: dict,
                markdown: str) -> None:
    """Writes <out>/<kind>-<device>-<gpu or cpu name><suffix>.{json,md}: the naming every timing runner shares."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{device.type}-{slug(machine.get('gpu') or machine['cpu'])}{suffix}"
    write_json(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(markdown)
    print(f"\nwrote {out / stem}.json and .md")


# ----------------------------------------------------------------------------------------------------------
# Command line


def parser(doc: str) -> argparse.ArgumentParser:
    """A runner's parser: its docstring's first paragraph as the description, line breaks kept."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)


def csv(text: str, convert=str) -> list:
    """A comma-separated option's values, blanks dropped."""
    return [convert(x.strip()) for x in text.split(",") if x.strip()]


def add_runner_args(ap: argparse.ArgumentParser) -> None:
    """The options every timing runner shares: device, CPU threads, timer, where results go."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-triton-timer", action="store_true", help="CUDA: time with CUDA events, not do_bench")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default: bench/results)")
    ap.add_argument("--no-save", action="store_true", help="print only")


def runner_device(args: argparse.Namespace) -> torch.device:
    """The device the runner times on (exits with a message if it cannot), with --threads applied."""
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"--device {args.device}: no CUDA device is available")
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device
