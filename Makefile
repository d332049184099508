# The two commands of the README. Each sets itself up (scripts/bootstrap.sh):
# .venv, torch==2.13.0 (CPU), lowbit and its extras pinned by constraints.txt,
# and the Debian data package when it is missing.
.PHONY: run test setup clean
PY := .venv/bin/python

run:
	@bash scripts/bootstrap.sh test
	@$(PY) -m lowbit.cli.main run

test:
	@bash scripts/bootstrap.sh test
	@$(PY) -m ruff check src tests benchmarks
	@$(PY) -m pytest

setup:
	@bash scripts/bootstrap.sh test

clean:
	rm -rf .venv .pytest_cache .hypothesis
