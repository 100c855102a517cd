"""Build and install sparse_rda.

The Triton kernels live in the top-level folder kernels/ and install as the subpackage sparse_rda.kernels.
Native extensions (csrc/: a CPU build always, CUDA when torch has CUDA) are added here as they land.
"""

from setuptools import setup

setup(
    packages=["sparse_rda", "sparse_rda.kernels"],
    package_dir={"sparse_rda": "sparse_rda", "sparse_rda.kernels": "kernels"},
)
