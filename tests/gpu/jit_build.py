"""make gpu-check's fallback build of sparse_rda._C when pip cannot build the package (an old setuptools, say):
torch.utils.cpp_extension.load (ninja) over setup.py's sources, the library copied into sparse_rda/, and
sparse_rda/kernels linked to kernels/ (setup.py's package_dir), so the checkout imports with PYTHONPATH=.
TORCH_CUDA_ARCH_LIST picks the GPU architectures, as for setup.py."""

import os
import shutil
import sys

import torch
from torch.utils import cpp_extension

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)
from setup import CPU_SOURCES, CUDA_SOURCES  # noqa: E402  (setup.py builds nothing when imported)

os.chdir(ROOT)
build = os.path.join(ROOT, "build", "jit")
os.makedirs(build, exist_ok=True)
cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
cpp_extension.load(
    name="_C", sources=CPU_SOURCES + (CUDA_SOURCES if cuda else []), build_directory=build, verbose=True,
    with_cuda=cuda, extra_cflags=["-O3", "-fopenmp"] + (["-DWITH_CUDA"] if cuda else []),
    extra_cuda_cflags=["-O3"], extra_ldflags=["-fopenmp"], is_python_module=False)
shutil.copy(os.path.join(build, "_C.so"), os.path.join("sparse_rda", "_C.so"))
if not os.path.exists(os.path.join("sparse_rda", "kernels")):
    os.symlink(os.path.join("..", "kernels"), os.path.join("sparse_rda", "kernels"))
print("built sparse_rda/_C.so; CUDA kernels:", cuda)
