"""Packaging, checked on the artifacts: the sdist carries every file the build reads, the wheel built from it
every module, and a build without torch stops with advice. (tests/installs/routes.py installs each route into
a fresh venv; these are the fast checks of the same promises.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from installs.routes import clean_copy

ROOT = Path(__file__).resolve().parents[1]
# these compare the packaging with the source tree it comes from: a git checkout (not, say, an unpacked sdist)
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout the sdist is made from")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def setup_module_constants():
    """setup.py imported as a module (its setup() call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("sparse_rda_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_includes(sources: list[str]) -> set[str]:
    """The sources and every header they include with quotes, transitively (resolved as the compiler does,
    relative to the including file; every #if branch counted, so the set can only be too large)."""
    seen, todo = set(), [ROOT / s for s in sources]
    while todo:
        path = todo.pop().resolve()
        name = path.relative_to(ROOT).as_posix()
        if name in seen:
            continue
        assert path.is_file(), f"{name} is read by the build but does not exist"
        seen.add(name)
        todo += [path.parent / header for header in INCLUDE.findall(path.read_text())]
    return seen


def build_inputs() -> set[str]:
    """What setup.py and CMakeLists.txt read: native sources and their headers, the Python packages, metadata."""
    setup = setup_module_constants()
    cmake_sources = re.findall(r"\b(csrc/[\w/.-]+\.(?:cpp|cu))\b", (ROOT / "CMakeLists.txt").read_text())
    native = with_includes(setup.CPU_SOURCES + setup.CUDA_SOURCES + cmake_sources)
    python = {p.relative_to(ROOT).as_posix() for folder in ("sparse_rda", "kernels")
              for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    return native | python | {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "CMakeLists.txt"}


def run(cmd: list, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """Built from a clean copy of the working tree, as from a fresh clone: in a used checkout setuptools also
    reads the stale sparse_rda.egg-info/SOURCES.txt, which would hide a file MANIFEST.in forgot."""
    out = tmp_path_factory.mktemp("dist")
    src = clean_copy(tmp_path_factory.mktemp("src"))
    done = run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, src], cwd=src)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("sparse_rda-*.tar.gz")
    return path


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_carries_every_file_the_build_reads(sdist):
    inputs = build_inputs()
    assert {"csrc/cpu/step_cpu.h", "csrc/rda_math.h", "csrc/cuda/device_common.cuh"} <= inputs  # the scan works
    missing = inputs - sdist_names(sdist)
    assert not missing, f"the sdist lacks files the build reads: {sorted(missing)} (MANIFEST.in)"


def test_sdist_has_no_build_output(sdist):
    stray = [n for n in sdist_names(sdist) if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n]
    assert not stray, stray


def test_wheel_from_the_sdist_has_every_module_in_its_package(sdist, tmp_path):
    """Every module of sparse_rda/ and kernels/ (as sparse_rda.kernels) lands in the wheel, so a new subpackage
    cannot be forgotten; nothing installs as a top-level `kernels`. Pure wheel (no compiler): the native route
    is tests/installs/routes.py's."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (tree,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    done = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", tree],
               cwd=tree, env_extra={"SPARSE_RDA_NO_EXTENSION": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sparse_rda").rglob("*.py")
                if "__pycache__" not in p.parts}
    expected |= {"sparse_rda/kernels/" + p.relative_to(ROOT / "kernels").as_posix()
                 for p in (ROOT / "kernels").rglob("*.py") if "__pycache__" not in p.parts}
    assert "sparse_rda/pruning/__init__.py" in expected
    assert not expected - names, f"the wheel lacks {sorted(expected - names)}"
    assert not any(n.startswith(("kernels/", "tests/", "bench/")) for n in names), sorted(names)


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', *sys.argv[1:]]; " \
              "import runpy; runpy.run_path('setup.py', run_name='__main__')"


def test_wheel_build_without_torch_stops_with_advice():
    """dist_info is what pip asks first for a wheel (before it resolves and downloads dependencies)."""
    done = run([sys.executable, "-c", BLOCK_TORCH, "dist_info", "--output-dir", ROOT / "build"], cwd=ROOT)
    assert done.returncode != 0
    assert "pip install --no-build-isolation" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_sdist_needs_no_torch(tmp_path):
    done = run([sys.executable, "-c", BLOCK_TORCH, "-q", "sdist", "--dist-dir", tmp_path], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    (path,) = tmp_path.glob("sparse_rda-*.tar.gz")
    assert "csrc/cuda/step_kernels.cu" in sdist_names(path)
