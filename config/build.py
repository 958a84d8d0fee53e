"""From a parsed (and environment-overridden) TOML tree to :class:`Settings`, checking every rule and
recording every problem on the way (see ``reader.py``)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import format_key_path
from .keys import Kind
from .listener_kinds import SHARED_KEYS, ListenerKey, ListenerKind, join_names, not_applicable
from .network import PUBLISH_TARGET, SECURE_SCHEMES, parse_address, parse_target
from .reader import TableReader, describe
from .schema import (
    AuthSettings,
    BridgeMqttSettings,
    BridgeSettings,
    BridgeXmppSettings,
    ClusterSettings,
    HandlerSettings,
    JidRuleSettings,
    ListenerOptions,
    ListenerSettings,
    LogSettings,
    MetricsSettings,
    RunSettings,
    Settings,
    SmartgridSettings,
    TargetTlsSettings,
    TlsSettings,
    UserSettings,
)
from .topics import filter_error

__all__ = ["build_settings"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
VERIFY_CHECKS = ("ocsp", "crl")
RATE_LIMIT_ACTIONS = ("throttle", "disconnect")
REFUSED_PUBLISH_V3 = ("ack", "disconnect")
CLIENT_ID_BINDINGS = ("identity", "none")  # [auth] client_id_binding (actors/client_ids.py)
XMPP_MODES = ("component", "client")
BRIDGE_MQTT_SCHEMES = ("tcp", "tls", "ws", "wss")
SECURE_TARGET_SCHEMES = SECURE_SCHEMES
MAX_FLOOD_BATCH_WAIT = 0.1  # seconds: flood_batch_wait delays messages by up to this much
MIN_PACKET_SIZE, MAX_PACKET_SIZE = 16, 268435460  # MQTT: fixed header + the largest Remaining Length

# Listener names end up in logs and metric labels: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def build_settings(root: TableReader, source: str, kinds: Mapping[str, ListenerKind]) -> Settings:
    """Build the settings from the root table; problems land in ``root.ctx.issues``. ``kinds``: the
    listener kinds by protocol name (``listener_kinds.py``), as the caller wired them."""
    shutdown_timeout = root.positive_number("shutdown_timeout", 5.0)
    log = root.section("log")
    log_settings = LogSettings(
        level=log.string("level", "info", LOG_LEVELS), format=log.string("format", "text", LOG_FORMATS)
    )
    metrics = root.section("metrics")
    metrics_settings = MetricsSettings(address=metrics.string("address", "127.0.0.1:9100"))
    if metrics_settings.address:
        _check_address(metrics, "address", metrics_settings.address)
    run_settings = RunSettings(workers=root.section("run").workers("workers", 1))
    listener_readers = root.tables("listener")
    listeners = [_listener(reader, kinds) for reader in listener_readers]
    _check_unique_listeners(listener_readers, listeners, kinds, metrics, metrics_settings.address)
    auth = _auth(root.section("auth"))
    handlers = tuple(_handler(reader) for reader in root.tables("handler"))
    bridge = _bridge(root.section("bridge"))
    cluster = _cluster(root.section("cluster"))
    if bridge.mqtt is None:
        for reader, listener in zip(listener_readers, listeners, strict=True):
            kind = kinds.get(listener.protocol)
            publishes = kind is not None and PUBLISH_TARGET in kind.target_schemes
            if listener.target == PUBLISH_TARGET and publishes:
                reader.report(
                    "target",
                    'publish mode (target = "mqtt") needs the bridge\'s MQTT session: add [bridge.mqtt]',
                )
    return Settings(  # arguments in file order, so that problems are reported in that order
        log=log_settings,
        metrics=metrics_settings,
        run=run_settings,
        listeners=tuple(listeners),
        auth=auth,
        handlers=handlers,
        bridge=bridge,
        cluster=cluster,
        shutdown_timeout=shutdown_timeout,
        source=source,
    )


def _check_address(reader: TableReader, key: str, address: str) -> tuple[str, int] | None:
    try:
        return parse_address(address)
    except ValueError as exc:
        reader.report(key, str(exc))
        return None


def _listener(r: TableReader, kinds: Mapping[str, ListenerKind]) -> ListenerSettings:
    name = r.string("name")
    if name and not _NAME.fullmatch(name):
        r.report("name", f"{name!r}: use letters, digits, '_', '.' and '-' (starting with a letter or digit)")
    issues_before = len(r.ctx.issues)
    protocol = r.string("protocol", choices=tuple(kinds))
    kind = kinds.get(protocol)
    address = r.string("address")
    if address:
        _check_address(r, "address", address)
    if kind is not None and not kind.takes_target:
        target = ""
        if r.data.get("target", "") != "":
            r.report("target", f"{protocol} listeners take no target")
    else:
        target = r.string("target")
        if target:
            _check_target(r, kind, kinds, target)

    def applies(key: str) -> bool:
        """Whether a shared key may be set here; reported when it is set but may not be."""
        if kind is None or key in kind.shared_keys or not r.has(key):
            return True
        r.report(key, not_applicable(key, kinds))
        return False

    path_prefix = r.string("path_prefix", "")
    if path_prefix and not path_prefix.startswith("/"):
        r.report("path_prefix", f"{path_prefix!r} must start with '/'")
    if path_prefix:
        applies("path_prefix")
    tls = r.table("tls")
    psk = _psk(r, applies)
    target_tls = r.table("target_tls")
    if target_tls is not None and target:
        try:
            scheme = parse_target(target).scheme
        except ValueError:
            scheme = ""
        if scheme and scheme not in SECURE_TARGET_SCHEMES:
            r.report("target_tls", f"is for {' | '.join(SECURE_TARGET_SCHEMES)} targets, not {scheme}")
    allowed_origins = r.strings("allowed_origins")
    if allowed_origins:
        applies("allowed_origins")
    bypass = r.strings("bypass")
    for index, path in enumerate(bypass):
        if not path.startswith("/"):
            r.ctx.report((*r.path, "bypass", index), f"{path!r} must start with '/'")
    if bypass:
        applies("bypass")
    settings = ListenerSettings(
        name=name,
        protocol=protocol,
        address=address,
        target=target,
        path_prefix=path_prefix,
        tls=_tls(tls) if tls is not None else None,
        psk=psk,
        target_tls=_target_tls(target_tls) if target_tls is not None else None,
        allowed_origins=allowed_origins,
        bypass=bypass,
        publish_qos=r.integer("publish_qos", 1, 0, 2),
        max_packet_size=r.integer("max_packet_size", 1048576, MIN_PACKET_SIZE, MAX_PACKET_SIZE),
        connect_timeout=r.positive_number("connect_timeout", 10.0),
        refused_publish_v3=r.string("refused_publish_v3", "ack", REFUSED_PUBLISH_V3),
        keepalive_factor=r.positive_number("keepalive_factor", 1.5, allow_zero=True),
        max_connections=r.integer("max_connections", 100_000, 0, 10_000_000),
        max_connections_per_ip=r.integer("max_connections_per_ip", 0, 0, 10_000_000),
        publish_rate=r.positive_number("publish_rate", 0.0, allow_zero=True),
        publish_burst=r.positive_number("publish_burst", 0.0, allow_zero=True),
        publish_bytes_rate=r.positive_number("publish_bytes_rate", 0.0, allow_zero=True),
        rate_limit_action=r.string("rate_limit_action", "throttle", RATE_LIMIT_ACTIONS),
        socket_buffer=r.integer("socket_buffer", 0, 0, 64 * 1024 * 1024),
        flood_batch_wait=_flood_batch_wait(r),
        max_user_properties=r.integer("max_user_properties", 64, 1, 65535),
        max_topic_filters=r.integer("max_topic_filters", 128, 1, 65535),
        header_timeout=r.positive_number("header_timeout", 10.0),
        body_timeout=r.positive_number("body_timeout", 60.0),
        idle_timeout=r.positive_number("idle_timeout", 60.0),
        forward_authorization=r.boolean("forward_authorization", False),
        max_observations=r.integer("max_observations", 4096, 1, 1_000_000),
        max_observations_per_peer=r.integer("max_observations_per_peer", 64, 1, 1_000_000),
        observe_check_interval=r.positive_number("observe_check_interval", 120.0),
        proxy_protocol=r.boolean("proxy_protocol", False),
        trusted_proxies=_trusted_proxies(r),
        target_proxy_protocol=r.integer("target_proxy_protocol", 0, 0, 2),
        options=_own_keys(r, kind) if kind is not None else ListenerOptions(),
    )
    if settings.proxy_protocol and not settings.trusted_proxies and r.has("proxy_protocol"):
        r.report("trusted_proxies", "proxy_protocol = true needs the load balancers' addresses (CIDRs) here")
    if kind is None:
        return settings
    for key in r.data:  # the other shared keys, in file order: an error when set to other than the default
        if key in SHARED_KEYS and key not in _ALWAYS_CHECKED and getattr(settings, key) != _DEFAULTS[key]:
            applies(key)
    if len(r.ctx.issues) == issues_before:  # cross-key checks see only keys that are each valid
        _kind_checks(r, kind, settings)
    return settings


# Shared keys checked for their kind where they are read above (in file order, as before).
_ALWAYS_CHECKED = frozenset({"path_prefix", "allowed_origins", "bypass", "psk"})
# Each shared key's default: set to it (as `ferryman check --print` writes every key), a key a listener's
# kind does not take changes nothing and is accepted.
_DEFAULTS: dict[str, Any] = {
    key: getattr(ListenerSettings(name="", protocol="", address="", target=""), key) for key in SHARED_KEYS
}


def _own_keys(r: TableReader, kind: ListenerKind) -> ListenerOptions:
    """The keys ``kind`` owns, converted and checked (a key of another kind is an unknown key: the reader
    of a listener of a known kind has that kind's keys only, see ``TableArray.item_for``)."""
    own = r.with_spec(kind.table)
    values: dict[str, Any] = {}
    for spec in kind.keys:
        values[spec.name] = _own_key(own, spec)
    return ListenerOptions(values, kind.secret_keys)


def _own_key(r: TableReader, spec: ListenerKey) -> Any:
    key = spec.name
    if not r.has(key):
        if spec.required:
            r.report(key, f"missing (required){': ' + spec.doc if spec.doc else ''}")
        return spec.default
    low, high = spec.minimum, spec.maximum
    if spec.type is Kind.STR:
        return r.string(key, spec.default if spec.default is not None else "", spec.choices)
    if spec.type is Kind.INT:
        return r.integer(
            key,
            spec.default if spec.default is not None else 0,
            int(low) if low is not None else -(2**63),
            int(high) if high is not None else 2**63 - 1,
        )
    if spec.type is Kind.FLOAT:
        return r.number(key, spec.default if spec.default is not None else 0.0, low, high)
    if spec.type is Kind.BOOL:
        return r.boolean(key, bool(spec.default))
    if spec.type is Kind.STRS:
        value = r.strings(key)
        for index, item in enumerate(value):
            if spec.choices and item not in spec.choices:
                r.ctx.report((*r.path, key, index), f"{item!r} is not one of {', '.join(spec.choices)}")
        return value
    return r.free(key)


def _kind_checks(r: TableReader, kind: ListenerKind, settings: ListenerSettings) -> None:
    try:
        found = list(kind.validate(settings))
    except Exception as exc:  # a plug-in's bug must not hide the other settings errors
        r.report(None, f"the {kind.protocol} listener kind's checks failed: {type(exc).__name__}: {exc}")
        return
    for issue in found:
        if isinstance(issue, tuple):
            key, message = issue
            r.report(key, message)
        else:
            r.report(None, str(issue))


def _trusted_proxies(r: TableReader) -> tuple[str, ...]:
    """``trusted_proxies``: CIDRs (or single addresses) of the load balancers a PROXY header is taken from."""
    cidrs = r.strings("trusted_proxies")
    for index, cidr in enumerate(cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            r.ctx.report((*r.path, "trusted_proxies", index), f"{cidr!r} is not an address or CIDR")
    return cidrs


def _flood_batch_wait(r: TableReader) -> float:
    value = r.positive_number("flood_batch_wait", 0.005, allow_zero=True)
    if value > MAX_FLOOD_BATCH_WAIT:
        r.report("flood_batch_wait", f"at most {MAX_FLOOD_BATCH_WAIT} s (it delays messages), got {value}")
    return value


def _psk(r: TableReader, applies: Callable[[str], bool]) -> dict[str, str]:
    """``[listener.psk]``: DTLS identity -> pre-shared key, both non-empty strings; only for the kinds
    that take ``psk``. (What the DTLS backend can take, e.g. lengths, is the listener's
    ``validate_settings``.)"""
    table = r.free("psk")
    psk: dict[str, str] = {}
    for identity, key in table.items():
        where = (*r.path, "psk", identity)
        if not identity:
            r.ctx.report(where, "an identity must not be empty")
        elif not isinstance(key, str):
            r.ctx.report(where, f"expected a string (the pre-shared key), got {describe(key)}")
        elif not key:
            r.ctx.report(where, "the pre-shared key must not be empty")
        else:
            psk[identity] = key
    if table:
        applies("psk")
    return psk


def _check_target(
    r: TableReader, kind: ListenerKind | None, kinds: Mapping[str, ListenerKind], target: str
) -> None:
    try:
        scheme = parse_target(target).scheme
    except ValueError as exc:
        r.report("target", str(exc))
        return
    if kind is None or scheme in kind.target_schemes:
        return
    if scheme == PUBLISH_TARGET:
        publishers = [name for name, other in kinds.items() if PUBLISH_TARGET in other.target_schemes]
        only = join_names(publishers)
        r.report("target", f"'{PUBLISH_TARGET}' (publish mode) is only for {only} listeners")
    else:
        allowed = kind.target_schemes
        r.report("target", f"a {kind.protocol} listener forwards to {' | '.join(allowed)}, not {scheme}")


def _file(r: TableReader, key: str, required: bool = False) -> str:
    """A path to an existing file, made absolute (see ``Context.resolve``)."""
    value = r.string(key, None if required else "")
    if not value:
        if required and r.data.get(key) == "":
            r.report(key, "must not be empty")
        return value
    path = r.ctx.resolve((*r.path, key), value)
    if not os.path.exists(path):
        r.report(key, f"file not found: {path}")
    elif not os.path.isfile(path):
        r.report(key, f"not a file: {path}")
    elif not os.access(path, os.R_OK):
        r.report(key, f"file not readable: {path}")
    return path


def _tls(r: TableReader) -> TlsSettings:
    cert_file = _file(r, "cert_file", required=True)
    key_file = _file(r, "key_file", required=True)
    client_ca_file = _file(r, "client_ca_file")
    verify = r.strings("verify")
    for index, check in enumerate(verify):
        if check not in VERIFY_CHECKS:
            r.ctx.report((*r.path, "verify", index), f"{check!r} is not one of {', '.join(VERIFY_CHECKS)}")
        elif verify.index(check) != index:
            r.ctx.report((*r.path, "verify", index), f"{check!r} is listed twice")
    if verify and not client_ca_file:
        r.report("verify", "revocation checks are for client certificates: they need client_ca_file (mTLS)")
    ocsp_responder_url = r.string("ocsp_responder_url", "")
    if ocsp_responder_url:
        try:
            parse_target(ocsp_responder_url, ("http", "https"))
        except ValueError as exc:
            r.report("ocsp_responder_url", str(exc))
        if "ocsp" not in verify:
            r.report("ocsp_responder_url", "is set but verify does not include 'ocsp'")
    crl_file = _file(r, "crl_file")
    if crl_file and "crl" not in verify:
        r.report("crl_file", "is set but verify does not include 'crl'")
    crl_url = r.string("crl_url", "")
    if crl_url:
        try:
            parse_target(crl_url, ("http", "https"))
        except ValueError as exc:
            r.report("crl_url", str(exc))
        if "crl" not in verify:
            r.report("crl_url", "is set but verify does not include 'crl'")
        if crl_file:
            r.report("crl_url", "crl_file and crl_url exclude each other")
    return TlsSettings(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=client_ca_file,
        verify=verify,
        ocsp_responder_url=ocsp_responder_url,
        crl_file=crl_file,
        crl_url=crl_url,
        verify_depth=r.integer("verify_depth", 16, 1, 16),
        revocation_timeout=r.positive_number("revocation_timeout", 3.0),
        revocation_fail_open=r.boolean("revocation_fail_open", False),
        ocsp_nonce=r.boolean("ocsp_nonce", True),
        session_tickets=r.boolean("session_tickets", True),
        # at least a minute (each rotation costs every ticket outstanding), at most a week (RFC 8446's
        # longest ticket life)
        ticket_rotation=r.number("ticket_rotation", 3600.0, 60.0, 604_800.0),
    )


def _target_tls(r: TableReader) -> TargetTlsSettings:
    cert_file = _file(r, "cert_file")
    key_file = _file(r, "key_file")
    if bool(cert_file) != bool(key_file):
        r.report("cert_file" if key_file else "key_file", "cert_file and key_file go together")
    return TargetTlsSettings(
        ca_file=_file(r, "ca_file"),
        cert_file=cert_file,
        key_file=key_file,
        server_name=r.string("server_name", ""),
    )


def _check_unique_listeners(
    readers: list[TableReader],
    listeners: list[ListenerSettings],
    kinds: Mapping[str, ListenerKind],
    metrics: TableReader,
    metrics_address: str,
) -> None:
    """Listener names are unique, and so are bound addresses per transport (the metrics server is TCP):
    a UDP (coap) and a TCP listener may share a host:port, as their sockets do."""
    names: dict[str, str] = {}
    addresses: dict[tuple[str, str, int], str] = {}
    for reader, listener in zip(readers, listeners, strict=True):
        where = format_key_path(reader.path)
        if listener.name in names:
            reader.report("name", f"duplicate listener name {listener.name!r} (also {names[listener.name]})")
        elif listener.name:
            names[listener.name] = where
        kind = kinds.get(listener.protocol)
        endpoint = _endpoint(kind.transport if kind is not None else "tcp", listener.address)
        if endpoint in addresses:
            reader.report("address", f"address {listener.address} is already used by {addresses[endpoint]}")
        elif endpoint is not None:
            addresses[endpoint] = where
    endpoint = _endpoint("tcp", metrics_address)
    if endpoint in addresses:
        metrics.report("address", f"address {metrics_address} is already used by {addresses[endpoint]}")


def _endpoint(transport: str, address: str) -> tuple[str, str, int] | None:
    try:
        host, port = parse_address(address)
    except ValueError:
        return None
    return transport, host.lower(), port


def _auth(r: TableReader) -> AuthSettings:
    handler = r.string("handler", "allow-all")
    if not handler.strip():
        r.report("handler", "must not be empty")
    readers = r.tables("users")
    users = tuple(_user(reader) for reader in readers)
    seen: dict[str, str] = {}
    identities: dict[str, str] = {}
    for reader, user in zip(readers, users, strict=True):
        if user.username in seen:
            reader.report("username", f"duplicate username {user.username!r} (also {seen[user.username]})")
        elif user.username:
            seen[user.username] = format_key_path(reader.path)
        if user.identity in identities:
            reader.report(
                "identity", f"duplicate identity {user.identity!r} (also {identities[user.identity]})"
            )
        elif user.identity:
            identities[user.identity] = format_key_path(reader.path)
    return AuthSettings(
        handler=handler,
        users=users,
        options=r.free("options"),
        client_id_binding=r.string("client_id_binding", "identity", CLIENT_ID_BINDINGS),
    )


def _user(r: TableReader) -> UserSettings:
    username = r.string("username")
    if r.data.get("username") == "":
        r.report("username", "must not be empty")
    password = r.string("password", "")
    password_hash = r.string("password_hash", "")
    identity = r.string("identity", "")
    if password and password_hash:
        r.report("password_hash", "set password or password_hash, not both")
    elif not password and not password_hash and not identity:
        r.report("password", "missing: set password, password_hash or identity")
    publish = r.strings("publish")
    subscribe = r.strings("subscribe")
    for key, filters in (("publish", publish), ("subscribe", subscribe)):
        for index, topic_filter in enumerate(filters):
            problem = filter_error(topic_filter)
            if problem:
                r.ctx.report((*r.path, key, index), f"{topic_filter!r}: {problem}")
    return UserSettings(username, password, password_hash, publish, subscribe, identity)


def _handler(r: TableReader) -> HandlerSettings:
    name = r.string("name")
    if isinstance(r.data.get("name"), str) and not name.strip():
        r.report("name", "must not be empty")
    return HandlerSettings(name=name, options=r.free("options"))


def _bridge(r: TableReader) -> BridgeSettings:
    mqtt = r.table("mqtt")
    xmpp = r.table("xmpp")
    smartgrid = r.table("smartgrid")
    if smartgrid is not None and xmpp is None:
        r.report("smartgrid", "the smartgrid rule set needs [bridge.xmpp]")
    return BridgeSettings(
        # The XMPP bridge needs the bridge's own broker session: [bridge.xmpp] alone implies its defaults.
        mqtt=_bridge_mqtt(mqtt) if mqtt is not None else (BridgeMqttSettings() if xmpp is not None else None),
        xmpp=_bridge_xmpp(xmpp) if xmpp is not None else None,
        smartgrid=_smartgrid(smartgrid) if smartgrid is not None else None,
    )


def _smartgrid(r: TableReader) -> SmartgridSettings:
    root = r.string("root", "smartgrid/")
    if not root or "+" in root or "#" in root:
        r.report("root", f"{root!r}: a topic prefix without wildcards is required")
    return SmartgridSettings(root if root.endswith("/") else root + "/")


def _jid_rule(r: TableReader) -> JidRuleSettings:
    jid = r.string("jid")
    if jid and ("/" in jid or "@" not in jid):
        r.report("jid", f"{jid!r} is not a bare JID (user@domain)")
    return JidRuleSettings(jid, r.strings("publish"), r.strings("subscribe"))


def _bridge_mqtt(r: TableReader) -> BridgeMqttSettings:
    url = r.string("url", "tcp://127.0.0.1:1883")
    try:
        parse_target(url, BRIDGE_MQTT_SCHEMES)
    except ValueError as exc:
        r.report("url", str(exc))
    client_id = r.string("client_id", "ferryman-bridge")
    if not client_id:
        r.report("client_id", "must not be empty (the bridge keeps a persistent session)")
    return BridgeMqttSettings(
        url=url, client_id=client_id, username=r.string("username", ""), password=r.string("password", "")
    )


def _bridge_xmpp(r: TableReader) -> BridgeXmppSettings:
    mode = r.string("mode", "component", XMPP_MODES)
    jid = r.string("jid", "")
    if not jid:
        r.report("jid", "missing: the gateway's JID is required")
    elif mode == "component" and ("@" in jid or "/" in jid):
        r.report("jid", f"{jid!r}: a component JID is a domain (e.g. gw.localhost)")
    elif mode == "client" and "@" not in jid:
        r.report("jid", f"{jid!r}: a client JID is user@domain")
    secret = r.string("secret", "")
    if not secret:
        r.report("secret", "missing: the component secret or the account's password is required")
    server = r.string("server", "127.0.0.1:5347")
    _check_address(r, "server", server)
    allowed_jids = r.strings("allowed_jids")
    for index, allowed in enumerate(allowed_jids):
        if not allowed or "/" in allowed or any(c.isspace() for c in allowed):
            r.ctx.report((*r.path, "allowed_jids", index), f"{allowed!r} is not a bare JID (user@domain)")
    store = r.string("store", "ferryman-bridge.sqlite3")
    if not store:
        r.report("store", "must not be empty")
    rules = tuple(_jid_rule(reader) for reader in r.tables("rules"))
    ca_file = _file(r, "ca_file")
    defaults: dict[str, tuple[str, ...]] = {}
    for key in ("default_publish", "default_subscribe"):
        defaults[key] = r.strings(key) if key in r.data else ("#",)  # [] is allowed: nothing without a rule
        for index, topic_filter in enumerate(defaults[key]):
            problem = filter_error(topic_filter)
            if problem:
                r.ctx.report((*r.path, key, index), f"{topic_filter!r}: {problem}")
    return BridgeXmppSettings(
        mode,
        jid,
        secret,
        server,
        allowed_jids,
        store,
        rules,
        ca_file,
        max_subscriptions_per_jid=r.integer("max_subscriptions_per_jid", 100, 1, 1_000_000),
        max_subscriptions=r.integer("max_subscriptions", 10000, 1, 10_000_000),
        command_rate=r.positive_number("command_rate", 5.0, allow_zero=True),
        command_burst=r.integer("command_burst", 20, 1, 1_000_000),
        default_publish=defaults["default_publish"],
        default_subscribe=defaults["default_subscribe"],
    )


REDIS_SCHEMES = ("redis", "rediss", "unix")  # [cluster] redis
LEASE_TTL_RANGE = (0.5, 3600.0)  # [cluster] lease_ttl, seconds


def _cluster(r: TableReader) -> ClusterSettings:
    """``[cluster]``: the Redis the XMPP bridge's replicas share (lease, subscriptions); ``redis`` "" = none.
    The other keys are accepted without ``redis`` (``ferryman check --print`` writes every key)."""
    issues_before = len(r.ctx.issues)
    redis = r.string("redis", "")
    if redis:
        problem = _redis_url_problem(redis)
        if problem:
            r.report("redis", problem)
    lease_ttl = r.number("lease_ttl", 5.0, *LEASE_TTL_RANGE)
    renew_interval = r.positive_number("renew_interval", 1.0)
    if len(r.ctx.issues) == issues_before and renew_interval * 3 > lease_ttl:
        r.report(
            "renew_interval",
            f"{renew_interval:g} s is more than a third of lease_ttl ({lease_ttl:g} s): the lease must "
            "outlast two failed renewals",
        )
    key_prefix = r.string("key_prefix", "ferryman:")
    if any(c.isspace() or not c.isprintable() for c in key_prefix):
        r.report("key_prefix", f"{key_prefix!r}: no spaces or control characters")
    return ClusterSettings(
        redis=redis,
        username=r.string("username", ""),
        password=r.string("password", ""),
        lease_ttl=lease_ttl,
        renew_interval=renew_interval,
        key_prefix=key_prefix,
    )


def _redis_url_problem(url: str) -> str | None:
    """What is wrong with a ``[cluster] redis`` URL, or None."""
    try:
        parts = urlsplit(url)
        if parts.port == 0:
            return f"{url!r}: port 0"
    except ValueError as exc:  # a port that is not a number, or out of range
        return f"{url!r}: {exc}"
    if parts.scheme not in REDIS_SCHEMES:
        return f"{url!r}: expected redis://host:port/db, rediss://host:port/db or unix:///path/redis.sock"
    if parts.password is not None:
        return "a password in the URL would be shown wherever settings are printed: set [cluster] password"
    if parts.scheme == "unix":
        return None if parts.path else f"{url!r}: no socket path"
    if not parts.hostname:
        return f"{url!r}: no host"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"{url!r}: the database {db!r} is not a number"
    return None
