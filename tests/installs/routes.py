"""Every install route a user takes, each from a clean copy of the source tree into a fresh venv, then the smoke
test (tests/installs/smoke.py) from a directory outside the source:

  install     pip install --no-build-isolation SRC                        (torch preinstalled, as a user has it)
  editable    pip install --no-build-isolation -e SRC
  sdist       python -m build --sdist SRC, a wheel built from the unpacked sdist, pip install of that wheel
              into a venv with torch only (no compiler tools, no triton)
  isolation   pip install SRC with build isolation (no torch in the build env) and with old setuptools: each
              must stop with one message saying what to run, not a traceback
  no-triton   in the wheel's venv (torch, no triton): the installed package's tests from the unpacked sdist
              (NO_TRITON_TESTS), bench/'s tests, both examples' --quick runs and the optimizer-step benchmark's
  cuda-build  a wheel built from the sdist against a CUDA torch (TORCH_CUDA_SPEC, default torch==2.14.1, ~5 GB in
              its venv) with TORCH_CUDA_ARCH_LIST="8.0;9.0a" and the CUDA toolkit at CUDA_HOME (default
              /usr/local/cuda; skipped, saying so, without one): its extension must hold sm_80 and sm_90a code
              (cuobjdump), and it installs and passes the smoke test on a machine without a GPU

    python3 tests/installs/routes.py [--routes install,editable,...] [--work DIR]

Standard library only: run it with any Python 3.10+ that can create venvs. TORCH_SPEC (default torch==2.13.0)
is what each venv installs as "the user's torch". Prints a table of what each step took; exits non-zero at
the first failure, with that step's output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).resolve().parent / "smoke.py"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
BUILD_TOOLS = ["setuptools>=77", "ninja", "build"]  # what the README tells a user to have for a source build
# The sdist's tests run in the no-triton route: every module that imports a kernel or dispatch path, or whose
# fallback differs without triton. Left out (they ran in the main suite, on the same Python code): the README's
# quick start (both examples run here with --quick), the sparsity controller, the NaN/inf policy, the fuzz, torch's
# generic optimizer tests, the packaging and machine-load tests, and the Triton tests (all skipped here).
NO_TRITON_TESTS = ["test_dispatch.py", "test_rda.py", "test_grda.py", "test_block_rda.py", "test_sparse_linear.py",
                   "test_masked_matmul.py", "test_native_ops.py", "test_native_args.py", "test_bad_input.py",
                   "test_state_contract.py", "test_hand_computed.py", "test_properties.py", "test_pruning.py",
                   *(f"test_pruning_{method}.py" for method in ("gmp", "cyclical", "dynamic", "imp", "snip", "halo",
                                                                 "sparse_linear")),
                   "test_groups_and_report.py", "test_schedules.py", "test_conventions.py", "test_nm.py",
                   "test_nm_native.py", "test_pruning_nm.py", "test_semi_structured.py", "test_checkpoint.py",
                   "test_cpu_tiles.py", "test_csr_linear.py", "test_inference.py",
                   # FSDP2 in spawned ranks on the installed wheel (one case: the rest run from the checkout)
                   "test_distributed.py::test_fsdp2_trains_as_one_process[cpu-3]"]
TEST_TOOLS = ["pytest", "pytest-benchmark", "pytest-xdist", "hypothesis", "expecttest", "numpy", "tqdm",
              "matplotlib"]
ROUTES = ("install", "editable", "sdist", "isolation", "no-triton", "cuda-build")
TORCH_CUDA_SPEC = os.environ.get("TORCH_CUDA_SPEC", "torch==2.14.1")
CUDA_ARCHS = {"8.0": "sm_80", "9.0a": "sm_90a"}

timings: list[tuple[str, float]] = []


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def sh(what: str, cmd: list, cwd: Path, expect_failure: bool = False, env: dict | None = None) -> str:
    """Runs a step, records its time, returns its output; stops the whole run if it fails (or, with
    expect_failure, if it succeeds)."""
    start = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    timings.append((what, seconds))
    failed = out.returncode != 0
    print(f"  {what}: {'exit ' + str(out.returncode) if failed else 'ok'} ({seconds:.0f} s)", flush=True)
    if failed != expect_failure:
        sys.exit(f"routes: {what} {'succeeded, but must fail' if expect_failure else 'failed'}:\n{out.stdout}")
    return out.stdout


def clean_copy(dest: Path) -> Path:
    """The files a fresh clone of this working tree has: tracked and untracked, not ignored (no build output)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


class Venv:
    def __init__(self, path: Path, *packages: str):
        self.path = path
        sh(f"venv {path.name}", [sys.executable, "-m", "venv", path], cwd=path.parent)
        if packages:
            self.pip(f"pip install {' '.join(packages)} ({path.name})", "install", "-q", *packages)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def pip(self, what: str, *args, cwd: Path | None = None, expect_failure: bool = False) -> str:
        return sh(what, [self.python, "-m", "pip", *args], cwd or self.path, expect_failure)

    def run(self, what: str, *args, cwd: Path, env: dict | None = None) -> str:
        return sh(what, [self.python, *args], cwd, env=env)


def smoke(venv: Venv, outside: Path, *args: str) -> None:
    out = venv.run(f"smoke ({venv.path.name})", SMOKE, "--triton", "absent", *args, cwd=outside)
    print("    " + out.strip().splitlines()[-1])  # its verdict (torch may warn before it)


def unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    (tree,) = dest.iterdir()
    return tree


def cuda_build(work: Path, outside: Path) -> None:
    print(f"route cuda-build: a wheel from the sdist against {TORCH_CUDA_SPEC}, TORCH_CUDA_ARCH_LIST="
          f"{';'.join(CUDA_ARCHS)}", flush=True)
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    if not (cuda_home / "bin" / "nvcc").exists():
        print(f"    skipped: no CUDA toolkit (no nvcc under CUDA_HOME={cuda_home})", flush=True)
        return
    src, dist = clean_copy(work / "src-cuda"), work / "dist-cuda"
    venv = Venv(work / "venv-cuda", TORCH_CUDA_SPEC, *BUILD_TOOLS)
    venv.run("python -m build --sdist", "-m", "build", "--sdist", "--no-isolation", "--outdir", dist, src, cwd=src)
    (sdist,) = dist.glob("*.tar.gz")
    unpacked = unpack(sdist, work / "sdist-cuda")
    env = {**clean_env(), "CUDA_HOME": str(cuda_home), "TORCH_CUDA_ARCH_LIST": ";".join(CUDA_ARCHS)}
    venv.run("python -m build --wheel (CUDA, from the sdist)", "-m", "build", "--wheel", "--no-isolation",
             "--outdir", dist, unpacked, cwd=unpacked, env=env)
    (wheel,) = dist.glob("*.whl")
    venv.pip(f"pip install {wheel.name}", "install", "--no-deps", wheel)
    cuobjdump = next((venv.path / "lib").glob("python3*/site-packages/triton/backends/nvidia/bin/cuobjdump"), None)
    if cuobjdump is None:
        sys.exit("routes: cuda-build: no cuobjdump (it ships in the triton wheel that a CUDA torch pulls in)")
    (library,) = (venv.path / "lib").glob("python3*/site-packages/sparse_rda/_C*.so")
    listing = sh("cuobjdump --list-elf _C.so", [cuobjdump, "--list-elf", library], cwd=work)
    missing = [arch for arch in CUDA_ARCHS.values() if f".{arch}.cubin" not in listing]
    if missing:
        sys.exit(f"routes: cuda-build: the extension has no {missing} code; cuobjdump lists:\n{listing}")
    print(f"    the extension holds {', '.join(CUDA_ARCHS.values())} cubins", flush=True)
    out = venv.run(f"smoke ({venv.path.name})", SMOKE, "--triton", "present", "--cuda-kernels", cwd=outside)
    print("    " + out.strip().splitlines()[-1])
    shutil.rmtree(venv.path)  # 5 GB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of " + ", ".join(ROUTES))
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args()
    routes = args.routes.split(",")
    if unknown := set(routes) - set(ROUTES):
        sys.exit(f"--routes: unknown {sorted(unknown)}; choose from {', '.join(ROUTES)}")
    if "no-triton" in routes and "sdist" not in routes:
        sys.exit("--routes: no-triton runs in the sdist route's wheel venv; add sdist")
    work = args.work or Path(tempfile.mkdtemp(prefix="sparse_rda-routes-"))
    work.mkdir(parents=True, exist_ok=True)
    outside = work / "outside"  # an empty directory: nothing importable from the source tree
    outside.mkdir(exist_ok=True)
    total = time.perf_counter()
    try:
        if "install" in routes or "sdist" in routes:
            build_venv = Venv(work / "venv-build", TORCH_SPEC, *BUILD_TOOLS)
        if "install" in routes:
            print("route install: pip install --no-build-isolation SRC", flush=True)
            src = clean_copy(work / "src-install")
            build_venv.pip("pip install --no-build-isolation SRC", "install", "--no-build-isolation", src)
            smoke(build_venv, outside)
        if "editable" in routes:
            print("route editable: pip install --no-build-isolation -e SRC", flush=True)
            src = clean_copy(work / "src-editable")
            venv = Venv(work / "venv-editable", TORCH_SPEC, *BUILD_TOOLS)
            venv.pip("pip install --no-build-isolation -e SRC", "install", "--no-build-isolation", "-e", src)
            smoke(venv, outside, "--editable", src)
        if "sdist" in routes:
            print("route sdist: sdist, a wheel from the sdist, pip install of the wheel", flush=True)
            sdist_src, dist = clean_copy(work / "src-sdist"), work / "dist"
            build_venv.run("python -m build --sdist", "-m", "build", "--sdist", "--no-isolation", "--outdir", dist,
                           sdist_src, cwd=sdist_src)
            (sdist,) = dist.glob("*.tar.gz")
            unpacked = unpack(sdist, work / "sdist")
            build_venv.run("python -m build --wheel (from the sdist)", "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", dist, unpacked, cwd=unpacked)
            (wheel,) = dist.glob("*.whl")
            wheel_venv = Venv(work / "venv-wheel", TORCH_SPEC)
            wheel_venv.pip(f"pip install {wheel.name}", "install", wheel)
            smoke(wheel_venv, outside)
        if "isolation" in routes:
            print("route isolation: builds that cannot work say what to run", flush=True)
            src = clean_copy(work / "src-isolation")
            bare = Venv(work / "venv-bare", "setuptools<77")  # no torch
            for what, pip_args, advice in (
                ("pip install SRC (build isolation, no torch)", [], "--no-build-isolation"),
                ("pip install --no-build-isolation SRC (old setuptools)", ["--no-build-isolation"], "setuptools>=77"),
            ):
                out = bare.pip(what, "install", *pip_args, src, expect_failure=True)
                if advice not in out or "Traceback" in out:
                    sys.exit(f"routes: {what}: expected one message naming {advice!r} and no traceback:\n{out}")
        if "no-triton" in routes:
            print("route no-triton: the CPU tests and the examples in the wheel's venv (no triton)", flush=True)
            wheel_venv.pip("pip install the test tools", "install", "-q", *TEST_TOOLS)
            suites = (("pytest tests (the sdist's, NO_TRITON_TESTS)", unpacked,
                       [unpacked / "tests" / name for name in NO_TRITON_TESTS]),
                      ("pytest bench", sdist_src, [sdist_src / "bench"]))
            for what, tree, paths in suites:
                wheel_venv.run(what, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "auto",  # over the cores
                               "-c", tree / "pyproject.toml", *paths, cwd=outside)
            for example in ("fashion_mnist_demo.py", "char_transformer.py"):
                wheel_venv.run(f"{example} --quick", unpacked / "examples" / example, "--quick", cwd=outside)
            # the runner bench's tests do not call (the others' tests run theirs)
            wheel_venv.run("bench/optimizer_step.py --quick", sdist_src / "bench" / "optimizer_step.py", "--quick",
                           "--no-save", cwd=outside)
        if "cuda-build" in routes:
            cuda_build(work, outside)
    finally:
        print(f"\n{'step':<60} {'seconds':>8}")
        for what, seconds in timings:
            print(f"{what:<60} {seconds:>8.1f}")
        print(f"{'total':<60} {time.perf_counter() - total:>8.1f}")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
