# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8328
MODELS ?= tiny

.PHONY: setup serve test demo lab bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/animenb serve --host 127.0.0.1 --port $(PORT) --models $(MODELS)

# One torch thread per process: tests run a server, kernels and pytest side by side on 2 cores.
TEST_ENV := TRANSFORMERS_VERBOSITY=error ANIMENB_THREADS=1

test: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider
	out=$$(mktemp -d) && $(TEST_ENV) ANIMENB_OUTPUTS=$$out $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax notebooks; rc=$$?; rm -rf $$out; exit $$rc

demo: setup
	$(BIN)/animenb demo --models tiny

lab: setup
	$(BIN)/pip install --quiet -e '.[lab]'
	$(BIN)/jupyter lab notebooks

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache
