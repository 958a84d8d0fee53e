"""The typed settings: frozen dataclasses, one per TOML table. The loader builds them; nothing else does
validation, so an instance built by hand is taken as given."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .frozen import FrozenMap, thaw
from .masking import MASK, SECRET_FIELDS, SECRET_TABLES, mask_secret_table, mask_secrets
from .network import Target, parse_address, parse_target

__all__ = [
    "AuthSettings",
    "BridgeMqttSettings",
    "BridgeSettings",
    "BridgeXmppSettings",
    "ClusterSettings",
    "HandlerSettings",
    "JidRuleSettings",
    "ListenerOptions",
    "ListenerSettings",
    "LogSettings",
    "MetricsSettings",
    "RunSettings",
    "Settings",
    "SmartgridSettings",
    "TargetTlsSettings",
    "TlsSettings",
    "UserSettings",
]


def _masked_repr(self: Any) -> str:
    """A dataclass repr with secret fields shown as '****' and free-form tables masked."""
    parts = []
    for f in fields(self):
        value = getattr(self, f.name)
        if f.name in SECRET_FIELDS and value:
            text = repr(MASK)
        elif isinstance(value, ListenerOptions):
            text = repr(value.masked())
        elif f.name in SECRET_TABLES and isinstance(value, Mapping):
            text = repr(mask_secret_table(value))
        elif isinstance(value, Mapping):
            text = repr(mask_secrets(value))
        else:
            text = repr(value)
        parts.append(f"{f.name}={text}")
    return f"{type(self).__name__}({', '.join(parts)})"


def _freeze_options(obj: Any) -> None:
    if not isinstance(obj.options, FrozenMap):
        object.__setattr__(obj, "options", FrozenMap(obj.options))


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    address: str = "127.0.0.1:9100"  # serves /metrics and /health; "" turns it off

    @property
    def enabled(self) -> bool:
        return self.address != ""


#: ``[run] workers`` (and ``ferryman run --workers``): at most this many worker processes.
MAX_WORKERS = 256


def parse_workers(text: str) -> int | str:
    """A ``workers`` value from text (``--workers``, ``FERRYMAN_RUN__WORKERS``): ``"auto"`` or an integer
    1..MAX_WORKERS; ValueError naming what was wrong."""
    value = text.strip()
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f'expected a number of worker processes or "auto", got {text!r}') from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{count} is out of range 1..{MAX_WORKERS}")
    return count


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset and cpusets set it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """``[run]``: how the gateway runs. ``workers``: worker processes (an integer, or ``"auto"``: one per
    CPU); 1 (the default) is one process and no supervisor."""

    workers: int | str = 1

    @property
    def worker_count(self) -> int:
        """``workers`` as a number: ``"auto"`` is the CPU count."""
        return cpu_count() if self.workers == "auto" else int(self.workers)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS termination of a listener. Paths are absolute (the loader resolves relative ones against the
    settings file's directory). ``client_ca_file`` makes it mTLS; ``verify`` adds revocation checks."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    verify: tuple[str, ...] = ()  # ocsp | crl
    ocsp_responder_url: str = ""  # overrides the certificate's AIA
    crl_file: str = ""  # offline CRL
    crl_url: str = ""  # overrides the certificate's CRL distribution point
    #: certificates checked for revocation, from the client's upward; 16 (the default) = the whole chain
    verify_depth: int = 16
    revocation_timeout: float = 3.0  # seconds for one OCSP request or CRL download
    revocation_fail_open: bool = False  # accept when OCSP / the CRL can't be had (default: refuse)
    ocsp_nonce: bool = True  # send a nonce and require it back
    #: TLS session resumption with tickets (one per handshake); false: no resumption at all
    session_tickets: bool = True
    #: seconds the ticket keys of one period are used; tickets of an earlier period need a full handshake
    ticket_rotation: float = 3600.0

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate (mTLS)."""
        return self.client_ca_file != ""


@dataclass(frozen=True, slots=True)
class TargetTlsSettings:
    """TLS towards a ``tls://``, ``wss://`` or ``https://`` target. Paths are absolute."""

    ca_file: str = ""  # CA bundle for the target's certificate; "" = the system's
    cert_file: str = ""  # client certificate (upstream mTLS); needs key_file
    key_file: str = ""
    server_name: str = ""  # SNI and the name checked in the target's certificate; "" = the target's host


class ListenerOptions(FrozenMap):
    """A listener's own keys (the ones its kind declares, see ``listener_kinds.py``), converted and
    checked by the loader; ``secret_keys`` are masked when printed (repr, ``ferryman check --print``), as
    are keys named like a secret (``*password*``, ``*token*``...)."""

    __slots__ = ("secret_keys",)

    def __init__(self, data: Mapping[str, Any] | None = None, secret_keys: Iterable[str] = ()) -> None:
        super().__init__(data)
        self.secret_keys = frozenset(secret_keys)

    def masked(self) -> dict[str, Any]:
        plain = mask_secrets(thaw(self))
        for key in self.secret_keys & set(plain):
            if plain[key] != "":
                plain[key] = MASK
        return plain

    def __repr__(self) -> str:
        return f"ListenerOptions({self.masked()!r})"


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One ``[[listener]]``. The fields after ``target`` are the *shared vocabulary* of the shipped
    listeners: each listener kind (``listener_kinds.py``, declared by the protocol, not here) says which of
    them it takes; setting one on a listener whose kind does not take it is an error. A kind's own keys
    are in ``options``."""

    name: str
    protocol: str  # a listener kind's name (the ferryman.listeners entry point)
    address: str  # host:port, IPv6 as [::1]:1884
    target: str  # scheme://host:port[/path], or "mqtt" (publish mode) where the kind allows it
    path_prefix: str = ""  # URL path prefix served
    tls: TlsSettings | None = None
    #: DTLS (datagram kinds) with pre-shared keys, PSK identity -> key (UTF-8); secrets: masked when printed
    psk: Mapping[str, str] = field(default_factory=FrozenMap)
    target_tls: TargetTlsSettings | None = None  # for tls:// wss:// https:// coaps:// targets
    allowed_origins: tuple[str, ...] = ()  # WebSocket: Origin values accepted; empty = any (and none)
    bypass: tuple[str, ...] = ()  # reverse proxy: path prefixes forwarded without credentials
    publish_qos: int = 1  # publish mode: QoS when the request names none
    max_packet_size: int = 1048576
    connect_timeout: float = 10.0
    refused_publish_v3: str = "ack"  # ack | disconnect: what an MQTT 3.1.1 client gets for a refused PUBLISH
    keepalive_factor: float = 1.5  # a client silent for this x its keepalive is disconnected; 0 = off
    max_connections: int = 100_000  # open device connections on this listener; 0 = unlimited
    max_connections_per_ip: int = 0  # per source address; 0 = unlimited (devices behind NAT share one)
    publish_rate: float = 0.0  # PUBLISH packets/s per connection; 0 = unlimited
    publish_burst: float = 0.0  # packets allowed above the rate in a burst; 0 = one second's worth
    publish_bytes_rate: float = 0.0  # bytes/s of client packets per connection; 0 = unlimited
    rate_limit_action: str = "throttle"  # throttle (stop reading: TCP backpressure) | disconnect (5.0: 0x96)
    socket_buffer: int = 0  # SO_SNDBUF/SO_RCVBUF of device sockets, bytes; 0 = the OS default
    #: MQTT proxying: seconds a flooded broker side may wait to be read in 16 KiB batches; 0 = off
    flood_batch_wait: float = 0.005
    #: MQTT proxying: user properties a client packet may carry (MQTT 5); more: CONNACK / DISCONNECT 0x95
    max_user_properties: int = 64
    #: MQTT proxying: topic filters in one SUBSCRIBE / UNSUBSCRIBE; more: DISCONNECT 0x95 (3.1.1: close)
    max_topic_filters: int = 128
    #: HTTP: seconds for a request's head (line + headers) to arrive, in total, from its first byte (or
    #: from the accept for a new connection's first request)
    header_timeout: float = 10.0
    body_timeout: float = 60.0  # HTTP: seconds for a request's whole body to arrive
    idle_timeout: float = 60.0  # HTTP: seconds a keep-alive connection may wait for its next request
    forward_authorization: bool = False  # reverse proxy: pass the client's Authorization header on
    max_observations: int = 4096  # CoAP observations on this listener at once (all peers)
    max_observations_per_peer: int = 64  # CoAP observations of one peer (address and port)
    #: seconds a CoAP observation may go without a confirmable notification: then the last one is sent
    #: again as CON (RFC 7641 4.5); a peer that does not acknowledge it (or resets it) loses it
    observe_check_interval: float = 120.0
    #: TCP listeners behind a load balancer: every connection starts with a PROXY protocol header (v1 or
    #: v2), whose source address is the client's (sessions, logs, per-IP limits); only from
    #: ``trusted_proxies`` (CIDRs; required with it); a connection without one is closed
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ()
    #: 1 | 2: the PROXY header (that version) with the device's address is sent to the target first; 0 = none
    target_proxy_protocol: int = 0
    #: the keys the listener's kind owns (written flat in its table), converted and checked by the loader
    options: Mapping[str, Any] = field(default_factory=ListenerOptions)

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        if not isinstance(self.psk, FrozenMap):
            object.__setattr__(self, "psk", FrozenMap(self.psk))
        if not isinstance(self.options, ListenerOptions):
            object.__setattr__(self, "options", ListenerOptions(self.options))

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)


@dataclass(frozen=True, slots=True)
class UserSettings:
    """A user of the static handler; ``%u`` (username) and ``%c`` (client id) expand in the filters."""

    username: str
    password: str = ""
    password_hash: str = ""
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    identity: str = ""  # mTLS: a verified client certificate with this identity (CN, else first SAN) logs in

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True)
class AuthSettings:
    handler: str = "allow-all"  # allow-all | static | an entry-point name in ferryman.handlers
    users: tuple[UserSettings, ...] = ()
    #: identity (an MQTT client id belongs to the user / certificate identity that first used it) | none
    client_id_binding: str = "identity"
    options: Mapping[str, Any] = field(default_factory=FrozenMap)  # free-form, for entry-point handlers

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _freeze_options(self)


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """An extra handler actor from a ``[[handler]]`` table, in chain order after the auth handler."""

    name: str
    options: Mapping[str, Any] = field(default_factory=FrozenMap)  # the free-form [handler.options]

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        _freeze_options(self)


@dataclass(frozen=True, slots=True)
class BridgeMqttSettings:
    url: str = "tcp://127.0.0.1:1883"
    client_id: str = "ferryman-bridge"
    username: str = ""
    password: str = ""

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True)
class JidRuleSettings:
    """Per-JID filters of the XMPP bridge (``[[bridge.xmpp.rules]]``); a JID without a rule may use every
    topic, one with a rule only these."""

    jid: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SmartgridSettings:
    """The optional xmpp-mqtt-gateway "smartgrid" rule set (``[bridge.smartgrid]``; present = enabled)."""

    root: str = "smartgrid/"


@dataclass(frozen=True, slots=True)
class BridgeXmppSettings:
    mode: str = "component"  # component (XEP-0114) | client
    jid: str = ""
    secret: str = ""  # component secret, or the account's password
    server: str = "127.0.0.1:5347"
    allowed_jids: tuple[str, ...] = ()  # bare JIDs; empty = nobody
    store: str = "ferryman-bridge.sqlite3"  # where bridge subscriptions persist
    rules: tuple[JidRuleSettings, ...] = ()
    ca_file: str = ""  # client mode: CA for STARTTLS (default: the system's); loopback servers need none
    max_subscriptions_per_jid: int = 100  # subscriptions one JID may hold; past it `subscribe` is refused
    max_subscriptions: int = 10000  # subscriptions of all JIDs together
    command_rate: float = 5.0  # commands per second one JID may send on average; 0 = no limit
    command_burst: int = 20  # commands one JID may send at once before command_rate applies
    #: filters of an allowed JID without a [[bridge.xmpp.rules]] entry (`$` topics need an explicit rule)
    default_publish: tuple[str, ...] = ("#",)
    default_subscribe: tuple[str, ...] = ("#",)

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """A table present in the file means that part of the bridge is enabled."""

    mqtt: BridgeMqttSettings | None = None
    xmpp: BridgeXmppSettings | None = None
    smartgrid: SmartgridSettings | None = None


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Replicas sharing state through Redis (``[cluster]``). ``redis`` "" (the default): no cluster, the
    bridge is embedded (SQLite store, always active); set: the XMPP bridge runs active/standby under a
    lease in Redis and keeps its subscriptions there (``docs/scale.md``)."""

    redis: str = ""  # redis://host:port/db | rediss://host:port/db | unix:///path.sock?db=N
    username: str = ""  # Redis ACL user ("" = the default user)
    password: str = ""  # Redis AUTH password (never in the URL: this one is masked when printed)
    lease_ttl: float = 5.0  # seconds a bridge lease lasts without a renewal
    renew_interval: float = 1.0  # seconds between two renewals (and between a standby's tries)
    key_prefix: str = "ferryman:"  # prefix of every Redis key ferryman writes

    __repr__ = _masked_repr

    @property
    def enabled(self) -> bool:
        return self.redis != ""


@dataclass(frozen=True, slots=True)
class Settings:
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    run: RunSettings = field(default_factory=RunSettings)
    listeners: tuple[ListenerSettings, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    handlers: tuple[HandlerSettings, ...] = ()
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    shutdown_timeout: float = 5.0
    source: str = "<defaults>"  # the settings file's path, or "<defaults>"
