"""Which JID subscribed to which MQTT filter: the XMPP bridge's view of the subscription hub.

The bridge holds a single MQTT connection. Every distinct filter is subscribed once on the broker; the
registry counts the JIDs holding it (``add`` says when the first arrives, ``remove`` when the last leaves) and
answers the fan-out question ``jids_for(topic)`` for every incoming message. The book-keeping is the one
subscription hub of the gateway (``actors/subscriptions.py``, also used by the CoAP bridge and the bridge's
MQTT session); this class only names its holders JIDs.
"""

from __future__ import annotations

from ferryman.actors.subscriptions import SubscriptionHub

__all__ = ["SubscriptionRegistry"]


class SubscriptionRegistry(SubscriptionHub[str]):
    """A :class:`SubscriptionHub` whose holders are bare JIDs. Not thread-safe: owned by one actor."""

    __slots__ = ()

    #: Drop every subscription of a JID; returns the filters that lost their last subscriber.
    remove_jid = SubscriptionHub.remove_holder
    #: Every JID with at least one subscription.
    jids = SubscriptionHub.holders
    #: Every distinct filter: what the broker connection must be subscribed to.
    all_filters = SubscriptionHub.filters
    #: The JIDs holding a filter that matches a topic (each once, however many of its filters match).
    jids_for = SubscriptionHub.holders_for
