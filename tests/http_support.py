"""Helpers of the http listener tests: curl as the independent client, the echo target as a process, and
mosquitto_sub waiting for its SUBACK before the test publishes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import free_port, wait_port

ECHO = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from ferryman_devtools.echo import main\n"
    "sys.exit(main(['--address', '127.0.0.1:' + sys.argv[1]]))\n"
)


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _parse(raw: bytes) -> Reply:
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
        raw = rest  # an interim "100 Continue": the real response follows
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Reply(status, headers, rest)


def curl(url: str, *args: str, data: bytes | None = None, timeout: float = 20) -> Reply:
    """One request with curl (``-i``: the status line and headers come back with the body)."""
    cmd = ["curl", "-s", "-i", *args]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    out = subprocess.run([*cmd, url], input=data, capture_output=True, timeout=timeout)
    if out.returncode != 0:
        raise CurlFailed(out.returncode, out.stderr.decode(errors="replace"))
    return _parse(out.stdout)


class CurlFailed(Exception):
    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(f"curl exited {code}: {stderr}")
        self.code = code


class EchoTarget:
    """``ferryman_devtools.echo`` in a process of its own, on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO, str(self.port)], stdout=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class SilentTarget:
    """Accepts TCP connections (the kernel does, from the backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def stop(self) -> None:
        self.sock.close()


class Subscriber:
    """``mosquitto_sub -d`` on one topic (line-buffered through ``stdbuf``: its debug lines must arrive as
    they happen); ``start`` returns once the broker has acknowledged the SUBSCRIBE.
    Each received message is a line ``<qos> <retain> <topic> <payload>``."""

    def __init__(self, port: int, topic: str, count: int = 1) -> None:
        self.cmd = [
            "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "2", "-t", topic,
            "-C", str(count), "-d", "-F", "MSG %q %r %t %p", "-W", "15", "-V", "mqttv5",
        ]  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Subscriber:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "SUBACK" in line:
                return self
        raise AssertionError("mosquitto_sub never got its SUBACK")

    def messages(self, timeout: float = 15) -> list[str]:
        """Every message until mosquitto_sub exits (after ``count`` messages, or ``-W 15`` seconds)."""
        assert self.proc is not None and self.proc.stdout is not None
        got = [line[4:].rstrip("\n") for line in self.proc.stdout if line.startswith("MSG ")]
        self.proc.wait(timeout)
        return got


def pki_args(pki: Path, client: str | None = None) -> list[str]:
    args = ["--cacert", str(pki / "ca.crt")]
    if client:
        args += ["--cert", str(pki / f"{client}.crt"), "--key", str(pki / f"{client}.key")]
    return args
