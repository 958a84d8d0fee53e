"""The handler API: the actor base class handlers extend, and the chain sessions talk to.

A handler is a Pykka actor. Sessions *ask* it once per connection (``auth_connect`` -> Grant | Refusal |
None for "no opinion") and *tell* it notifications after the fact. Only notifications a handler actually
overrides are sent, so a handler that ignores ``on_publish`` costs nothing per packet.

Every protocol's sessions go through the chain: MQTT, MQTT-WS, HTTP and CoAP connections and requests, and
XMPP users of the bridge (``Session.protocol == "xmpp"``, ``identity`` and ``username`` the bare JID,
no password: the XMPP server authenticated the JID). A handler that has nothing to say about a protocol
returns None for its sessions (the built-in ``allow-all`` and ``static`` do so for ``"xmpp"``).

Two roles, two base classes: a ``HandlerActor`` is a member of the authorization chain (``auth_connect``
and the notifications); a rule actor (``actors/rules.py`` ``RuleActor``) is what the Router delivers bridge
``Message``s to (``handle``). ``HandlerActor`` has no ``handle`` any more. A third-party ``HandlerActor``
subclass that still defines ``handle`` (written when one class had both roles) keeps working as before:
it stays in the chain, and the Router still delivers to it if it registers itself (the Router routes to
any actor with a ``handle`` method); defining the class emits a ``DeprecationWarning``. New code puts the
routed part in a ``RuleActor`` of its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pykka
from loguru import logger

from .client_ids import ClientIdBinding
from .contracts import CombinedGrant, Grant, Refusal, RefusalCode, Session

__all__ = ["HandlerActor", "HandlerChain"]

_NOTIFICATIONS = ("on_connect", "on_publish", "on_subscribe", "on_unsubscribe", "on_disconnect")


class HandlerActor(pykka.ThreadingActor):
    """Base class of handler actors (authorization, rewriting through a grant's interceptors, plug-ins).

    Subclasses are found through the entry-point group ``ferryman.handlers`` and built with
    ``cls(options=..., settings=..., router=...)``. ``options`` is the handler's own ``[handler.options]``
    table. Override what you need; every method has a neutral default.
    """

    #: Name used in logs; defaults to the class name.
    name: ClassVar[str] = ""
    #: True: ``auth_connect`` may be called directly in the session's greenlet, with no message to this
    #: actor (a connect then costs no ask: bench/mqtt_connect_rate.py). Only for a handler whose
    #: ``auth_connect`` reads state that its own messages replace whole (never half-changed while it
    #: yields) and never blocks the gevent hub (waiting on a socket or on the hub's thread pool is fine:
    #: that blocks only the connection asking). Default False: asked through the actor's inbox.
    inline_connect: ClassVar[bool] = False
    #: Notifications (``on_connect``, ``on_disconnect``...) the chain may call directly in the session's
    #: greenlet instead of telling them, under the same conditions as ``inline_connect`` (they must not
    #: block the hub; a raised exception is logged and the session goes on). Default: none, all told.
    inline_notifications: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "handle" in cls.__dict__:
            warnings.warn(
                f"{cls.__qualname__} defines handle(): routed messages are the job of a RuleActor "
                "(ferryman.actors.rules); a HandlerActor with handle() still works but has both roles",
                DeprecationWarning,
                stacklevel=2,
            )

    def __init__(self, *, options: Mapping[str, Any] | None = None, settings: Any = None, router: Any = None):
        super().__init__()
        self.options: Mapping[str, Any] = options or {}
        self.settings = settings
        self.router = router

    @classmethod
    def validate_options(cls, options: Mapping[str, Any], settings: Any) -> list[str]:
        """Problems with this handler's configuration, for ``ferryman check`` (empty: fine)."""
        return []

    # -- checks (asked) --------------------------------------------------------------------------------
    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        """Decide a new connection: a Grant, a Refusal, or None for no opinion."""
        return None

    def inline_methods(self) -> dict[str, Any]:
        """The bound methods the chain may call directly (``inline_connect``, ``inline_notifications``),
        by name. Asked once per chain."""
        names = set(self.inline_notifications) & set(_NOTIFICATIONS)
        if self.inline_connect:
            names.add("auth_connect")
        return {name: getattr(self, name) for name in names}

    # -- notifications (told, after the fact) ----------------------------------------------------------
    def on_connect(self, session: Session, grant: Grant) -> None:
        pass

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        pass

    def on_subscribe(self, session: Session, topic_filters: list[str]) -> None:
        pass

    def on_unsubscribe(self, session: Session, topic_filters: list[str]) -> None:
        pass

    def on_disconnect(self, session: Session, reason: str) -> None:
        pass

    # -- operations ------------------------------------------------------------------------------------
    def reload(self, settings: Any) -> None:
        """New settings (SIGHUP). Handlers that hold policy push new grants to live sessions here."""
        self.settings = settings

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "handler {} failed", type(self).__name__
        )


class HandlerChain:
    """The ordered handlers a listener's sessions consult. Shared, immutable, safe to use from any greenlet.

    The combined decision: the first Refusal wins; grants are intersected; if every handler abstains the
    connection is refused (fail closed).

    ``client_ids``: the gateway-wide binding of MQTT client ids to identities; one chain is shared by
    every listener of a Gateway, and so is its binding (a fresh one, mode "identity", when not given).
    """

    def __init__(
        self,
        refs: Sequence[pykka.ActorRef[Any]],
        ask_timeout: float = 5.0,
        client_ids: ClientIdBinding | None = None,
    ) -> None:
        self.refs = tuple(refs)
        self.ask_timeout = ask_timeout
        self.client_ids = client_ids if client_ids is not None else ClientIdBinding()
        self._proxies = [ref.proxy() for ref in self.refs]
        inline = [self._inline_methods(proxy) for proxy in self._proxies]
        # One decide(session) per handler: its auth_connect called directly (``inline_connect``), or
        # asked through its inbox.
        self._deciders = [
            direct.get("auth_connect") or self._asker(proxy)
            for proxy, direct in zip(self._proxies, inline, strict=True)
        ]
        # Per notification, one call per handler that overrides it: direct, or a tell (``defer``).
        self._listeners: dict[str, list[Any]] = {}
        for ref, proxy, direct in zip(self.refs, self._proxies, inline, strict=True):
            cls = ref.actor_class
            for note in _NOTIFICATIONS:
                if getattr(cls, note) is not getattr(HandlerActor, note):
                    call = direct.get(note) or getattr(proxy, note).defer
                    self._listeners.setdefault(note, []).append(call)
        # Per-packet notifications are the costly ones: sessions check these flags before building arguments.
        self.wants_publish = bool(self._listeners.get("on_publish"))
        self.wants_subscribe = bool(self._listeners.get("on_subscribe"))
        self.wants_unsubscribe = bool(self._listeners.get("on_unsubscribe"))

    def with_first(self, refs: Sequence[pykka.ActorRef[Any]]) -> HandlerChain:
        """This chain with ``refs`` asked before its own handlers (same timeout, same client id binding):
        how a component puts a handler for its own sessions in front, e.g. the bridge's XMPP JID rules,
        which decide ``"xmpp"`` sessions and abstain for every other."""
        return HandlerChain([*refs, *self.refs], self.ask_timeout, self.client_ids)

    def _inline_methods(self, proxy: Any) -> dict[str, Any]:
        ask = getattr(proxy, "inline_methods", None)  # any actor with auth_connect may be in a chain
        return dict(ask().get(timeout=self.ask_timeout)) if ask is not None else {}

    def _asker(self, proxy: Any) -> Any:
        timeout = self.ask_timeout
        return lambda session: proxy.auth_connect(session).get(timeout=timeout)

    def connect(self, session: Session) -> Grant | Refusal:
        grants: list[Grant] = []
        for decide in self._deciders:
            try:
                answer = decide(session)
            except pykka.Timeout:
                logger.error("handler did not answer auth_connect within {}s: refusing", self.ask_timeout)
                return Refusal(RefusalCode.SERVER_UNAVAILABLE, "authorization handler timed out")
            except pykka.ActorDeadError:
                return Refusal(RefusalCode.SERVER_UNAVAILABLE, "authorization handler is not running")
            except Exception as exc:  # a handler's bug refuses this connection, never crashes the session
                logger.opt(exception=exc).error("auth_connect raised: refusing {!r}", session)
                return Refusal(RefusalCode.SERVER_UNAVAILABLE, "authorization handler failed")
            if isinstance(answer, Refusal):
                return answer
            if isinstance(answer, Grant):
                grants.append(answer)
        if not grants:
            return Refusal(RefusalCode.NOT_AUTHORIZED, "no handler granted the connection")
        return grants[0] if len(grants) == 1 else CombinedGrant(grants)

    def _notify(self, note: str, *args: Any) -> None:
        for call in self._listeners.get(note, ()):
            try:
                call(*args)
            except pykka.ActorDeadError:
                pass
            except Exception as exc:  # an inline notification's bug must not end the session
                logger.opt(exception=exc).error("{} raised", note)

    def on_connect(self, session: Session, grant: Grant) -> None:
        self._notify("on_connect", session, grant)

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        self._notify("on_publish", session, topic, payload)

    def on_subscribe(self, session: Session, topic_filters: list[str]) -> None:
        self._notify("on_subscribe", session, topic_filters)

    def on_unsubscribe(self, session: Session, topic_filters: list[str]) -> None:
        self._notify("on_unsubscribe", session, topic_filters)

    def on_disconnect(self, session: Session, reason: str) -> None:
        self._notify("on_disconnect", session, reason)
