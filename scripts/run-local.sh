#!/usr/bin/env bash
# Runs the gateway with its embedded defaults (MQTT on 127.0.0.1:1884 in front of a broker on 127.0.0.1:1883).
# When no broker listens on 127.0.0.1:1883, starts mosquitto from the project's own config first and stops
# it again when the gateway exits. Extra arguments go to `ferryman run`.
set -euo pipefail
cd "$(dirname "$0")/.."
broker_pid=""
if ! .venv/bin/python -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1",1883)))'; then
    mkdir -p .local
    echo "run: no broker on 127.0.0.1:1883, starting mosquitto with config/mosquitto.conf"
    mosquitto -c config/mosquitto.conf >.local/mosquitto.log 2>&1 &
    broker_pid=$!
    trap '[ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; wait "$broker_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        .venv/bin/python -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1",1883)))' && break
        sleep 0.1
    done
fi
.venv/bin/ferryman run "$@"
