#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, the import-boundary contracts, the fast tests,
# and the quick parity set.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
# The quick parity set, as a report (the tests above also run it case by case).
.venv/bin/irkd parity --quick --out runs/ci/parity-quick.json
