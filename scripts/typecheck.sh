#!/usr/bin/env bash
# mypy (strict, settings in pyproject.toml) over the `ferryman` package. ferryman/{actors,config,protocols,bridge}
# are committed symlinks to the top-level folders, so the package has its installed shape in the repository.
# Also the developer tooling beside it, ferryman_devtools (a top-level folder of that name: no mapping either).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/mypy -p ferryman -p ferryman_devtools "$@"
