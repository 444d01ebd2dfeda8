#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, the import-boundary contracts, mypy (its
# settings and the checked folders are in pyproject.toml, [tool.mypy]) and the tests not
# marked slow: the fast set (pytest's default, -m "not slow and not gate") plus the gate, the
# quick parity set's costliest cases, so that CI runs the whole quick parity set once
# (tests/test_parity_suite.py and test_parity_net.py).
# Extra arguments go to pytest after ours (its last -m wins): `bash scripts/test.sh -m ""` runs
# the full suite, `bash scripts/test.sh -m slow` the slow tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
# --durations: the slowest tests, so that the fast set can be kept fast (issue 12).
.venv/bin/python -m pytest --durations=25 -m "not slow" "$@"
