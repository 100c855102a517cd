"""Compile every Triton step kernel variant ahead of time for sm_80 and sm_90 (no GPU needed): ptxas checks what the
interpreter cannot (types, constexpr branches, pointer casts). Run as a script, without TRITON_INTERPRET
(kernels defined under the interpreter cannot be compiled); tests/test_triton_compile.py does that.

On sm_90 it also checks what the kernels are built for (bench/NOTES.md, Triton step kernels v2):
- the ALIGNED variants access every array they stream with vectors: 16 bytes for each float32 array, 8 or more
  for 16-bit weights and gradients; the unaligned variants with none (they must not assume alignment);
- no spills and no local memory, and at most REGISTER_BOUND registers (cuobjdump's resource usage of the
  cubin).
Vector widths come from the LLVM IR Triton hands to ptxas: each load and store is an inline-asm PTX instruction
whose address is a getelementptr from one array's base (an inttoptr of the address the table holds), so
every access is attributed to its array and element size. ``-v`` prints the counts per variant."""

import itertools
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sparse_rda.kernels.grda_step as GRDA
import sparse_rda.kernels.rda_block_step as BLOCK_RDA
import sparse_rda.kernels.rda_nm_step as NM_RDA
import sparse_rda.kernels.rda_step as RDA

SCALAR_TYPES = {"n_tensors": "i32", "lr": "fp32", "lam": "fp32", "beta": "fp32", "beta_b": "fp32", "alpha": "fp32",
                "weight_decay": "fp32", "max_factor": "fp32"}
POINTER_TYPES = {"table": "*i64", "chunk_tensor": "*i32", "chunk_start": "*i64", "chunk_group": "*i64",
                 "nnz": "*i64", "tile_table": "*i64", "chunk_row": "*i64"}
# Registers per thread, from the warps each SM keeps resident (65536 registers, allocated in steps of 8): at least
# 24 warps for the vector (ALIGNED) variants (65536 / (24 x 32) = 85), 16 for the scalar ones (the fallback for
# odd views, which take a separate address per element).
REGISTER_BOUND = {True: 80, False: 128}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

# the arrays each kernel streams with vector accesses in its ALIGNED variant: (loads, stores); "w" and "g" have
# the W_DTYPE and G_DTYPE of the variant, the rest are float32 (A and B of a block step are read once per tile)
STREAMS = {
    (RDA, "_max_A_kernel"): ("w A", ""),
    (RDA, "_step_kernel"): ("w g T B A v", "T B A v w"),
    (GRDA, "_step_kernel"): ("g acc", "acc w"),
    (BLOCK_RDA, "_max_A_kernel"): ("w", ""),
    (BLOCK_RDA, "_step_kernel"): ("w g T v", "T v A B w"),
    (NM_RDA, "_step_kernel"): ("w g T B A v", "T B A v w"),
}


def signature(kernel, constexprs):
    """Every argument: constexpr, a scalar, or a pointer (float32 unless listed)."""
    return {name: "constexpr" if name in constexprs else SCALAR_TYPES.get(name) or POINTER_TYPES.get(name, "*fp32")
            for name in kernel.arg_names}


def variants():
    """(arch, module, kernel, constexprs, launch options): every kernel for each dtype and scalar form, ALIGNED
    on sm_80 and sm_90, and unaligned on sm_90 with host scalars (the hint is the only difference)."""
    forms = [(arch, dtype, on_device, True) for arch, dtype, on_device
             in itertools.product((80, 90), (tl.float32, tl.bfloat16, tl.float16), (False, True))]
    forms += [(90, dtype, False, False) for dtype in (tl.float32, tl.bfloat16, tl.float16)]
    chunks = dict(num_warps=RDA.NUM_WARPS)
    sub = BLOCK_RDA.SLAB // 64
    tile_launch = dict(num_warps=min(BLOCK_RDA.NUM_WARPS, sub * 64 // 128))
    for arch, dtype, on_device, aligned in forms:
        common = dict(DEVICE_SCALARS=on_device, W_DTYPE=dtype, ALIGNED=aligned, BLOCK=RDA.BLOCK, CHUNK=1 << 14)
        yield arch, RDA, RDA._max_A_kernel, common, chunks
        for reweight, maximize, has_scale in ((True, False, True), (False, True, False)):
            yield arch, RDA, RDA._step_kernel, dict(common, REWEIGHT=reweight, MAXIMIZE=maximize,
                                                    HAS_SCALE=has_scale, G_DTYPE=dtype), chunks
        yield arch, GRDA, GRDA._step_kernel, dict(common, HAS_SCALE=True, G_DTYPE=tl.float32), chunks
        tiles = dict(DEVICE_SCALARS=on_device, W_DTYPE=dtype, ALIGNED=aligned, ROWS=64, COLS=64, COLS_P=64, SUB=sub)
        yield arch, BLOCK_RDA, BLOCK_RDA._max_A_kernel, tiles, tile_launch
        yield arch, BLOCK_RDA, BLOCK_RDA._step_kernel, dict(tiles, REWEIGHT=True, MAXIMIZE=False, HAS_SCALE=True,
                                                            G_DTYPE=dtype), tile_launch
    yield from nm_variants()


def nm_variants():
    """The N:M step kernel (kernels/rda_nm_step.py) for M = 4 and 32 (2:4 picks the largest, 24:32 drops the
    smallest), float32 and bfloat16: whole rows of groups (EVEN) with vectors on sm_80 (host scalars, the other
    options) and sm_90 (the device form: its most loads); on sm_90 also unaligned, and ragged rows (M not dividing
    them; 3:5 pads groups to 8 lanes)."""
    forms = [(arch, dtype, nm, True, True) for arch, dtype, nm
             in itertools.product((80, 90), (tl.float32, tl.bfloat16), ((2, 4), (24, 32)))]
    forms += [(90, dtype, nm, even, False) for dtype, nm, even
              in itertools.product((tl.float32, tl.bfloat16), ((2, 4), (24, 32)), (True, False))]
    forms += [(90, tl.float32, (3, 5), False, False)]
    for arch, dtype, (n, m), even, aligned in forms:
        mp = triton.next_power_of_2(m)
        device_form = arch == 90
        yield arch, NM_RDA, NM_RDA._step_kernel, dict(
            N=n, M=m, MP=mp, GROUPS=NM_RDA.block_groups(mp, aligned), EVEN=even, REWEIGHT=device_form,
            MAXIMIZE=not device_form, HAS_SCALE=device_form, DEVICE_SCALARS=device_form, W_DTYPE=dtype, G_DTYPE=dtype,
            ALIGNED=aligned, CHUNK=1 << 14,
        ), dict(num_warps=NM_RDA.NUM_WARPS)


# ------------------------------------------------------------------------------------ what the LLVM IR says


ELEMENT_BYTES = {"float": 4, "i32": 4, "bfloat": 2, "half": 2, "i16": 2}


def _element_bytes(gep_type: str) -> int | None:
    match = re.fullmatch(r"\[(\d+) x i8\]", gep_type)
    return int(match.group(1)) if match else ELEMENT_BYTES.get(gep_type)


def vector_accesses(llir: str) -> dict:
    """{(kind, base, element bytes): widest access in bits} over the global loads and stores ("ld"/"st") whose
    address is an offset from a base pointer."""
    defs = dict(re.findall(r"^\s*(%[\w.]+) = (.*)$", llir, re.M))

    def bases(value, seen=()):
        """The base pointers a pointer value is an offset from (through getelementptr, phi and select)."""
        text = defs.get(value, "")
        if value in seen or not text:
            return set()
        if text.startswith("getelementptr"):  # the element size of the offset next to the base counts
            gep = re.match(r"getelementptr (?:inbounds |nuw |nusw )*(.+?), ptr addrspace\(1\) (%[\w.]+)", text)
            return {(base, size or _element_bytes(gep.group(1))) for base, size in bases(gep.group(2), seen + (value,))}
        if text.startswith(("phi", "select")):
            return set().union(*(bases(v, seen + (value,)) for v in re.findall(r"%[\w.]+", text)))
        return {(value, None)} if text.startswith("inttoptr") else set()

    widest = defaultdict(int)
    for asm, args in re.findall(r'asm sideeffect "([^"]*)", "[^"]*"\((.*)$', llir, re.M):
        access = re.search(r"(ld|st)\.global(?:\.v(\d))?\.b(\d+)", asm)
        pointer = re.search(r"ptr addrspace\(1\) (%[\w.]+)", args)
        if not access or not pointer:
            continue
        bits = int(access.group(2) or 1) * int(access.group(3))
        for base, size in bases(pointer.group(1)):
            key = (access.group(1), base, size)
            widest[key] = max(widest[key], bits)
    return widest


def resource_usage(cubin: bytes) -> dict:
    """cuobjdump's REG, STACK, LOCAL, SHARED of the kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out)}


def check(module, kernel, constexprs, compiled) -> tuple[list[str], str]:
    """(failures, summary) of an sm_90 variant."""
    failures = []
    usage = resource_usage(compiled.asm["cubin"])
    if usage["STACK"] or usage["LOCAL"]:
        failures.append(f"{usage['STACK']} B stack, {usage['LOCAL']} B local memory (spills)")
    bound = REGISTER_BOUND[constexprs["ALIGNED"]]
    if usage["REG"] > bound:
        failures.append(f"{usage['REG']} registers > {bound}")
    widest = vector_accesses(compiled.asm["llir"])
    vectors = {key: bits for key, bits in widest.items() if bits > 8 * (key[2] or 4)}
    summary = f"{usage['REG']} registers, {usage['STACK']} B stack, vectors: " + (", ".join(
        f"{kind} {bits}b of {size}B" for (kind, _, size), bits in sorted(vectors.items(), key=str)) or "none")
    if not constexprs["ALIGNED"]:
        if vectors:
            failures.append(f"vector accesses in the unaligned variant: {vectors}")
        return failures, summary
    for kind, arrays in zip(("ld", "st"), STREAMS[module, kernel.fn.__name__]):
        arrays = arrays.split()
        narrow = sum(1 for name in arrays if name in ("w", "g")
                     and constexprs[f"{name.upper()}_DTYPE"].primitive_bitwidth == 16)
        wide = sum(1 for (k, _, size), bits in widest.items() if k == kind and size == 4 and bits >= 128)
        half = sum(1 for (k, _, size), bits in widest.items() if k == kind and size == 2 and bits >= 64)
        if wide < len(arrays) - narrow or half < narrow:
            failures.append(f"{kind}: {wide} float32 arrays with 128-bit and {half} 16-bit arrays with >= 64-bit "
                            f"accesses; expected {len(arrays) - narrow} and {narrow} ({' '.join(arrays)})")
    return failures, summary


def main() -> int:
    count, failures = 0, []
    for arch, module, kernel, constexprs, launch in variants():
        source = ASTSource(fn=kernel, signature=signature(kernel, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch)
        assert "ptx" in compiled.asm, (kernel, constexprs)
        count += 1
        if arch != 90:
            continue
        problems, summary = check(module, kernel, constexprs, compiled)
        name = f"{module.__name__.rsplit('.', 1)[1]}.{kernel.fn.__name__} " + " ".join(
            f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items()
            if k not in ("BLOCK", "CHUNK", "COLS_P", "MP"))
        failures += [f"sm_90 {name}: {problem}" for problem in problems]
        if "-v" in sys.argv:
            print(f"sm_90 {name}: {summary}")
    print("\n".join(failures) or f"compiled {count} kernel variants")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
