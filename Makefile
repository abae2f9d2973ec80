# kdlab: `make demo` and `make test` work on a fresh machine (they create .venv and install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are installed first, as one pair from the same release (a torchvision built for another
# torch fails at import: "operator torchvision::nms does not exist"), so that the package's ranges are already
# satisfied. kdlab/compat.py names the same pair in its error message (a test keeps them equal).
# Override for another build, e.g. TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.kdlab-installed

.PHONY: demo test test-slow test-ci test-all test-extras lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC) || $(PIP) install -q torch torchvision
	$(PIP) install -q -e ".[dev,tensorboard,timm,detection]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/kdlab demo

# Tests run on one pytest-xdist worker per CPU core (each worker keeps torch at one thread: tests/conftest.py);
# TEST_WORKERS=0 runs them in this process (e.g. to debug with -x/--pdb), TEST_WORKERS=4 sets the count.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# the default suite (a few minutes); the slow integration tests (full CLI demos, long runs) run in CI: `make test-ci`
test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-ci: test test-slow

test-all: $(STAMP)
	$(PYTEST)

# timm needs torchvision; this installs both (a large download) and runs the timm adapter tests.
test-extras: $(STAMP)
	$(PIP) install -q -e ".[timm]"
	$(PY) -m pytest -q tests/test_models_timm.py

lint: $(STAMP)
	$(VENV)/bin/ruff check kdlab tests benchmarks
	$(VENV)/bin/ruff format --check kdlab tests benchmarks

bench: $(STAMP)
	$(PY) -m kdlab bench
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/zoo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
