"""The Triton kernels compile for real GPUs (sm_80, sm_90) ahead of time, with no GPU: ptxas checks what the
interpreter cannot (types, constexpr branches, pointer casts). Runs wherever triton is installed."""

import sys

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import sparse_rda.kernels  # noqa: E402,F401

RDA = sys.modules["sparse_rda.kernels.rda_step"]
GRDA = sys.modules["sparse_rda.kernels.grda_step"]

SCALAR_TYPES = {"n_tensors": "i32", "lr": "fp32", "lam": "fp32", "beta": "fp32", "beta_b": "fp32", "alpha": "fp32",
                "inv_tau": "fp32", "inv_tau_b": "fp32", "weight_decay": "fp32", "max_factor": "fp32"}
POINTER_TYPES = {"table": "*i64", "chunk_tensor": "*i32", "chunk_start": "*i64", "nnz": "*i64"}


def signature(kernel, constexprs):
    """Every argument: constexpr, a scalar, or a pointer (float32 unless listed)."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        else:
            types[name] = SCALAR_TYPES.get(name) or POINTER_TYPES.get(name, "*fp32")
    return types


def compile_for(kernel, constexprs, arch):
    source = ASTSource(fn=kernel, signature=signature(kernel, constexprs), constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    assert "ptx" in compiled.asm


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [tl.float32, tl.bfloat16, tl.float16])
@pytest.mark.parametrize("device_scalars", [False, True])
def test_rda_kernels_compile(arch, dtype, device_scalars):
    common = dict(DEVICE_SCALARS=device_scalars, W_DTYPE=dtype, BLOCK=RDA.BLOCK, CHUNK=1 << 16)
    compile_for(RDA._max_A_kernel, common, arch)
    for reweight, maximize, has_scale in ((True, False, True), (False, True, False)):
        compile_for(RDA._step_kernel, dict(common, REWEIGHT=reweight, MAXIMIZE=maximize, HAS_SCALE=has_scale,
                                           G_DTYPE=dtype), arch)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [tl.float32, tl.bfloat16])
@pytest.mark.parametrize("device_scalars", [False, True])
def test_grda_kernel_compiles(arch, dtype, device_scalars):
    compile_for(GRDA._step_kernel, dict(HAS_SCALE=True, DEVICE_SCALARS=device_scalars, W_DTYPE=dtype,
                                        G_DTYPE=tl.float32, BLOCK=RDA.BLOCK, CHUNK=1 << 16), arch)
