#!/usr/bin/env bash
# Starts everything examples/nine-endpoints/ferryman.toml talks to, then the gateway in the foreground:
# mosquitto on 127.0.0.1:1883 (unless a broker already listens there), the development OCSP/CRL responder
# on 127.0.0.1:8889 and an HTTP echo target on 127.0.0.1:8888. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/ferryman ] || bash scripts/setup.sh
[ -f certs/ca.crt ] || .venv/bin/ferryman certs certs
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
if ! .venv/bin/python -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1",1883)))'; then
    mkdir -p .local
    mosquitto -c config/mosquitto.conf >.local/mosquitto.log 2>&1 &
    pids+=($!)
fi
.venv/bin/ferryman responder certs --address 127.0.0.1:8889 &
pids+=($!)
.venv/bin/ferryman http-echo --address 127.0.0.1:8888 &
pids+=($!)
.venv/bin/ferryman run --config examples/nine-endpoints/ferryman.toml "$@"
