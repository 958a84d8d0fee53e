-- ferryman's Prosody (0.12) config: one XMPP domain for the tests (and a future docker-compose) with a
-- XEP-0114 external component for the XMPP <-> MQTT gateway.
--
-- Moving it (tests/prosody.py does this): Prosody 0.12's config parser resolves any name starting with
-- ENV_ to the environment variable of the rest of the name (ENV_FOO -> os.getenv("FOO"), a string or
-- nil), so everything a harness must change is read from the environment, with the defaults below:
--
--   FERRYMAN_PROSODY_DIR          directory for data/, prosody.pid, prosody.log   (/var/lib/prosody)
--   FERRYMAN_PROSODY_C2S_PORT     client-to-server port                            (5222)
--   FERRYMAN_PROSODY_COMPONENT_PORT  XEP-0114 component port                       (5347)
--   FERRYMAN_PROSODY_COMPONENT_SECRET  shared secret of gw.localhost               (gateway-secret)
--   FERRYMAN_PROSODY_INTERFACE    address every listener binds to                   (127.0.0.1)
--
-- Both `prosody --config FILE -F` and `prosodyctl --config FILE ...` must see the same environment.
-- Run Prosody as the `prosody` user (runuser -u prosody -- ...), never as root; the directory must be
-- writable by that user. Only loopback, no TLS: c2s without encryption, SCRAM-SHA-1 auth (PLAIN too).

local dir = ENV_FERRYMAN_PROSODY_DIR or "/var/lib/prosody"
local interface = ENV_FERRYMAN_PROSODY_INTERFACE or "127.0.0.1"

data_path = dir .. "/data"
pidfile = dir .. "/prosody.pid"
log = {
	{ levels = { min = "info" }, to = "file", filename = dir .. "/prosody.log" },
}

interfaces = { interface }
local_interfaces = { interface }
c2s_ports = { tonumber(ENV_FERRYMAN_PROSODY_C2S_PORT or "5222") }
c2s_interfaces = { interface }
component_ports = { tonumber(ENV_FERRYMAN_PROSODY_COMPONENT_PORT or "5347") }
component_interfaces = { interface }
legacy_ssl_ports = {}

modules_enabled = {
	"roster", "saslauth", "disco", "ping", "time", "version", "uptime",
	"offline", -- keep messages for offline users (XEP-0160), delivered at their next login
	"posix", -- writes the pidfile
}
-- No federation in the tests: nothing listens on 5269.
modules_disabled = { "s2s", "s2s_auth_certs" }

authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = false

VirtualHost "localhost"

Component "gw.localhost"
	component_secret = ENV_FERRYMAN_PROSODY_COMPONENT_SECRET or "gateway-secret"
