# The two commands of the README: `make run` and `make test`. Both install what is missing first.
# `make unit` is the fast loop: the unit tests only (tests/unit: no mosquitto, prosody or gateway process).
.PHONY: setup run test unit bench lint

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run-local.sh

test: setup
	bash scripts/test.sh

unit: setup
	bash scripts/test.sh unit

bench: setup
	.venv/bin/python bench/mqtt_throughput.py

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && bash scripts/typecheck.sh
