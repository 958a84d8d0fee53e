"""ferryman.config: typed settings from a TOML file and ``FERRYMAN_*`` environment variables.

The lowest layer of ferryman: it imports nothing but the standard library. ::

    settings = load_settings("ferryman.toml", kinds=kinds)  # raises SettingsError listing every problem
    print(render_settings(settings))                        # effective settings as TOML, secrets masked

It knows no listener protocol: the caller passes the listener kinds (``ListenerKind``, declared by each
listener); ``ferryman.wiring.load_settings(path)`` passes the shipped ones and the plug-ins'.
"""

from .env import CONFIG_ENV, ENV_PREFIX, env_name
from .errors import SettingIssue, SettingsError
from .frozen import FrozenMap
from .keys import Kind
from .listener_kinds import SHARED_KEYS, KindIssue, ListenerKey, ListenerKind, shared_except
from .loader import DEFAULTS_SOURCE, EXAMPLE_FILE, default_settings, load_settings
from .masking import MASK, is_secret_key, mask_secrets
from .network import (
    DEFAULT_PORTS,
    PUBLISH_TARGET,
    SECURE_SCHEMES,
    Target,
    format_address,
    parse_address,
    parse_target,
)
from .render import render_settings, settings_to_dict
from .schema import (
    MAX_WORKERS,
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
    TlsSettings,
    UserSettings,
    cpu_count,
    parse_workers,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULTS_SOURCE",
    "DEFAULT_PORTS",
    "ENV_PREFIX",
    "EXAMPLE_FILE",
    "MASK",
    "MAX_WORKERS",
    "PUBLISH_TARGET",
    "SECURE_SCHEMES",
    "SHARED_KEYS",
    "AuthSettings",
    "BridgeMqttSettings",
    "BridgeSettings",
    "BridgeXmppSettings",
    "ClusterSettings",
    "FrozenMap",
    "HandlerSettings",
    "JidRuleSettings",
    "Kind",
    "KindIssue",
    "ListenerKey",
    "ListenerKind",
    "ListenerOptions",
    "ListenerSettings",
    "LogSettings",
    "MetricsSettings",
    "RunSettings",
    "SettingIssue",
    "Settings",
    "SettingsError",
    "SmartgridSettings",
    "Target",
    "TlsSettings",
    "UserSettings",
    "cpu_count",
    "default_settings",
    "env_name",
    "format_address",
    "is_secret_key",
    "load_settings",
    "mask_secrets",
    "parse_address",
    "parse_target",
    "parse_workers",
    "render_settings",
    "settings_to_dict",
    "shared_except",
]
