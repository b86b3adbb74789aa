# Set-up and everyday commands. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8765
DB   ?= var/gateway.sqlite3

.PHONY: install run test bench proto lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	mkdir -p $(dir $(DB))
	$(BIN)/osmium-gateway serve --host $(HOST) --port $(PORT) --db $(DB)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

proto: install
	$(BIN)/python schema/generate.py gateway/proto

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy gateway

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
