# make demo: set up and train LeNet-300-100 on Fashion-MNIST, dense SGD vs sparse RDA.
# make test: set up and run the test suite (CPU; Triton kernels run in the interpreter), again under triton 3.6,
#   make gpu-check without a GPU (its stages end to end), then every install route in fresh venvs
#   (make install-check: tests/installs/routes.py, which also runs the CPU tests without triton).
# make gpu-check: on a GPU machine, the one prepared run (tests/gpu/check.sh), with the machine's python3.
# make accuracy: set up and run the accuracy benchmark, bench/accuracy.py: every method at
#   90/95/98/99% sparsity on Fashion-MNIST; options via ACCURACY_ARGS, e.g. ACCURACY_ARGS="--models lenet --threads 1"
# The venv sees system packages, so a machine that already has torch (a GPU box) keeps its build;
# otherwise it gets exactly torch==2.13.0 (a looser pin would pull GBs of CUDA wheels).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

NATIVE_SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh)

.PHONY: setup demo accuracy test native-check install-check gpu-check clean

setup: $(VENV)/.installed

# the native extension (CPU kernels; CUDA too where torch has CUDA), rebuilt when csrc/ changes
$(VENV)/.built: $(VENV)/.installed $(NATIVE_SOURCES)
	SPARSE_RDA_WERROR=1 $(PY) setup.py -q build_ext --inplace
	touch $@

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q "triton>=3.6"
	$(PY) -m pip install -q numpy tqdm matplotlib safetensors pytest pytest-benchmark pytest-xdist hypothesis expecttest \
	  "setuptools>=77" ninja build
	$(PY) -m pip install -q --no-deps "torchao==0.18.0" || \
	  echo "torchao not installed: bench/accuracy.py and bench/optimizer_step.py skip their PAT rows"
	SPARSE_RDA_NO_EXTENSION=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: $(VENV)/.built
	$(PY) examples/fashion_mnist_demo.py

ACCURACY_ARGS ?=
accuracy: $(VENV)/.built
	$(PY) bench/accuracy.py $(ACCURACY_ARGS)

# csrc: the shared math's C++ tests, the CUDA kernels compiled for sm_80 and sm_90a (warnings are errors)
# wherever nvcc is installed, and the binding file's CUDA glue compiled for syntax against torch's headers
native-check: $(VENV)/.installed
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > build-cmake.log || (cat build-cmake.log; exit 1)
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure
	PYTHON=$(PY) bash csrc/tests/check_cuda_glue.sh

# pip install ., -e ., sdist -> wheel -> install, and builds that must refuse, each from a clean copy of the tree
# into a fresh venv with torch; then the CPU tests and both examples in a venv without triton
install-check:
	$(PYTHON) tests/installs/routes.py

# the one command for a GPU machine (tests/gpu/check.sh): build for its GPU, every CUDA test, compute-sanitizer,
# quick benchmarks; <= BUDGET seconds (default 480). It installs nothing: run it with the machine's python3
# (PY=...). Without a GPU its GPU stages say "skipped: no GPU" (CI runs it so).
gpu-check:
	PY=$(if $(wildcard $(PY)),$(PY),python3) bash tests/gpu/check.sh

# the suite once more under triton 3.6, the GPU machine's version, so that an API drift shows before GPU minutes
# are spent on it: it and the numpy < 2.4 its interpreter needs shadow the venv's through PYTHONPATH. Only the
# tests that can run Triton code: not those marked triton_free, nor (SPARSE_RDA_TRITON_PASS, tests/conftest.py)
# those parametrized on the reference or native backend
TRITON36 := $(VENV)/triton-3.6
$(TRITON36)/.installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target $(TRITON36) "triton==3.6.0" "numpy<2.4"
	touch $@

# the suite's files spread over the cores (pytest-xdist)
TEST_JOBS ?= -n auto

test: $(VENV)/.built native-check $(TRITON36)/.installed
	TRITON_INTERPRET=1 $(PY) -m pytest -q $(TEST_JOBS) tests bench
	SPARSE_RDA_TRITON_PASS=1 PYTHONPATH=$(TRITON36) TRITON_INTERPRET=1 $(PY) -m pytest -q $(TEST_JOBS) tests bench \
	  -m "not triton_free" \
	  -W "ignore:Conversion of an array with ndim:DeprecationWarning"  # (triton 3.6's interpreter, not ours)
	RESULTS=$$(mktemp -d) $(MAKE) gpu-check
	$(MAKE) install-check

clean:
	rm -rf $(VENV) build build-cmake.log *.egg-info sparse_rda/_C*.so
