"""The rtm-server's options, ``[applications.NAME.options]`` of the cluster
file (docs/rtm-server.md, "Configuration"), read and checked once.

    [applications.RTM1.options]
    store = "sqlite:/var/lib/sipcluster/RTM1/rtm.db"   # default ($SIPCLUSTER_STATE_DIR/NAME
                                     # in the lab); "postgresql://user@host/db": a pair
    store-sync = "normal"            # normal | full
    max-queue-bytes = 67108864       # per destination site
    message-ttl = 604800             # seconds a message waits for a site that is away; 0: forever
    keep-alive = 10                  # seconds; the peer is lost after three silent ones
    window = 512                     # deliveries in flight per site
    max-rate = 5000                  # messages/s one site may send; 0: no limit
    max-frame-size = 1048576
    pair = "RTM2"                    # the other hub sharing this store (PostgreSQL)
    takeover-poll = 0.5              # seconds between a standby hub's attempts
    tls-cert = "/etc/sipcluster/rtm.pem"   # with tls-key: sites connect over TLS
    tls-key = "/etc/sipcluster/rtm.key"
    [applications.RTM1.options.sites]
    1 = "Boca-secret"                # site id (1-999) = its password (case-sensitive)
    2 = "Indy-secret"
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.rtm_server.hub import HubOptions
from daemons.runtime.config import Section
from protocols.rtm.auth import MAX_SITE_ID, MIN_SITE_ID

__all__ = ["ServerOptions", "read_options"]


@dataclass(frozen=True)
class ServerOptions:
    hub: HubOptions
    store: str
    store_sync: str
    takeover_poll: float
    pair: str | None
    tls_cert: str | None
    tls_key: str | None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


def state_dir(app: Application) -> Path:
    """``$SIPCLUSTER_STATE_DIR/NAME`` (the lab), else ``/var/lib/sipcluster/NAME``
    (the systemd unit's StateDirectory)."""
    return Path(os.environ.get("SIPCLUSTER_STATE_DIR") or "/var/lib/sipcluster") / app.name


def read_options(config: ClusterConfig, app: Application) -> ServerOptions:
    """The options of ``app``; a ConfigError names file, key and reason."""
    s = Section(dict(app.options), file=config.file, path=f"applications.{app.name}.options")
    table = s.section("sites", required=True)
    sites: dict[int, str] = {}
    for key in table.keys():
        if not key.isdigit() or not MIN_SITE_ID <= int(key) <= MAX_SITE_ID:
            raise table.error(key, f"a site id is an integer {MIN_SITE_ID}-{MAX_SITE_ID}")
        password = table.get_str(key)
        if not password:
            raise table.error(key, "a site needs a password")
        sites[int(key)] = password
    if not sites:
        raise s.error("sites", "name at least one site")
    hub = HubOptions(
        sites=sites,
        max_queue_bytes=s.get_int("max-queue-bytes", 64 * 1024 * 1024, min=1024),
        message_ttl=s.get_float("message-ttl", 7 * 86400.0, min=0),
        keepalive=s.get_float("keep-alive", 10.0, min=0.1, max=3600),
        window=s.get_int("window", 512, min=1, max=100_000),
        max_rate=s.get_float("max-rate", 5000.0, min=0),
        max_frame_size=s.get_int("max-frame-size", 1024 * 1024, min=1024,
                                 max=64 * 1024 * 1024),
    )
    tls_cert = s.get_optional_str("tls-cert")
    tls_key = s.get_optional_str("tls-key")
    if (tls_cert is None) != (tls_key is None):
        raise s.error("tls-cert" if tls_cert is None else "tls-key",
                      "give tls-cert and tls-key together")
    options = ServerOptions(
        hub=hub,
        store=s.get_str("store", f"sqlite:{state_dir(app) / 'rtm.db'}"),
        store_sync=s.get_choice("store-sync", ("normal", "full"), "normal"),
        takeover_poll=s.get_float("takeover-poll", 0.5, min=0.05, max=60),
        pair=_pair(config, app, s),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    s.check_unknown()
    return options


def _pair(config: ClusterConfig, app: Application, s: Section) -> str | None:
    name = s.get_optional_str("pair")
    if name is None:
        return None
    other = config.applications.get(name)
    if other is None or other.kind is not AppKind.RTM_SERVER or name == app.name:
        raise s.error("pair", f"expected another rtm-server application, got {name!r}")
    return name
