# The README's two commands: `make demo` and `make test`. Both create/refresh .venv first.
.PHONY: venv demo test lint
SHELL := /bin/bash

venv:
	@bash scripts/bootstrap.sh

demo: venv
	.venv/bin/cxr demo

test: venv
	.venv/bin/python -m pytest tests

lint: venv
	.venv/bin/ruff check src tests
