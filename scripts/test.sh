#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest on the unit tests (tests/unit, no servers) and the integration
# tests (tests/integration, against real mosquitto, prosody and gateway processes).
# `scripts/test.sh unit`: the unit tests only, no lint. Other arguments go to pytest.
# Exit code 5 (no tests ran) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "unit" ]; then
    shift
    .venv/bin/python -m pytest tests/unit "$@"
else
    .venv/bin/ruff check . || exit 1
    .venv/bin/ruff format --check . || exit 1
    bash scripts/typecheck.sh || exit 1
    .venv/bin/python -m pytest "$@"  # testpaths (pyproject.toml): tests/unit, then tests/integration
fi
rc=$?
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests: failing"; exit 1; fi
exit "$rc"
