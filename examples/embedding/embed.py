"""ferryman as a library: build the settings in code, hand the gateway a handler you started, run, stop.

    python examples/embedding/embed.py --port 1884 --broker 127.0.0.1:1883 [--seconds N]

Devices connect to 127.0.0.1:<port> with MQTT; they may publish and subscribe only under ``embedded/#``.
Stops on SIGINT / SIGTERM (or after ``--seconds``) and prints how many publishes went through.
"""

from gevent import monkey

monkey.patch_all()  # first: before ferryman (and with it pykka, ssl, asyncio, loguru, paho) is imported

import argparse
import signal
import sys
from collections.abc import Sequence

import gevent
from gevent.event import Event

from ferryman import GatewayError, Grant, HandlerActor, Session, build_gateway
from ferryman.actors.log import configure_logging
from ferryman.config import AuthSettings, ListenerSettings, MetricsSettings, Settings


class EmbeddedOnly(HandlerActor):
    """Grants every connection ``embedded/#`` (both ways) and counts the publishes that pass."""

    def on_start(self) -> None:
        self.count = 0

    def auth_connect(self, session: Session) -> Grant:
        return Grant(publish=[self.options["root"]], subscribe=[self.options["root"]])

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        self.count += 1  # told only for publishes the grant let through

    def published(self) -> int:
        return self.count


def settings_for(port: int, broker: str) -> Settings:
    """Settings built by hand are taken as given (``load_settings`` is what validates a file)."""
    return Settings(
        metrics=MetricsSettings(address=""),  # no /metrics endpoint: this program has its own
        listeners=(
            ListenerSettings(
                name="mqtt", protocol="mqtt", address=f"127.0.0.1:{port}", target=f"tcp://{broker}"
            ),
        ),
        # The configured auth handler comes first in the chain; allow-all grants everything, so the
        # intersection with EmbeddedOnly's grant is EmbeddedOnly's.
        auth=AuthSettings(handler="allow-all"),
        source="<embedded>",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="MQTT port devices connect to")
    parser.add_argument("--broker", required=True, help="the MQTT broker, host:port")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: on a signal)")
    args = parser.parse_args(argv)
    configure_logging("info")

    settings = settings_for(args.port, args.broker)
    handler = EmbeddedOnly.start(options={"root": "embedded/#"}, settings=settings)
    gateway = build_gateway(settings, handlers=[handler])
    stop = Event()
    signals = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        try:
            gateway.start()
        except GatewayError as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
        print(f"listening on {gateway.listener_address('mqtt')}", flush=True)
        stop.wait(timeout=args.seconds or None)
        gateway.stop()  # closes the device sessions; leaves `handler` running: it is ours
        print(f"published: {handler.proxy().published().get(timeout=5)}", flush=True)
    finally:
        gateway.stop()  # a no-op when already stopped
        handler.stop()
        for s in signals:
            s.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
