#!/usr/bin/env bash
# Runs examples/replicas on 127.0.0.1 (docs/scale.md): one mosquitto with persistence, two ferryman replicas
# in front of it, HAProxy in TCP mode (send-proxy-v2, health checks on /health) in front of them:
#
#   devices -> HAProxy :1888 (leastconn) / :1889 (client-id stickiness) -> ferryman a :1891 / b :1892 -> mosquitto :1890
#              stats http://127.0.0.1:8404/stats                             /health :9101 / :9102
#
# Ctrl-C or SIGTERM stops every process it started, by PID (SIGTERM, then SIGKILL after 10 s), and says how
# each one ended. A process that dies on its own (try: kill -9 "$(cat .local/replicas/ferryman-a.pid)") is
# left dead and the others keep running: that is the failover to watch.
#
# Environment (all optional): the ports BROKER_PORT HAPROXY_PORT HAPROXY_STICKY_PORT HAPROXY_STATS_PORT
# A_PORT A_HEALTH_PORT B_PORT B_HEALTH_PORT (defaults above); STATE_DIR, where logs, pid files, mosquitto's
# database and HAProxy's socket go (default .local/replicas); PYTHON, an interpreter with ferryman installed
# (default .venv/bin/python).
set -euo pipefail
# Job control: each process started below gets a process group of its own, so Ctrl-C reaches this script
# alone and it stops the others one by one (not all of them at once, and not twice).
set -m
cd "$(dirname "$0")/../.."
example=examples/replicas

BROKER_PORT=${BROKER_PORT:-1890}
A_PORT=${A_PORT:-1891}
A_HEALTH_PORT=${A_HEALTH_PORT:-9101}
B_PORT=${B_PORT:-1892}
B_HEALTH_PORT=${B_HEALTH_PORT:-9102}
HAPROXY_PORT=${HAPROXY_PORT:-1888}
HAPROXY_STICKY_PORT=${HAPROXY_STICKY_PORT:-1889}
HAPROXY_STATS_PORT=${HAPROXY_STATS_PORT:-8404}
STATE_DIR=${STATE_DIR:-.local/replicas}
if [ -z "${PYTHON:-}" ]; then
    [ -x .venv/bin/python ] || bash scripts/setup.sh
    PYTHON=.venv/bin/python
fi
for tool in mosquitto haproxy; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed (bash scripts/setup.sh installs it)" >&2; exit 1; }
done

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)

# Every port must be free before anything starts: a clear message instead of a half-started stack.
"$PYTHON" - "$BROKER_PORT" "$A_PORT" "$A_HEALTH_PORT" "$B_PORT" "$B_HEALTH_PORT" "$HAPROXY_PORT" \
    "$HAPROXY_STICKY_PORT" "$HAPROXY_STATS_PORT" <<'PY'
import socket, sys
busy = []
for port in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            busy.append(port)
if busy:
    sys.exit(f"run.sh: ports in use on 127.0.0.1: {', '.join(busy)} (set the *_PORT variables to move them)")
PY

names=()
pids=()

alive() {  # a child that has not exited: one of its threads is not a zombie (exited, it waits to be reaped)
    local task state
    for task in /proc/"$1"/task/*/stat; do
        state=$(sed 's/.*) //' "$task" 2>/dev/null | cut -d' ' -f1)
        [ -n "$state" ] && [ "$state" != Z ] && return 0
    done
    return 1
}

stop() {  # stop EXIT_CODE
    trap - INT TERM EXIT
    local code=$1 i p rc deadline
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # front to back, one at a time: HAProxy first, the broker last
        p=${pids[i]}
        kill -TERM "$p" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while alive "$p" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if alive "$p"; then
            echo "run.sh: ${names[i]} (pid $p) did not stop within 10 s: SIGKILL" >&2
            kill -KILL "$p" 2>/dev/null || true
        fi
        rc=0
        wait "$p" 2>/dev/null || rc=$?
        if [ "$rc" -gt 128 ]; then
            echo "run.sh: ${names[i]} (pid $p) ended by signal $((rc - 128))" >&2
        else
            echo "run.sh: ${names[i]} (pid $p) exited with $rc" >&2
        fi
        rm -f "$STATE_DIR/${names[i]}.pid"
    done
    exit "$code"
}
trap 'stop 0' INT TERM  # Ctrl-C / SIGTERM: a normal end
trap 'stop $?' EXIT     # the end of the script, or a failure while starting: its exit code

start() {  # start NAME COMMAND...: in the background, output to STATE_DIR/NAME.log, pid to STATE_DIR/NAME.pid
    local name=$1
    shift
    "$@" >"$STATE_DIR/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
    echo $! >"$STATE_DIR/$name.pid"
}

wait_ready() {  # wait_ready NAME PORT [HTTP_PATH]: until the port accepts (and the path answers 200), 20 s
    "$PYTHON" - "$2" "${3:-}" <<'PY' || { echo "run.sh: $1 did not come up; its log: $STATE_DIR/$1.log" >&2; exit 1; }
import socket, sys, time, urllib.request
port, path = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        if path:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    sys.exit(0)
        else:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

# The broker: the example's config with its port and a persistence directory the broker can write to (started
# as root, mosquitto runs as the "mosquitto" user).
mkdir -p "$STATE_DIR/mosquitto"
if [ "$(id -u)" = 0 ] && getent passwd mosquitto >/dev/null; then
    chown mosquitto: "$STATE_DIR/mosquitto"
    if ! runuser -u mosquitto -- test -w "$STATE_DIR/mosquitto"; then
        echo "run.sh: warning: the mosquitto user cannot reach $STATE_DIR/mosquitto: sessions will not be saved" \
            "(set STATE_DIR to a directory under one it can enter, e.g. /var/tmp/replicas)" >&2
    fi
fi
sed -e "s/^listener 1890 127.0.0.1$/listener $BROKER_PORT 127.0.0.1/" "$example/mosquitto.conf" >"$STATE_DIR/mosquitto.conf"
echo "persistence_location $STATE_DIR/mosquitto/" >>"$STATE_DIR/mosquitto.conf"
start mosquitto mosquitto -c "$STATE_DIR/mosquitto.conf"
wait_ready mosquitto "$BROKER_PORT"

# The replicas: the example's files, with the addresses from the environment.
for replica in a b; do
    if [ "$replica" = a ]; then port=$A_PORT health=$A_HEALTH_PORT; else port=$B_PORT health=$B_HEALTH_PORT; fi
    start "ferryman-$replica" env \
        FERRYMAN_LISTENER__0__ADDRESS="127.0.0.1:$port" \
        FERRYMAN_LISTENER__0__TARGET="tcp://127.0.0.1:$BROKER_PORT" \
        FERRYMAN_METRICS__ADDRESS="127.0.0.1:$health" \
        "$PYTHON" -m ferryman run --config "$example/ferryman-$replica.toml"
done
wait_ready ferryman-a "$A_HEALTH_PORT" /health
wait_ready ferryman-b "$B_HEALTH_PORT" /health

# HAProxy in front, in the foreground of its own process (-db), configured from the environment.
start haproxy env \
    HAPROXY_PORT="$HAPROXY_PORT" HAPROXY_STICKY_PORT="$HAPROXY_STICKY_PORT" HAPROXY_STATS_PORT="$HAPROXY_STATS_PORT" \
    HAPROXY_SOCKET="$STATE_DIR/haproxy.sock" \
    FERRYMAN_A="127.0.0.1:$A_PORT" FERRYMAN_A_HEALTH_PORT="$A_HEALTH_PORT" \
    FERRYMAN_B="127.0.0.1:$B_PORT" FERRYMAN_B_HEALTH_PORT="$B_HEALTH_PORT" \
    haproxy -db -f "$example/haproxy.cfg"
wait_ready haproxy "$HAPROXY_STATS_PORT" /stats  # HAProxy binds every frontend before it serves any

echo "run.sh: ready: MQTT on 127.0.0.1:$HAPROXY_PORT (client-id sticky: $HAPROXY_STICKY_PORT)," \
    "HAProxy stats http://127.0.0.1:$HAPROXY_STATS_PORT/stats, logs and pids in $STATE_DIR" >&2
wait || true  # until every process has ended, or a signal
