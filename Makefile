# Two entry points (see README): `make test` and `make demo`. Both build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-all demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The `cpu` extra pins the CPU torch wheel (a bare `torch` would pull a multi-GB CUDA build).
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e '.[cpu,dev,deepspeed,annotation,eval,fp8]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

demo: $(STAMP)
	$(BIN)/python -m sana_wm.demo

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache demo_out
