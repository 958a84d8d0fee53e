#!/usr/bin/env bash
# mypy over the `ferryman` namespace. The repository maps top-level folders into it (pyproject package-dir),
# which mypy cannot follow through setuptools' editable finder, so it checks a tree of symlinks that has
# the installed shape: .typecheck/ferryman/{actors,config,protocols,bridge} -> the real folders.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .typecheck && mkdir -p .typecheck/ferryman
for f in ferryman/*.py ferryman/py.typed; do ln -s "../../$f" ".typecheck/ferryman/$(basename "$f")"; done
for d in actors config protocols bridge; do ln -s "../../$d" ".typecheck/ferryman/$d"; done
cd .typecheck && MYPYPATH=. ../.venv/bin/mypy --config-file ../pyproject.toml -p ferryman "$@"
