"""Build and install sparse_rda.

- Packages are found, not listed: every folder with an ``__init__.py`` under sparse_rda/ installs, and the
  Triton kernels in the top-level folder kernels/ install as the subpackage ``sparse_rda.kernels``.
- The native extension sparse_rda._C (csrc/) is always built for CPU; its CUDA kernels are added when torch
  has CUDA and nvcc is found, for the architectures in TORCH_CUDA_ARCH_LIST (e.g. "9.0a" for H100/H200).
  It compiles against the torch it will run with, so it is built without build isolation, torch installed
  first: ``pip install --no-build-isolation .``. Without torch the build stops with that advice.
  SPARSE_RDA_NO_EXTENSION=1 skips the extension: the package then runs on the reference and Triton backends.
  SPARSE_RDA_NO_CUDA=1 builds the CPU kernels only; SPARSE_RDA_WERROR=1 turns compiler warnings into errors.
- The sdist carries every file under csrc/ (MANIFEST.in); tests/test_packaging.py checks it against the
  sources below and the headers they include.
"""

import os
import shutil
import sys

import setuptools
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

MIN_SETUPTOOLS = 77  # PEP 639 license metadata in pyproject.toml
CPU_SOURCES = ["csrc/bindings.cpp", "csrc/cpu/step_cpu.cpp", "csrc/cpu/block_step_cpu.cpp", "csrc/cpu/nm_step_cpu.cpp",
               "csrc/cpu/csr_linear_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda/step_kernels.cu", "csrc/cuda/block_step_kernels.cu", "csrc/cuda/nm_step_kernels.cu"]

NEEDS_TORCH = """sparse_rda: cannot build the native extension: this build environment has no torch (pip's build
isolation hides an installed one). The extension is compiled against the torch it runs with, so install torch
first and build without isolation:
    pip install torch "setuptools>=77" ninja
    pip install --no-build-isolation sparse_rda      (in a checkout: pip install --no-build-isolation .)
Or install without native kernels (reference and Triton backends only): SPARSE_RDA_NO_EXTENSION=1 pip install ..."""


def flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def packages() -> list[str]:
    kernels = find_packages("kernels")
    return (find_packages(include=["sparse_rda", "sparse_rda.*"])
            + ["sparse_rda.kernels"] + [f"sparse_rda.kernels.{name}" for name in kernels])


def native_extension(cpp_extension):
    import torch

    # torch picks the C++ standard; its headers are system headers, so -Werror judges our code only
    cxx_flags = ["-O3", "-fopenmp", "-Wall", "-Wextra"]
    cxx_flags += [part for path in cpp_extension.include_paths() for part in ("-isystem", path)]
    if flag("SPARSE_RDA_WERROR"):  # CI: our code builds without warnings
        cxx_flags.append("-Werror")
    nvcc = cpp_extension.CUDA_HOME and shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if torch.version.cuda and nvcc and not flag("SPARSE_RDA_NO_CUDA"):
        print("sparse_rda: building the CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST="
              f"{os.environ.get('TORCH_CUDA_ARCH_LIST', 'torch default')})")
        return cpp_extension.CUDAExtension(
            "sparse_rda._C", CPU_SOURCES + CUDA_SOURCES, define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"])
    reason = ("SPARSE_RDA_NO_CUDA=1" if flag("SPARSE_RDA_NO_CUDA") else "torch has no CUDA" if not torch.version.cuda
              else "nvcc was not found (set CUDA_HOME)")
    print(f"sparse_rda: building the CPU kernels only ({reason}); CUDA tensors use the Triton backend")
    return cpp_extension.CppExtension("sparse_rda._C", CPU_SOURCES, extra_compile_args=cxx_flags,
                                      extra_link_args=["-fopenmp"])


class TorchMissing(build_ext):
    """Stands in for torch's BuildExtension without torch: whatever command gets to compiling stops here
    (never a wheel without its extension)."""

    def run(self):
        sys.exit(NEEDS_TORCH)


# pip asks for wheel metadata (dist_info) before it resolves dependencies: stopping there, not in build_ext,
# spares the user a torch download that ends in this error
WHEEL_COMMANDS = {"dist_info", "bdist_wheel", "editable_wheel", "build", "build_ext", "develop", "install"}


def extension_and_command():
    if flag("SPARSE_RDA_NO_EXTENSION"):
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:  # fine for the sdist and egg_info; csrc/ travels by MANIFEST.in
        if WHEEL_COMMANDS & set(sys.argv[1:]):
            sys.exit(NEEDS_TORCH)
        return [Extension("sparse_rda._C", CPU_SOURCES)], {"build_ext": TorchMissing}
    return ([native_extension(cpp_extension)],
            {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)})


if __name__ == "__main__":  # pip and python -m build run this file as __main__; the tests import it
    if int(setuptools.__version__.split(".")[0]) < MIN_SETUPTOOLS:
        sys.exit(f"sparse_rda needs setuptools>={MIN_SETUPTOOLS} to build (found {setuptools.__version__}): "
                 f'pip install "setuptools>={MIN_SETUPTOOLS}" ninja')
    ext_modules, cmdclass = extension_and_command()
    setup(packages=packages(), package_dir={"sparse_rda.kernels": "kernels"}, ext_modules=ext_modules,
          cmdclass=cmdclass)
