"""ferryman.config: typed settings from a TOML file and ``FERRYMAN_*`` environment variables.

The lowest layer of ferryman: it imports nothing but the standard library. ::

    settings = load_settings("ferryman.toml")     # raises SettingsError listing every problem
    print(render_settings(settings))              # effective settings as TOML, secrets masked
"""

from .env import CONFIG_ENV, ENV_PREFIX, env_name
from .errors import SettingIssue, SettingsError
from .frozen import FrozenMap
from .loader import DEFAULT_LISTENER, DEFAULTS_SOURCE, EXAMPLE_FILE, default_settings, load_settings
from .masking import MASK, is_secret_key, mask_secrets
from .network import (
    DEFAULT_PORTS,
    PUBLISH_TARGET,
    SCHEMES_BY_PROTOCOL,
    Target,
    format_address,
    parse_address,
    parse_target,
)
from .render import render_settings, settings_to_dict
from .schema import (
    AuthSettings,
    BridgeMqttSettings,
    BridgeSettings,
    BridgeXmppSettings,
    HandlerSettings,
    JidRuleSettings,
    ListenerSettings,
    LogSettings,
    MetricsSettings,
    Settings,
    SmartgridSettings,
    TlsSettings,
    UserSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULTS_SOURCE",
    "DEFAULT_LISTENER",
    "DEFAULT_PORTS",
    "ENV_PREFIX",
    "EXAMPLE_FILE",
    "MASK",
    "PUBLISH_TARGET",
    "SCHEMES_BY_PROTOCOL",
    "AuthSettings",
    "BridgeMqttSettings",
    "BridgeSettings",
    "BridgeXmppSettings",
    "FrozenMap",
    "HandlerSettings",
    "JidRuleSettings",
    "ListenerSettings",
    "LogSettings",
    "MetricsSettings",
    "SettingIssue",
    "Settings",
    "SettingsError",
    "SmartgridSettings",
    "Target",
    "TlsSettings",
    "UserSettings",
    "default_settings",
    "env_name",
    "format_address",
    "is_secret_key",
    "load_settings",
    "mask_secrets",
    "parse_address",
    "parse_target",
    "render_settings",
    "settings_to_dict",
]
