"""Build and install sparse_rda.

- The Triton kernels live in the top-level folder kernels/ and install as the subpackage sparse_rda.kernels.
- The native extension sparse_rda._C (csrc/) is always built for CPU; its CUDA kernels are added when torch
  has CUDA and nvcc is found, for the architectures in TORCH_CUDA_ARCH_LIST (e.g. "9.0a" for H100/H200).
  SPARSE_RDA_NO_EXTENSION=1 skips the extension: the package then runs on the reference and Triton backends.
  SPARSE_RDA_NO_CUDA=1 builds the CPU kernels only; SPARSE_RDA_WERROR=1 turns compiler warnings into errors.
"""

import os
import shutil

from setuptools import setup

packages = ["sparse_rda", "sparse_rda.kernels"]
package_dir = {"sparse_rda": "sparse_rda", "sparse_rda.kernels": "kernels"}


def native_extension():
    from torch.utils import cpp_extension

    # torch picks the C++ standard; its headers are system headers, so -Werror judges our code only
    cxx_flags = ["-O3", "-fopenmp", "-Wall", "-Wextra"]
    cxx_flags += [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    if os.environ.get("SPARSE_RDA_WERROR", "0") != "0":  # CI: our code builds without warnings
        cxx_flags.append("-Werror")
    sources = ["csrc/bindings.cpp", "csrc/cpu/step_cpu.cpp", "csrc/cpu/block_step_cpu.cpp"]
    has_nvcc = cpp_extension.CUDA_HOME is not None and shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    import torch

    if torch.version.cuda and has_nvcc and os.environ.get("SPARSE_RDA_NO_CUDA", "0") == "0":
        print("sparse_rda: building the CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST="
              f"{os.environ.get('TORCH_CUDA_ARCH_LIST', 'torch default')})")
        return cpp_extension.CUDAExtension(
            "sparse_rda._C",
            sources + ["csrc/cuda/step_kernels.cu", "csrc/cuda/block_step_kernels.cu"],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    reason = "torch has no CUDA" if not torch.version.cuda else "nvcc was not found (set CUDA_HOME)"
    print(f"sparse_rda: building the CPU kernels only ({reason}); CUDA tensors use the Triton backend")
    return cpp_extension.CppExtension("sparse_rda._C", sources, extra_compile_args=cxx_flags,
                                      extra_link_args=["-fopenmp"])


if os.environ.get("SPARSE_RDA_NO_EXTENSION", "0") != "0":
    ext_modules, cmdclass = [], {}
else:
    from torch.utils.cpp_extension import BuildExtension

    ext_modules, cmdclass = [native_extension()], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}

setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules, cmdclass=cmdclass)
