#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against real servers. Exit code 5 (no tests ran) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check . || exit 1
.venv/bin/ruff format --check . || exit 1
bash scripts/typecheck.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests: failing"; exit 1; fi
exit "$rc"
