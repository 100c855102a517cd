"""Compile the masked matmul kernels ahead of time for sm_80 and sm_90 (no GPU needed), for every dtype and every
tile size of the config table, in the layouts the launchers use (unit strides specialized, as the JIT does), and
check each fits in the GPU's shared memory. Run as a script, without TRITON_INTERPRET (kernels defined under the
interpreter cannot be compiled); tests/test_masked_matmul.py does that."""

import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sparse_rda.kernels.masked_matmul as MM

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block (A100, H100/H200)
TL_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
INDEX_POINTERS = {"ptr": "*i32", "idx": "*i32", "live": "*u8"}


def signature(kernel, constexprs, dtype):
    return {name: "constexpr" if name in constexprs else
            "i32" if name in ("M", "R", "O", "N", "K", "k_blocks") or name.startswith("stride") else
            INDEX_POINTERS.get(name, "*" + TL_NAME[dtype]) for name in kernel.arg_names}


def aligned(kernel, sig):
    """Every pointer 16-byte aligned and every integer a multiple of 16, as the JIT specializes them for large
    aligned shapes: the loads then vectorize and the loop pipelines (cp.async), which is what needs shared memory."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if sig[name] != "constexpr"}


def variants():
    """sm_90: every tile size of the config table for fp32 and bf16, the 64 x 64 default in fp16 and in fp32 with
    tf32; sm_80: the 64 x 64 default in bf16. Each: forward, dX and live-only dW layouts."""
    cases = [(90, dtype, side) for dtype in (torch.float32, torch.bfloat16)
             for side in sorted({side for side, _ in MM.HOPPER_CONFIGS})]
    cases += [(90, torch.float16, 64), (80, torch.bfloat16, 64)]
    for arch, dtype, side in cases:
        block_m, warps, stages = MM._config((side, side), dtype, 1 << 20)
        launch = dict(num_warps=warps, num_stages=stages)
        common = dict(PRECISION="ieee", BLOCK_M=block_m)
        tiles = dict(BLOCK_R=side, BLOCK_O=side)
        # forward: a = x (unit stride along K), b = W.T (unit stride along K); dX: a = dY, b = W (unit stride along K)
        yield arch, MM._sparse_matmul_kernel, dict(common, **tiles, HAS_BIAS=True, stride_ar=1, stride_br=1,
                                                   stride_oo=1), dtype, launch
        yield arch, MM._sparse_matmul_kernel, dict(common, **tiles, HAS_BIAS=False, stride_ar=1, stride_bo=1,
                                                   stride_oo=1), dtype, launch
        yield arch, MM._live_tile_grad_kernel, dict(common, BLOCK_M=MM.DW_BLOCK_M, BLOCK_N=side, BLOCK_K=side,
                                                    stride_dyn=1, stride_xk=1, stride_dwk=1), dtype, launch
    block_m, warps, stages = MM._config((64, 64), torch.float32, 1 << 20)
    yield 90, MM._sparse_matmul_kernel, dict(PRECISION="tf32", BLOCK_M=block_m, BLOCK_R=64, BLOCK_O=64,
                                             HAS_BIAS=False, stride_ar=1, stride_br=1, stride_oo=1), \
        torch.float32, dict(num_warps=warps, num_stages=stages)


def main() -> int:
    count = 0
    for arch, kernel, constexprs, dtype, launch in variants():
        sig = signature(kernel, constexprs, dtype)
        source = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=aligned(kernel, sig))
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch)
        assert "ptx" in compiled.asm, (kernel, constexprs)
        shared = compiled.metadata.shared
        assert shared <= SHARED_LIMIT[arch], f"sm_{arch} {dtype} {constexprs}: {shared} bytes of shared memory"
        if "-v" in sys.argv:
            print(f"sm_{arch} {kernel.fn.__name__} {str(dtype)[6:]} {constexprs} {launch}: {shared} B shared, "
                  f"wgmma {'warp_group_dot' in compiled.asm['ttgir']}")
        count += 1
    print(f"compiled {count} kernel variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
