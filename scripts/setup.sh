#!/usr/bin/env bash
# Installs everything ferryman and its test suite need on a Debian machine (run as root, or with sudo
# available): Debian packages that are missing, a virtualenv in .venv, and the package with its test extras.
# Idempotent and quick when nothing changed (a stamp keyed on pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(mosquitto mosquitto-clients curl prosody libcoap3-bin haproxy redis-server)
# DTLSSocket (tinydtls, aiocoap's DTLS server: coaps with pre-shared keys) is a source distribution: its build
# runs tinydtls's autogen.sh (autoreconf: autoconf, automake, libtool, pkg-config's macros) and compiles C.
DEBS+=(autoconf automake libtool pkg-config gcc libc6-dev make python3-dev)
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # policy-rc.d keeps the packaged mosquitto service from starting: ferryman starts its own brokers.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=".venv/.ferryman-installed"
want="$(cat pyproject.toml examples/topic-prefix-handler/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing ferryman and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]' -e examples/topic-prefix-handler
    echo "$want" > "$stamp"
fi
