# The two set-up commands. Both install what they need first (scripts/setup.sh, idempotent).
# `make unit` runs the unit tests alone: no root, no kernel, no tools (after one `make setup` as root).
.PHONY: run test unit lint setup
setup:
	@bash scripts/setup.sh
run: setup
	.venv/bin/podflame up $(ARGS)
test: setup
	.venv/bin/mypy
	.venv/bin/pytest $(PYTEST_ARGS)
unit:
	@test -x .venv/bin/pytest || { echo "no .venv: run 'make setup' once, as root"; exit 1; }
	.venv/bin/pytest -m "not bpf and not browser and not system" $(PYTEST_ARGS)
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
