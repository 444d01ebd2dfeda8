#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, the import-boundary contracts and the fast tests
# (which run the quick parity set once: tests/test_parity_suite.py and test_parity_net.py).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
# --durations: the slowest tests, so that the fast set can be kept fast (issue 12).
.venv/bin/python -m pytest --durations=25 "$@"
