"""The ``allow-all`` handler: every connection may publish and subscribe to everything (``#``).

For development and for deployments where the broker itself authorizes. ``$``-topics stay out of reach
(MQTT's own rule: ``#`` does not match them).

XMPP users of the bridge (sessions of protocol ``"xmpp"``) are not its business: it abstains (None) and
``[bridge.xmpp]`` (``allowed_jids``, rules, defaults) and any plug-in handler decide them. Granting them
everything here would change nothing but ``$`` topics, which a JID's explicit rule may grant.
"""

from __future__ import annotations

from loguru import logger

from ferryman.actors.contracts import Grant, Session
from ferryman.actors.handler import HandlerActor

__all__ = ["AllowAllHandler"]


class AllowAllHandler(HandlerActor):
    name = "allow-all"
    inline_connect = True  # stateless: the chain calls auth_connect in the session's greenlet

    def on_start(self) -> None:
        logger.warning("auth handler 'allow-all': every client may publish and subscribe to every topic")

    def auth_connect(self, session: Session) -> Grant | None:
        if session.protocol == "xmpp":
            return None
        return Grant.everything()
