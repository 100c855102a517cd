"""Compile every Triton kernel variant ahead of time for sm_80 and sm_90 (no GPU needed): ptxas checks what the
interpreter cannot (types, constexpr branches, pointer casts). Run as a script, without TRITON_INTERPRET
(kernels defined under the interpreter cannot be compiled); tests/test_triton_compile.py does that."""

import itertools
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sparse_rda.kernels.grda_step as GRDA
import sparse_rda.kernels.rda_block_step as BLOCK_RDA
import sparse_rda.kernels.rda_step as RDA

SCALAR_TYPES = {"n_tensors": "i32", "lr": "fp32", "lam": "fp32", "beta": "fp32", "beta_b": "fp32", "alpha": "fp32",
                "weight_decay": "fp32", "max_factor": "fp32"}
POINTER_TYPES = {"table": "*i64", "chunk_tensor": "*i32", "chunk_start": "*i64", "nnz": "*i64", "tile_table": "*i64"}


def signature(kernel, constexprs):
    """Every argument: constexpr, a scalar, or a pointer (float32 unless listed)."""
    return {name: "constexpr" if name in constexprs else SCALAR_TYPES.get(name) or POINTER_TYPES.get(name, "*fp32")
            for name in kernel.arg_names}


def variants():
    for arch, dtype, on_device in itertools.product((80, 90), (tl.float32, tl.bfloat16, tl.float16), (False, True)):
        common = dict(DEVICE_SCALARS=on_device, W_DTYPE=dtype, BLOCK=RDA.BLOCK, CHUNK=1 << 16)
        yield arch, RDA._max_A_kernel, common
        for reweight, maximize, has_scale in ((True, False, True), (False, True, False)):
            yield arch, RDA._step_kernel, dict(common, REWEIGHT=reweight, MAXIMIZE=maximize, HAS_SCALE=has_scale,
                                               G_DTYPE=dtype)
        yield arch, GRDA._step_kernel, dict(common, HAS_SCALE=True, G_DTYPE=tl.float32)
        tiles = dict(DEVICE_SCALARS=on_device, W_DTYPE=dtype, ROWS=64, COLS=64, ROWS_P=64, COLS_P=64)
        yield arch, BLOCK_RDA._max_A_kernel, tiles
        yield arch, BLOCK_RDA._step_kernel, dict(tiles, REWEIGHT=True, MAXIMIZE=False, HAS_SCALE=True, G_DTYPE=dtype)


def main() -> int:
    count = 0
    for arch, kernel, constexprs in variants():
        source = ASTSource(fn=kernel, signature=signature(kernel, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert "ptx" in compiled.asm, (kernel, constexprs)
        count += 1
    print(f"compiled {count} kernel variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
