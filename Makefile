# The README's commands. `make demo` and `make test` create a virtual environment
# (.venv, seeing the system's packages, so an installed torch is reused and never
# replaced), install torch there only if none is importable, and build and install
# locallearn with its C++ ops against that torch. VENV= (empty) installs into the
# environment of $(PYTHON) instead, e.g. a machine whose torch lives in another venv.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
BENCH_JSON ?= bench_similarity.json

ifeq ($(VENV),)
PY := $(PYTHON)
STAMP := build/.installed-system
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locallearn-installed
endif
NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find csrc -type f)

.PHONY: install demo test bench wheel check-kernels check-glue device-check clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(if $(VENV),$(VENV)/bin/python) $(NATIVE_SOURCES)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install "scikit-build-core>=0.10" ninja cmake
	$(PY) -m pip install --no-build-isolation -e ".[test]"
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

wheel: install
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# Compiles every kernel for each architecture in CUDA_ARCHS; needs nvcc, no GPU, no torch.
check-kernels:
	@command -v $(NVCC) >/dev/null || { echo "check-kernels: $(NVCC) not found" >&2; exit 1; }
	@for kernel in csrc/kernels/*.cu; do \
		echo "nvcc -c $$kernel ($(CUDA_ARCHS))"; \
		$(NVCC) -c -std=c++17 -O3 $(foreach arch,$(CUDA_ARCHS),-gencode arch=compute_$(arch),code=sm_$(arch)) \
			"$$kernel" -o /dev/null || exit 1; \
	done

# Compiles the torch glue of the CUDA ops (csrc/cuda/*.cpp) against the installed
# torch's headers without a CUDA torch (nvcc hands the C++ to the host compiler with
# the CUDA include paths): a CPU wheel ships the c10/cuda headers but not the
# generated cuda_cmake_macros.h, stubbed here.
check-glue: install
	@command -v $(NVCC) >/dev/null || { echo "check-glue: $(NVCC) not found" >&2; exit 1; }
	@stub=$$(mktemp -d) && mkdir -p $$stub/c10/cuda/impl && echo '#pragma once' > $$stub/c10/cuda/impl/cuda_cmake_macros.h; \
	torch_includes=$$($(PY) -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))"); \
	for glue in csrc/cuda/*.cpp; do \
		echo "nvcc -x c++ -c $$glue"; \
		$(NVCC) -x c++ -std=c++17 -w -c -DLOCALLEARN_WITH_CUDA=1 -I$$stub $$torch_includes "$$glue" -o /dev/null \
			|| exit 1; \
	done

# The whole GPU side in one run on a GPU machine whose python3 has torch (no venv, no
# network): build for its GPU, CUDA tests, compute-sanitizer, benchmarks, training;
# REPORT.md, JSON files and a log into OUT (docs/device_check.md). DRY_RUN=1: on a CPU.
device-check:
	$(PYTHON) tools/device_check.py --out "$(OUT)" $(if $(filter 1,$(DRY_RUN)),--dry-run)

clean:
	rm -rf build dist $(VENV)
