# The two set-up commands. Both install what they need first (scripts/setup.sh, idempotent).
.PHONY: run test lint setup
setup:
	@bash scripts/setup.sh
run: setup
	.venv/bin/podflame up $(ARGS)
test: setup
	.venv/bin/pytest $(PYTEST_ARGS)
lint: setup
	.venv/bin/ruff check .
