#!/bin/bash
# Compiles csrc/bindings.cpp's CUDA glue (-DWITH_CUDA) for syntax and warnings on a machine without a CUDA build
# of torch: torch's CPU wheel ships the c10 CUDA headers, the CUDA toolkit gives cuda_runtime.h, and
# stub_include/ stands in for the one header only a CUDA torch generates (c10/cuda/impl/cuda_cmake_macros.h).
# bindings.cpp includes no cuBLAS/cuSPARSE header (nor ATen/cuda/CUDAContext.h, which pulls them in), so a
# toolkit with nvcc and cudart builds it. Catches what only a GPU build would otherwise find (a missing include,
# a wrong signature); tests/installs/routes.py --routes cuda-build builds it for real against a CUDA torch.
# Needs: python with torch, g++, a CUDA toolkit.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
CUDA_INCLUDE=${CUDA_HOME:-/usr/local/cuda}/include
if [ ! -f "$CUDA_INCLUDE/cuda_runtime.h" ]; then
  echo "check_cuda_glue: no CUDA toolkit at $CUDA_INCLUDE, skipped"
  exit 0
fi
TORCH_INCLUDE=$($PYTHON -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
PY_INCLUDE=$($PYTHON -c "import sysconfig; print(sysconfig.get_paths()['include'])")
g++ -std=c++20 -fsyntax-only -DWITH_CUDA -Wall -Wextra -Werror \
  -isystem csrc/tests/stub_include -isystem "$TORCH_INCLUDE" -isystem "$TORCH_INCLUDE/torch/csrc/api/include" \
  -isystem "$CUDA_INCLUDE" -isystem "$PY_INCLUDE" csrc/bindings.cpp
echo "check_cuda_glue: csrc/bindings.cpp compiles with WITH_CUDA"
