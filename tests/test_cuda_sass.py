"""The CUDA step kernels' machine code, checked without a GPU: csrc/cuda/step_kernels.cu, block_step_kernels.cu
and nm_step_kernels.cu compiled for sm_90a (H100/H200) with nvcc, their SASS dumped with cuobjdump. Per kernel
instantiation:

- 128-bit global loads and stores (LDG.E.128 / STG.E.128): one per fp32 array each pack loop reads or writes, and
  per param / grad array of fp32 params; 64-bit ones (LDG.E.64 / STG.E.64) for 16-bit params and grads, whose
  4-element packs are 8 bytes. Exact counts: the pack loops are not unrolled (``#pragma unroll 1``), so each
  access appears once per loop (the N:M step's, one group's C / 4 packs unrolled, C / 4 times), and a count
  that changes means a pack access was split (v1.2 stored A and B of the element step as four 32-bit stores,
  every state array of 16-bit params too) or an array was added;
- no local memory: no LDL/STL, and ptxas reports 0 bytes of stack frame and of spills;
- registers under a bound that keeps the occupancy the kernels are designed for.

The 32-bit accesses that remain are the scalar tails (ragged ends, unaligned tensors), the group means, the
device-form scalars and the tile's first A and B; they are not counted. bench/NOTES.md ("CUDA step kernels,
v1.3") has the numbers before and after. Skips only when nvcc or cuobjdump is missing.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("step_kernels", "block_step_kernels", "nm_step_kernels")
ARCH = "sm_90a"

try:  # the flags torch's CUDAExtension adds to every nvcc call of setup.py's build (which adds -O3)
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
except ImportError:
    COMMON_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                         "--expt-relaxed-constexpr"]
# setup.py's -O3 and CMakeLists.txt's C++ standard, -DNDEBUG and warnings-as-errors
NVCC_FLAGS = ["-O3", "-std=c++17", "-DNDEBUG", "-Werror=all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror",
              *COMMON_NVCC_FLAGS]

# (kernel, param dtype, grad dtype): (LDG.128, STG.128, LDG.64, STG.64, most registers). The element kernels have
# one pack loop per penalty mode (none, element, group: csrc/cuda/step_kernels.cu's Penalty) and one reading w
# alone for a GradScaler-skipped step; the block step a dual-average loop (w, g, T, v -> T, v), a prox loop
# (T -> A, B, w) and the skipped step's (w). Per loop, 16 bytes per fp32 array and 8 per 16-bit one:
#   rda_max_A     element: w, A; group: A (the group means replace |w|)
#   rda_step      none: w, g, T, v -> T, v, w; element and group: w, g, T, B, A, v -> T, B, A, v, w; skip: w
#   grda_step     g, acc -> acc, w; skip: w
#   block_max_A   w
#   block_step    dual average, prox and skip as above
# Register bounds: rda_step is capped at 64 by __launch_bounds__ (4 resident blocks of 256 threads per SM); the
# others fit 32 (8 blocks of 256: full occupancy) or 56 (the block step: 4 blocks of 256).
EXPECTED = {
    ("rda_max_A_kernel", "f32", None): (3, 0, 0, 0, 32),
    ("rda_max_A_kernel", "bf16", None): (2, 0, 1, 0, 32),
    ("rda_max_A_kernel", "f16", None): (2, 0, 1, 0, 32),
    ("rda_step_kernel", "f32", "f32"): (17, 13, 0, 0, 64),
    ("rda_step_kernel", "bf16", "bf16"): (10, 10, 7, 3, 64),
    ("rda_step_kernel", "bf16", "f32"): (13, 10, 4, 3, 64),
    ("rda_step_kernel", "f16", "f16"): (10, 10, 7, 3, 64),
    ("rda_step_kernel", "f16", "f32"): (13, 10, 4, 3, 64),
    ("grda_step_kernel", "f32", "f32"): (3, 2, 0, 0, 32),
    ("grda_step_kernel", "bf16", "bf16"): (1, 1, 2, 1, 32),
    ("grda_step_kernel", "bf16", "f32"): (2, 1, 1, 1, 32),
    ("grda_step_kernel", "f16", "f16"): (1, 1, 2, 1, 32),
    ("grda_step_kernel", "f16", "f32"): (2, 1, 1, 1, 32),
    ("block_max_A_kernel", "f32", None): (1, 0, 0, 0, 32),
    ("block_max_A_kernel", "bf16", None): (0, 0, 1, 0, 32),
    ("block_max_A_kernel", "f16", None): (0, 0, 1, 0, 32),
    ("block_step_kernel", "f32", "f32"): (6, 5, 0, 0, 56),
    ("block_step_kernel", "bf16", "bf16"): (3, 4, 3, 1, 56),
    ("block_step_kernel", "bf16", "f32"): (4, 4, 2, 1, 56),
    ("block_step_kernel", "f16", "f16"): (3, 4, 3, 1, 56),
    ("block_step_kernel", "f16", "f32"): (4, 4, 2, 1, 56),
}

# The N:M step (nm_step_kernels.cu), per group capacity C (4, 8, 16, 32: its kernels' template argument, the
# smallest holding M) as "nm_step_kernel<C>": one thread per group, its C / 4 packs unrolled, so each array's access
# appears C / 4 times in the whole-pack path: w, g, T, B, A, v -> A, B, T, v, w, and the skipped step's w. Register
# bounds: __launch_bounds__ asks for 4, 4, 3 and 2 resident blocks of 256 (a group's values and keys take 2 C).
NM_CAPACITIES = {4: 64, 8: 64, 16: 85, 32: 128}


def nm_expected(capacity: int, most_registers: int) -> dict:
    packs = capacity // 4
    kernel = f"nm_step_kernel<{capacity}>"
    out = {(kernel, "f32", "f32"): (7 * packs, 5 * packs, 0, 0, most_registers)}
    for p in ("bf16", "f16"):
        out[(kernel, p, p)] = (4 * packs, 4 * packs, 3 * packs, packs, most_registers)
        out[(kernel, p, "f32")] = (5 * packs, 4 * packs, 2 * packs, packs, most_registers)
    return out


for _capacity, _bound in NM_CAPACITIES.items():
    EXPECTED.update(nm_expected(_capacity, _bound))
KERNELS = ("rda_max_A_kernel", "rda_step_kernel", "grda_step_kernel", "block_max_A_kernel", "block_step_kernel",
           "nm_step_kernel")
TYPES = {"f": "f32", "13__nv_bfloat16": "bf16", "6__half": "f16"}


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None


def find_cuobjdump(nvcc: str) -> str | None:
    """The triton wheel's (one known version wherever triton is installed), else the toolkit's."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    beside = Path(nvcc).parent / "cuobjdump"
    return shutil.which("cuobjdump") or (str(beside) if os.access(beside, os.X_OK) else None)


def kernel_key(mangled: str) -> tuple[str, str, str | None] | None:
    """(kernel, param dtype, grad dtype) of a mangled kernel name, e.g. ...15rda_step_kernelI13__nv_bfloat16S3_EEv...;
    an int template argument (Li4E: the N:M kernels' group capacity) joins the kernel's name, "nm_step_kernel<4>"."""
    for kernel in KERNELS:
        m = re.search(rf"\d{kernel}I(.+?)EEv", mangled)
        if m:
            args = re.findall(r"f|13__nv_bfloat16|6__half|S\d*_", m.group(1))
            dtypes = [TYPES.get(a, None) for a in args]
            dtypes = [d if d is not None else dtypes[0] for d in dtypes]  # S3_: the first type again
            capacity = re.search(r"Li(\d+)E", m.group(1))
            name = f"{kernel}<{capacity.group(1)}>" if capacity else kernel
            return name, dtypes[0], dtypes[1] if len(dtypes) > 1 else None
    return None


def access_width(modifiers: list[str]) -> int:
    for m in modifiers:
        if m in ("128", "64"):
            return int(m)
        if m in ("U16", "S16"):
            return 16
        if m in ("U8", "S8"):
            return 8
    return 32


def parse_sass(text: str) -> dict:
    """Per kernel: a count of each memory instruction class, e.g. {"LDG128": 3, "STG32": 2, "LDL32": 0}."""
    kernels, counts = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            counts = kernels.setdefault(kernel_key(m.group(1)), {})
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?(LDG|STG|LDL|STL|LDS|STS|LD|ST)((?:\.\w+)*)\s", line)
        if m and counts is not None:
            name = f"{m.group(1)}{access_width(m.group(2).split('.')[1:])}"
            counts[name] = counts.get(name, 0) + 1
    return kernels


def parse_ptxas(text: str) -> dict:
    """Per kernel: (registers, stack frame bytes, spill store bytes, spill load bytes) from ptxas -v."""
    out = {}
    for part in text.split("Compiling entry function '")[1:]:
        mangled = part.split("'", 1)[0]
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", part)
        registers = re.search(r"Used (\d+) registers", part)
        assert frame and registers, f"unexpected ptxas output for {mangled}:\n{part[:1000]}"
        out[kernel_key(mangled)] = (int(registers.group(1)), *(int(x) for x in frame.groups()))
    return out


@pytest.fixture(scope="module")
def machine_code(tmp_path_factory):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA_HOME, PATH, /usr/local/cuda)")
    cuobjdump = find_cuobjdump(nvcc)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (triton's bundled one, PATH, beside nvcc)")
    out = tmp_path_factory.mktemp("sass")
    jobs = {}
    for source in SOURCES:  # all at once: ~5 s each on one core, ~25 s the N:M kernels' (20 instantiations)
        cmd = [nvcc, *NVCC_FLAGS, f"-arch={ARCH}", "-cubin", "-Xptxas", "-v", "-I", str(ROOT / "csrc"),
               "-o", str(out / f"{source}.cubin"), str(ROOT / "csrc" / "cuda" / f"{source}.cu")]
        jobs[source] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sass, ptxas = {}, {}
    for source, job in jobs.items():
        log = job.communicate(timeout=300)[0]
        assert job.returncode == 0, f"nvcc failed on {source}.cu:\n{log}"
        ptxas.update(parse_ptxas(log))
        dump = subprocess.run([cuobjdump, "-sass", str(out / f"{source}.cubin")], capture_output=True, text=True,
                              timeout=120, check=True).stdout
        sass.update(parse_sass(dump))
    return sass, ptxas


def test_every_instantiation_is_checked(machine_code):
    sass, ptxas = machine_code
    assert set(sass) == set(EXPECTED), f"kernels in the SASS: {sorted(map(str, sass))}"
    assert set(ptxas) == set(EXPECTED)


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: "-".join(x for x in k if x))
def test_pack_accesses_registers_and_no_local_memory(machine_code, key):
    sass, ptxas = machine_code
    counts, (registers, frame, spill_stores, spill_loads) = sass.get(key, {}), ptxas[key]
    ldg128, stg128, ldg64, stg64, most_registers = EXPECTED[key]
    found = tuple(counts.get(name, 0) for name in ("LDG128", "STG128", "LDG64", "STG64"))
    assert found == (ldg128, stg128, ldg64, stg64), (
        f"{key}: (LDG.128, STG.128, LDG.64, STG.64) = {found}, expected {(ldg128, stg128, ldg64, stg64)}; "
        f"all memory instructions: {dict(sorted(counts.items()))}")
    local = {name: n for name, n in counts.items() if name.startswith(("LDL", "STL"))}
    assert not local, f"{key}: local memory traffic {local}"
    assert (frame, spill_stores, spill_loads) == (0, 0, 0), (
        f"{key}: {frame} bytes stack frame, {spill_stores} / {spill_loads} bytes spill stores / loads")
    assert registers <= most_registers, f"{key}: {registers} registers, bound {most_registers}"
