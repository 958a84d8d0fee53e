"""The ``http`` listener actor: a pywsgi server that is an authenticating reverse proxy in front of an
``http://`` / ``https://`` target, or (``target = "mqtt"``) turns POSTs into MQTT publishes of the bridge."""

from __future__ import annotations

from typing import Any

import pykka
from loguru import logger

from ferryman.actors.contracts import Refusal
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.services import ListenerServices
from ferryman.protocols.proxy_protocol import TrustedProxies
from ferryman.protocols.tls.server import TlsTerminator

from .app import HttpApp
from .kind import HTTP_KIND
from .publish import PORT, Publisher
from .server import HttpServer
from .upstream import Upstream

__all__ = ["HttpListener"]


class HttpListener(pykka.ThreadingActor):
    """One ``[[listener]]`` with ``protocol = "http"`` (plain, TLS or mTLS)."""

    kind = HTTP_KIND  # its settings keys and checks, for the loader (ferryman/wiring.py)

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        """What this listener cannot do with these settings (checked by the Gateway and `ferryman check`).
        Publish mode also needs ``[bridge.mqtt]``: the Gateway refuses to start without it."""
        problems = []
        tls = settings.tls
        if tls is not None and tls.verify and not tls.client_ca_file:
            problems.append("revocation checks (tls.verify) need tls.client_ca_file (mTLS)")
        target = settings.parsed_target
        if target.scheme not in ("http", "https", "mqtt"):
            problems.append(
                f"target scheme {target.scheme!r}: an http listener forwards to http:// or https://"
            )
        if target.is_publish and settings.bypass:
            problems.append(
                'bypass is for the reverse proxy: publish mode (target = "mqtt") needs credentials'
            )
        return problems

    def __init__(
        self,
        settings: Any,
        chain: HandlerChain,
        metrics: Metrics,
        services: ListenerServices | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        target = settings.parsed_target
        services = services if services is not None else ListenerServices()
        publisher: Publisher | None = None
        upstream = None
        if target.is_publish:
            # The bridge's publisher (bridge/http_mqtt.py), handed over by the Gateway; GatewayError without.
            publisher = services.publish_port(PORT, settings.name)
        else:
            upstream = Upstream(target, settings.target_tls, settings.connect_timeout)
        self.upstream = upstream
        tls = TlsTerminator(settings.tls) if settings.tls is not None else None
        self.app = HttpApp(settings, chain, metrics, upstream, "https" if tls else "http", publisher)
        self.server = HttpServer(
            (settings.host, settings.port),
            self.app,
            chain,
            metrics,
            tls,
            settings.connect_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            idle_timeout=settings.idle_timeout,
            trusted=TrustedProxies(settings.trusted_proxies) if settings.proxy_protocol else None,
        )
        self.server.reuse_port = services.reuse_port  # one socket per worker (ferryman run --workers N)
        self.server.init_socket()
        self.address: tuple[str, int] = self.server.address[:2]

    def on_start(self) -> None:
        self.server.start()
        logger.info(
            "listener {!r}: http on {}:{} -> {}", self.settings.name, *self.address, self.settings.target
        )
        if self.app.publisher is not None:
            logger.info("listener {!r}: publishing through the bridge's MQTT session", self.settings.name)

    def bound_address(self) -> tuple[str, int]:
        return self.address

    @classmethod
    def in_every_worker(cls, settings: Any) -> bool:
        """With worker processes: a reverse proxy runs in every worker; publish mode only beside the bridge's
        MQTT session, in worker 0."""
        return not settings.parsed_target.is_publish

    def stop_accepting(self) -> None:
        if not self.server.closed:
            self.server.close()

    def close_all(self, refusal: Refusal, drain: float = 0.0) -> int:
        """Idle connections are closed at once; requests under way may finish within ``drain`` seconds."""
        return self.server.close_connections(drain)

    def on_stop(self) -> None:
        self.stop_accepting()
        self.server.close_connections(0.0)
        if self.upstream is not None:
            self.upstream.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "listener {!r} failed", self.settings.name
        )
