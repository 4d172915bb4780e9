# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8328
MODELS ?= tiny

.PHONY: setup lab-setup serve test lint demo lab lock bench clean reference-notebooks

# Every version is pinned by the lock (pip-tools, from pyproject's test, lab and ray extras; `make lock`).
LOCK := requirements/lock.txt
# JupyterLab gets its own venv: in the runner's environment its dependencies slow `import papermill`
# by ~1.5 s. It finds the kernel and the widget extension of $(VENV) through JUPYTER_PATH.
LAB_VENV := .venv-lab
LAB_STAMP := $(LAB_VENV)/.installed
LAB_ENV := JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel (torch==2.13.0+cpu in the lock): PyPI's Linux torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet -c $(LOCK) torch==2.13.0

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,ray]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

$(LAB_STAMP): $(LOCK)
	test -x $(LAB_VENV)/bin/python || $(PY) -m venv $(LAB_VENV)
	# pyproject's `lab` extra, at the lock's versions.
	$(LAB_VENV)/bin/pip install --quiet -c $(LOCK) jupyterlab
	touch $(LAB_STAMP)

setup: $(STAMP)

lab-setup: $(LAB_STAMP)

serve: setup
	$(BIN)/animenb serve --host 127.0.0.1 --port $(PORT) --models $(MODELS)

# One torch thread per process: tests run a server, kernels and pytest side by side on 2 cores.
TEST_ENV := TRANSFORMERS_VERBOSITY=error ANIMENB_THREADS=1
# Test processes (pytest-xdist): most tests wait on kernels, servers and subprocesses, so two processes
# on 2 cores finish the suite in about 40% less time. Each test file runs whole in one process (its
# module fixtures start once); the two Ray files take turns (tests/raycluster.py). TEST_WORKERS=0 runs
# everything in this process.
TEST_WORKERS ?= 2

# Notebooks committed WITH reference outputs, checked cell by cell (strict nbval) on the fixed runs
# folder tests/fixtures/runs; the others only have to run (--nbval-lax). To add one: list it here,
# run `make reference-notebooks`, review and commit its outputs.
STRICT_NOTEBOOKS := notebooks/04_quality.ipynb notebooks/05_compare_runs.ipynb
STRICT_ENV := ANIMENB_OUTPUTS=$(CURDIR)/tests/fixtures/runs

test: lint setup lab-setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=15
	out=$$(mktemp -d) && $(TEST_ENV) ANIMENB_OUTPUTS=$$out $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax notebooks $(addprefix --ignore=,$(STRICT_NOTEBOOKS)); rc=$$?; rm -rf $$out; exit $$rc
	$(TEST_ENV) $(STRICT_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(STRICT_NOTEBOOKS)

# Re-make the strict notebooks' reference outputs (after a deliberate change; review the diff).
reference-notebooks: setup
	$(TEST_ENV) $(STRICT_ENV) $(BIN)/python -c 'import os, sys, nbclient, nbformat; \
	    [nbformat.write(nbclient.execute(nbformat.read(p, 4), cwd=os.path.dirname(p), record_timing=False), p) \
	     for p in sys.argv[1:]]' $(STRICT_NOTEBOOKS)

# ruff (lint, import order, format check) and mypy on animenb/ (settings in pyproject.toml), from the
# tools venv: neither needs the runtime dependencies. .pre-commit-config.yaml runs the same versions.
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1
lint:
	test -x .venv-tools/bin/mypy || { $(PY) -m venv .venv-tools && .venv-tools/bin/pip install --quiet $(LINT_TOOLS); }
	.venv-tools/bin/ruff check animenb
	.venv-tools/bin/ruff format --check animenb
	.venv-tools/bin/mypy

demo: setup
	$(BIN)/animenb demo --models tiny

# Containers usually run as root, where JupyterLab refuses to start without --allow-root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: setup lab-setup
	$(LAB_ENV) $(LAB_VENV)/bin/jupyter lab $(LAB_ROOT) notebooks

# Re-resolve the locks (needs PyPI and the CPU torch wheel, as setup does), then refuse CUDA packages.
PIP_COMPILE := pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links
lock:
	test -x .venv-tools/bin/pip-compile || { $(PY) -m venv .venv-tools && .venv-tools/bin/pip install --quiet pip-tools==7.6.2; }
	.venv-tools/bin/$(PIP_COMPILE) --upgrade --extra test --extra lab --extra ray -o $(LOCK) pyproject.toml requirements/torch-cpu.in
	.venv-tools/bin/$(PIP_COMPILE) --upgrade -o tests/comfyui/requirements.txt tests/comfyui/requirements.in
	# nvidia-ml-py is the pure-Python NVML binding (GPU facts for the server), not a CUDA package.
	! grep -iE '^(nvidia|triton|cuda)' $(LOCK) tests/comfyui/requirements.txt | grep -v '^[^:]*:nvidia-ml-py=='

# Every bench/*.py, each bounded; results in bench/results/<date>-<host>.json and .md (git-ignored).
bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(LAB_VENV) .venv-tools outputs .pytest_cache
