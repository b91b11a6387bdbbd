#!/usr/bin/env bash
# Set up (idempotent), lint (ruff: pyflakes, pycodestyle, import order), build the API reference with
# warnings as errors, then run the whole test suite under a virtual X screen, listing the slowest tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff check"
.venv/bin/ruff check .
echo "== API reference (sphinx, warnings as errors)"
bash scripts/docs.sh
echo "== pytest"
exec .venv/bin/python -m pytest tests --durations=15 "$@"
