"""The tree of TOML keys and their value kinds: the one list of what a settings file may contain.

The loader checks files against it (unknown keys, with suggestions) and the environment overrides use it
to find a key and convert a string to the key's type. The typed tables are built in ``build.py``; a test
checks the two agree.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LISTENER_TABLE", "ROOT", "Kind", "Node", "Table", "TableArray"]


class Kind(enum.Enum):
    """A leaf's value type; the value is how error messages name it."""

    STR = "a string"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "a boolean"
    STRS = "an array of strings"
    FREE = "a table"  # free-form options: any keys, any TOML values
    INT_OR_AUTO = 'an integer or "auto"'  # [run] workers


@dataclass(frozen=True, slots=True)
class Table:
    keys: Mapping[str, Node]


@dataclass(frozen=True, slots=True)
class TableArray:
    """An array of tables (``[[listener]]``); entries are addressed by index. With ``by``, an entry's
    keys depend on the value of its key ``by`` (a listener's ``protocol``): ``variants`` maps a value to
    the entry's table, ``item`` is every variant's keys together (for entries of an unknown variant)."""

    item: Table
    by: str = ""
    variants: Mapping[str, Table] = field(default_factory=dict)

    def item_for(self, entry: object) -> Table:
        """The table of one entry (the parsed TOML table), by its ``by`` key."""
        if self.by and isinstance(entry, Mapping):
            value = entry.get(self.by)
            if isinstance(value, str) and value in self.variants:
                return self.variants[value]
        return self.item


Node = Kind | Table | TableArray

_TLS = Table(
    {
        "cert_file": Kind.STR,
        "key_file": Kind.STR,
        "client_ca_file": Kind.STR,
        "verify": Kind.STRS,
        "ocsp_responder_url": Kind.STR,
        "crl_file": Kind.STR,
        "crl_url": Kind.STR,
        "verify_depth": Kind.INT,
        "revocation_timeout": Kind.FLOAT,
        "revocation_fail_open": Kind.BOOL,
        "ocsp_nonce": Kind.BOOL,
        "session_tickets": Kind.BOOL,
        "ticket_rotation": Kind.FLOAT,
    }
)

_TARGET_TLS = Table(
    {"ca_file": Kind.STR, "cert_file": Kind.STR, "key_file": Kind.STR, "server_name": Kind.STR}
)

# The common and the shared listener keys; a listener kind (listener_kinds.py) says which shared ones it
# takes and adds its own.
LISTENER_TABLE = Table(
    {
        "name": Kind.STR,
        "protocol": Kind.STR,
        "address": Kind.STR,
        "target": Kind.STR,
        "path_prefix": Kind.STR,
        "tls": _TLS,
        "psk": Kind.FREE,  # DTLS pre-shared keys, identity = "key"
        "target_tls": _TARGET_TLS,
        "allowed_origins": Kind.STRS,
        "bypass": Kind.STRS,
        "publish_qos": Kind.INT,
        "max_packet_size": Kind.INT,
        "connect_timeout": Kind.FLOAT,
        "refused_publish_v3": Kind.STR,
        "keepalive_factor": Kind.FLOAT,
        "max_connections": Kind.INT,
        "max_connections_per_ip": Kind.INT,
        "publish_rate": Kind.FLOAT,
        "publish_burst": Kind.FLOAT,
        "publish_bytes_rate": Kind.FLOAT,
        "rate_limit_action": Kind.STR,
        "socket_buffer": Kind.INT,
        "flood_batch_wait": Kind.FLOAT,
        "max_user_properties": Kind.INT,
        "max_topic_filters": Kind.INT,
        "max_observations": Kind.INT,
        "max_observations_per_peer": Kind.INT,
        "observe_check_interval": Kind.FLOAT,
        "header_timeout": Kind.FLOAT,
        "body_timeout": Kind.FLOAT,
        "idle_timeout": Kind.FLOAT,
        "forward_authorization": Kind.BOOL,
        "proxy_protocol": Kind.BOOL,
        "trusted_proxies": Kind.STRS,
        "target_proxy_protocol": Kind.INT,
    }
)

_USER = Table(
    {
        "username": Kind.STR,
        "password": Kind.STR,
        "password_hash": Kind.STR,
        "publish": Kind.STRS,
        "subscribe": Kind.STRS,
        "identity": Kind.STR,
    }
)

ROOT = Table(
    {
        "shutdown_timeout": Kind.FLOAT,
        "log": Table({"level": Kind.STR, "format": Kind.STR}),
        "metrics": Table({"address": Kind.STR}),
        "run": Table({"workers": Kind.INT_OR_AUTO}),
        "listener": TableArray(LISTENER_TABLE),
        "auth": Table(
            {
                "handler": Kind.STR,
                "users": TableArray(_USER),
                "options": Kind.FREE,
                "client_id_binding": Kind.STR,
            }
        ),
        "handler": TableArray(Table({"name": Kind.STR, "options": Kind.FREE})),
        "bridge": Table(
            {
                "mqtt": Table(
                    {"url": Kind.STR, "client_id": Kind.STR, "username": Kind.STR, "password": Kind.STR}
                ),
                "xmpp": Table(
                    {
                        "mode": Kind.STR,
                        "jid": Kind.STR,
                        "secret": Kind.STR,
                        "server": Kind.STR,
                        "allowed_jids": Kind.STRS,
                        "store": Kind.STR,
                        "ca_file": Kind.STR,
                        "max_subscriptions_per_jid": Kind.INT,
                        "max_subscriptions": Kind.INT,
                        "command_rate": Kind.FLOAT,
                        "command_burst": Kind.INT,
                        "default_publish": Kind.STRS,
                        "default_subscribe": Kind.STRS,
                        "rules": TableArray(
                            Table({"jid": Kind.STR, "publish": Kind.STRS, "subscribe": Kind.STRS})
                        ),
                    }
                ),
                "smartgrid": Table({"root": Kind.STR}),
            }
        ),
        "cluster": Table(
            {
                "redis": Kind.STR,
                "username": Kind.STR,
                "password": Kind.STR,
                "lease_ttl": Kind.FLOAT,
                "renew_interval": Kind.FLOAT,
                "key_prefix": Kind.STR,
            }
        ),
    }
)
