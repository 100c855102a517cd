# make demo: set up and train LeNet-300-100 on Fashion-MNIST, dense SGD vs sparse RDA.
# make test: set up and run the test suite (CPU; Triton kernels run in the interpreter).
# The venv sees system packages, so a machine that already has torch (a GPU box) keeps its build;
# otherwise it gets exactly torch==2.13.0 (a looser pin would pull GBs of CUDA wheels).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q "triton>=3.6"
	$(PY) -m pip install -q numpy tqdm pytest pytest-benchmark hypothesis setuptools wheel
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: setup
	$(PY) examples/fashion_mnist_demo.py

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
