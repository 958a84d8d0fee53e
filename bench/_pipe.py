"""A plain gevent byte pipe: the floor any gevent proxy pays, with no MQTT framing at all.

    .venv/bin/python bench/_pipe.py LISTEN_PORT TARGET_PORT

Same shape as ferryman's data plane (one greenlet per direction, recv 64 KiB, one sendall per chunk) minus
everything MQTT. ``mqtt_throughput.py --pipe`` runs the load through it as a third path, so the cost of
the framed path can be told apart from the cost of being a gevent process at all on the same noisy machine.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import contextlib
import signal
import socket
import sys

import gevent
from gevent.server import StreamServer

CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def main() -> int:
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])

    def handle(client: socket.socket, _addr: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):  # as the gateway does: small packets go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        down = gevent.spawn(_pump, upstream, client)
        _pump(client, upstream)
        down.join()
        upstream.close()
        client.close()

    server = StreamServer(("127.0.0.1", listen_port), handle)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
