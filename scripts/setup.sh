#!/usr/bin/env bash
# Create .venv (if absent) and install the project with its pinned dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: Python 3.11 is required (mindspore 2.10.0 and torch 2.13.0 CPU wheels); got $("$PY" --version)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c 'import mindspore, torch, numpy; print(f"setup: mindspore {mindspore.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")'
