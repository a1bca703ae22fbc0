# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
.PHONY: setup demo test lint unit bench

VENV := .venv/bin

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/perimeter demo

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy bot rag crm_adapters migrations

test: lint
	@./scripts/browser.sh
	$(VENV)/python -m pytest --timeout=900 -q

unit: setup
	$(VENV)/python -m pytest -q tests/unit

bench: setup
	$(VENV)/python bench/retrieval_xquad_r.py
	$(VENV)/python bench/pipeline_overhead.py
	$(VENV)/python bench/indexing.py
	$(VENV)/python bench/telegram_ingress.py
