# Two commands do all set-up:  make demo   (the main job)   and   make test.
# Each creates .venv on first use and installs what it needs. Without a GPU we install a
# CPU build of torch (never the multi-GB CUDA wheels); with a GPU we keep the user's torch.
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_OUT    ?= runs/demo
PYTEST_ARGS ?=
# Test workers (pytest-xdist), whole files per worker so module fixtures are built once; 2 suits
# a 2-core machine (TEST_WORKERS=0 runs everything in one process).
TEST_WORKERS ?= 2

.PHONY: demo test bench validity install clean help

help:
	@echo "make demo   - simulate the demo platform, compare builders by LIS, train the tiny VLM with LoRA,"
	@echo "              early-stop on LIS and assemble a ready-to-publish adapter folder (runs/demo)"
	@echo "make test   - run the whole test suite (slow multi-process tests included)"
	@echo "make bench  - run the benchmarks in bench/ and print their tables"
	@echo "make validity - validity tests on the demo world's seed 1 (make test runs seed 0) and the"
	@echo "                LIS/AIS checks on the >= 1M-impression bench world (CI runs both after make test)"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@if [ ! -x $(PY) ]; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && python3 -c "import torch" >/dev/null 2>&1; then \
	    echo "GPU machine: reusing the system torch in the venv"; python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; \
	fi
	$(PIP) install --quiet --upgrade pip
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install --quiet torch; \
	elif ls $${PIP_FIND_LINKS:-/nonexistent}/torch-$(TORCH_VERSION)+cpu-*.whl >/dev/null 2>&1; then \
	  $(PIP) install --quiet torch==$(TORCH_VERSION); \
	else \
	  $(PIP) install --quiet torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	fi
	$(PIP) install --quiet -e ".[align,dev,spark]"
	@$(PY) -c "from lis.spark.session import JAVA_HINT, java_major as j; v = j(); v is not None and v >= 17 or print('note: the Spark engine (lis score --engine spark and its tests) needs Java 17: ' + JAVA_HINT)"
	@touch $@

demo: install
	$(VENV)/bin/lis-align demo --out $(DEMO_OUT)

test: install
	LIS_VALIDITY_SEEDS=$${LIS_VALIDITY_SEEDS:-0} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The validity tests on the demo preset's seed 1 (`make test` runs seed 0), then LIS/AIS validity at
# >= 1M impressions (bench preset): null controls at 0 on AUC and GAUC, the true latents clearly
# positive and above the co_engagement ceiling. CI runs it after the tests.
validity: install
	LIS_VALIDITY_SEEDS=1 $(PY) -m pytest tests/lis/test_validity.py $(PYTEST_ARGS)
	$(PY) bench/check_validity_at_scale.py --world runs/validity-bench

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs
