"""ferryman.protocols.xmpp: the XMPP session (slixmpp client or XEP-0114 component) on the asyncio host."""

from .session import XmppSession

__all__ = ["XmppSession"]
