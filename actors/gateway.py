"""The Gateway: the root supervisor. Builds the actor tree from the settings in dependency order (router,
handlers, listeners, metrics) and stops it in reverse, in a ``finally``.

It is handed its listener and handler factories by the wiring in ``ferryman/`` or finds them by name
through the entry-point groups ``ferryman.listeners`` and ``ferryman.handlers``, so nothing in ``actors/``
imports a protocol or a handler.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

import gevent
import pykka
from loguru import logger

from .asyncio_host import SharedHost
from .bootstrap import verify
from .client_ids import ClientIdBinding
from .contracts import Refusal, RefusalCode
from .errors import GatewayError
from .handler import HandlerActor, HandlerChain
from .metrics import Metrics, MetricsServer
from .router import Router
from .services import Built, ListenerServices

__all__ = ["Built", "Gateway", "GatewayError", "ListenerServices", "load_entry_point"]

T = TypeVar("T")
HEALTH_TIMEOUT = 1.0  # seconds a part may take to say how it is, in /health
ListenerFactory = Any  # a pykka actor class: cls.start(settings, chain, metrics[, services]) -> ActorRef
#: A builder of further parts (the bridge): the parts it started, and the ports it offers to listeners.
Component = Callable[["Gateway"], "Built | list[Any]"]


def load_entry_point(group: str, name: str) -> Any:
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        names = sorted(ep.name for ep in entry_points(group=group))
        raise GatewayError(f"no {group} entry point named {name!r} (installed: {', '.join(names) or 'none'})")
    return found[0].load()


class Gateway:
    def __init__(
        self,
        settings: Any,
        listener_factories: Mapping[str, ListenerFactory] | None = None,
        handler_factories: Mapping[str, type[HandlerActor]] | None = None,
        components: Sequence[Component] = (),
        *,
        handlers: Sequence[pykka.ActorRef[Any]] = (),
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        #: One worker of several (``ferryman run --workers N``): listeners bind SO_REUSEPORT sockets.
        self.reuse_port = reuse_port
        self._listener_factories = dict(listener_factories or {})
        self._handler_factories = dict(handler_factories or {})
        # Builders of further parts (the bridge): each returns what it started, actor refs or objects with
        # stop(), in start order, and the ports it offers to listeners (a Built; a plain list offers none).
        # They start after the handlers and stop, in reverse, before them.
        self._components = list(components)
        # Handler actors the embedding program started itself (``handlers=[MyHandler.start(...)]``): they
        # join the chain after the configured ones, and the program, not the Gateway, stops them.
        self.given_handlers: list[pykka.ActorRef[Any]] = list(handlers)
        self.parts: list[Any] = []
        #: The one asyncio loop of this gateway (slixmpp, aiocoap), running while someone holds a lease.
        self.asyncio = SharedHost()
        self.services = ListenerServices(asyncio=self.asyncio, reuse_port=reuse_port)
        self.metrics = Metrics()
        self.router: pykka.ActorRef[Any] | None = None
        self.handlers: list[pykka.ActorRef[Any]] = []
        #: The handler chain every listener is given; components (the bridge) ask it for their own sessions.
        self.chain: HandlerChain | None = None
        self.listeners: dict[str, pykka.ActorRef[Any]] = {}
        self.metrics_server: MetricsServer | None = None
        self.started_at = 0.0
        self.stopping = False

    # -- factories -------------------------------------------------------------------------------------
    def handler_class(self, name: str) -> type[HandlerActor]:
        cls: Any = self._handler_factories.get(name) or load_entry_point("ferryman.handlers", name)
        if not (isinstance(cls, type) and issubclass(cls, HandlerActor)):
            raise GatewayError(f"handler {name!r} is not a HandlerActor subclass: {cls!r}")
        return cls

    def listener_class(self, protocol: str) -> ListenerFactory:
        return self._listener_factories.get(protocol) or load_entry_point("ferryman.listeners", protocol)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        problems = verify()
        if problems:
            raise GatewayError("; ".join(problems))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()

    def _start(self) -> None:
        s = self.settings
        for ref in self.given_handlers:
            if not (isinstance(ref, pykka.ActorRef) and issubclass(ref.actor_class, HandlerActor)):
                raise GatewayError(f"handlers=: not a started HandlerActor (an ActorRef): {ref!r}")
            if not ref.is_alive():
                raise GatewayError(f"handlers=: {ref.actor_class.__name__} is not running")
        self.router = Router.start()
        specs: list[tuple[str, Mapping[str, Any]]] = [(s.auth.handler, s.auth.options)]
        specs += [(h.name, h.options) for h in s.handlers]
        for name, options in specs:
            cls = self.handler_class(name)
            errors = cls.validate_options(options, s)
            if errors:
                raise GatewayError(f"handler {name!r}: " + "; ".join(errors))
            self.handlers.append(cls.start(options=options, settings=s, router=self.router))
        # One client id binding for every listener (actors/client_ids.py), with the bridge's id reserved.
        refs = [*self.handlers, *self.given_handlers]
        chain = self.chain = HandlerChain(refs, client_ids=ClientIdBinding.for_settings(s))
        ports: dict[str, Any] = {}
        for build in self._components:
            built = build(self)
            if isinstance(built, Built):
                self.parts.extend(built.parts)
                ports.update(built.ports)
                self.handlers.extend(built.handlers)  # reloaded with the others, stopped after the parts
            else:
                self.parts.extend(built)
        # Everything a listener uses beside its settings, the chain and the metrics: built above, handed over.
        self.services = ListenerServices(
            router=self.router, ports=ports, asyncio=self.asyncio, reuse_port=self.reuse_port
        )
        for ls in s.listeners:
            listener_cls = self.listener_class(ls.protocol)
            problems = listener_cls.validate_settings(ls)
            if problems:
                raise GatewayError(f"listener {ls.name!r}: " + "; ".join(problems))
            try:
                if _takes_services(listener_cls):
                    ref = listener_cls.start(ls, chain, self.metrics, self.services)
                else:  # a plug-in written for start(settings, chain, metrics)
                    ref = listener_cls.start(ls, chain, self.metrics)
                self.listeners[ls.name] = ref
            except OSError as exc:
                raise GatewayError(
                    f"listener {ls.name!r} cannot listen on {ls.address}: {exc.strerror or exc}"
                ) from exc
        if s.metrics.address:
            host, _, port = s.metrics.address.rpartition(":")
            self.metrics_server = MetricsServer((host.strip("[]"), int(port)), self.metrics, self.health)
            try:
                self.metrics_server.start()
            except OSError as exc:
                raise GatewayError(
                    f"metrics cannot listen on {s.metrics.address}: {exc.strerror or exc}"
                ) from exc
        logger.info(
            "gateway started: {} listener(s), handlers {}",
            len(self.listeners),
            [n for n, _ in specs] + [ref.actor_class.__name__ for ref in self.given_handlers],
        )

    def reload(self, settings: Any) -> None:
        """New settings (SIGHUP): handlers get them; listeners keep running as they are."""
        self.settings = settings
        for ref in [*self.handlers, *self.given_handlers]:
            ref.proxy().reload.defer(settings)
        logger.info("settings reloaded from {}", getattr(settings, "source", "?"))

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop in reverse order: listeners stop accepting, sessions are closed, then handlers and router.

        Handlers passed in as ``handlers=`` are left running: whoever started them stops them."""
        if self.stopping:
            return
        self.stopping = True
        timeout = (
            drain_timeout if drain_timeout is not None else getattr(self.settings, "shutdown_timeout", 5.0)
        )
        refusal = Refusal(RefusalCode.SERVER_SHUTTING_DOWN, "gateway shutting down")
        listeners = list(self.listeners.values())
        for ref in listeners:
            _quiet(ref, lambda r: r.proxy().stop_accepting().get(timeout=timeout))
        closed = 0
        for ref in listeners:
            closed += (
                _quiet(ref, lambda r: r.proxy().close_all(refusal, timeout).get(timeout=timeout + 2)) or 0
            )
        if closed:
            gevent.sleep(0)  # let the pumps see their sockets close and send their notifications
        if self.metrics_server is not None:
            _quiet(self.metrics_server, lambda m: m.stop())
        for ref in reversed(listeners):
            _quiet(ref, lambda r: r.stop(timeout=timeout))
        for part in reversed(self.parts):
            _quiet(part, lambda p: p.stop(timeout=timeout))
        for ref in [*reversed(self.handlers), *([self.router] if self.router else [])]:
            _quiet(ref, lambda r: r.stop(timeout=timeout))
        logger.info("gateway stopped ({} session(s) closed)", closed)

    # -- observability ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        listeners = {name: ref.is_alive() for name, ref in self.listeners.items()}
        # A bridge-only gateway (no listeners) is healthy too: it was answering 503 for ever.
        ok = bool(listeners or self.parts) and all(listeners.values()) and not self.stopping
        parts = self._parts_health()
        # The bridge's sessions in one word: "ok", or the first part's that is not (e.g. "flapping": its
        # MQTT session keeps reconnecting). Informative like "parts": "status" (and the HTTP code) stay.
        states = [
            "dead" if not p.get("alive", True) else "unresponsive" if "error" in p else p.get("status", "ok")
            for p in parts.values()
        ]
        bridge = next((state for state in states if state != "ok"), "ok") if parts else None
        return {
            "status": "ok" if ok else "unavailable",
            "listeners": listeners,
            "handlers": [
                ref.actor_class.__name__ for ref in [*self.handlers, *self.given_handlers] if ref.is_alive()
            ],
            "parts": parts,
            **({"bridge": bridge} if bridge is not None else {}),
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else 0,
        }

    def _parts_health(self) -> dict[str, Any]:
        """What each part that can tell (an actor with a ``health()`` method, e.g. the bridge's MQTT and
        XMPP sessions) says of itself; informative, it does not change ``status`` (a broker outage would
        otherwise get a healthy gateway restarted)."""
        out: dict[str, Any] = {}
        for part in self.parts:
            tells = isinstance(part, pykka.ActorRef) and callable(getattr(part.actor_class, "health", None))
            if not tells:
                continue
            name = part.actor_class.__name__
            try:
                out[name] = part.proxy().health().get(timeout=HEALTH_TIMEOUT)
            except pykka.ActorDeadError:
                out[name] = {"alive": False}
            except pykka.Timeout:
                out[name] = {"alive": True, "error": f"no answer within {HEALTH_TIMEOUT} s"}
        return out

    def listener_address(self, name: str) -> tuple[str, int]:
        address: tuple[str, int] = self.listeners[name].proxy().bound_address().get(timeout=5)
        return address


def _takes_services(listener_cls: Any) -> bool:
    """Whether a listener class's constructor takes the fourth argument, ``services``."""
    try:
        params = inspect.signature(listener_cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 5 or any(p.kind is p.VAR_POSITIONAL for p in params)  # self + 4


def _quiet(part: T, fn: Callable[[T], Any]) -> Any:
    """Shutdown keeps going past one part's failure; the failure is logged."""
    try:
        return fn(part)
    except pykka.ActorDeadError:
        return None
    except Exception as exc:
        logger.warning("during shutdown: {}", exc)
        return None
