# `make demo` and `make test` set up .venv (Python 3.11, pinned packages) on first use, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the pins change. torch goes first, pinned, so that nothing
# later can pull a CUDA build of it.
$(STAMP): $(BIN)/python setup.cfg requirements.lock
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[torch,test]'
	touch $(STAMP)

# Trains the demo config for at most 9 minutes (resuming runs/demo if it exists), then prints
# the evaluation's two tables (unseen and seen combinations; 64 records each, ~20 s) and writes
# runs/demo/eval/final_step_*_{unseen,seen}.png.
demo: $(STAMP)
	$(BIN)/mmar-jax train --config=configs/demo.py --workdir=runs/demo
	$(BIN)/mmar-jax evaluate --workdir=runs/demo --samples=64

# tests/conftest.py gives the tests 8 fake CPU devices, so every sharding path runs; xdist runs
# them on a worker a core (each file on one worker), beside the demo test's background training.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --durations=25

clean:
	rm -rf $(VENV) build *.egg-info
