"""The collective's site configuration, ``[applications.NAME.options]`` of the
site's cluster file, read and checked once (docs/collective.md,
"Configuration"; guide: CIC Multi-Site, "Configure the Current Site",
"Define Peer Sites", "Grant Permissions to Users").

    [applications.Boca]
    kind = "collective"
    host = "10.0.1.7"
    http-port = 9070

    [applications.Boca.options]
    hubs = ["RTM1"]                      # rtm-server applications, or "HOST:PORT"
    spanning-workgroups = ["Multisite_RTM1"]
    store = "sqlite:/var/lib/sipcluster/Boca/collective.db"   # or postgresql://USER@HOST/DB

    [applications.Boca.options.home-site]
    site-identifier = 1
    site-name = "Boca"
    phone-number = "5615550100"
    password = "Boca-Secret"             # this site's password at the hub
    note-id-dial-string-digits = "*90"

    [applications.Boca.options.peer-sites.Indy]
    site-identifier = 2
    phone-number = "3175550100"
    password = "Indy-Secret"
    use-note-id-dial-string = false
    [applications.Boca.options.peer-sites.Indy.trusted-access]
    publish-handlers = true
    manage-handlers = true
    master-administrator = false
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.collective.store import open_store
from daemons.runtime.config import Section
from protocols.rtm.auth import MAX_SITE_ID, MIN_SITE_ID

__all__ = ["CollectiveOptions", "PeerSite", "Site", "TrustedAccess", "read_options"]

_PHONE = re.compile(r"^\+?[0-9*#]{1,32}$")
_DIAL_DIGITS = re.compile(r"^[0-9*#]{1,8}$")
_HOST_PORT = re.compile(r"^(?P<host>[^:\s]+):(?P<port>[0-9]{1,5})$")
TRUSTED_ACCESS = ("publish-handlers", "manage-handlers", "master-administrator")


@dataclass(frozen=True)
class TrustedAccess:
    """What a peer site's users may do when logged on at this site (guide:
    "Trusted Access")."""

    publish_handlers: bool = False
    manage_handlers: bool = False
    master_administrator: bool = False

    def to_map(self) -> dict[str, bool]:
        return {"publish-handlers": self.publish_handlers,
                "manage-handlers": self.manage_handlers,
                "master-administrator": self.master_administrator}


@dataclass(frozen=True)
class Site:
    """A site of the collective as this site knows it."""

    site_id: int
    name: str
    phone_number: str


@dataclass(frozen=True)
class PeerSite(Site):
    password: str = ""
    use_note_id_dial_string: bool = False
    trusted_access: TrustedAccess = TrustedAccess()


@dataclass(frozen=True)
class CollectiveOptions:
    home: Site
    password: str
    note_id_dial_string_digits: str
    peers: dict[int, PeerSite]
    spanning_workgroups: frozenset[str]
    hubs: tuple[tuple[str, int], ...]
    store: str
    rtm_state: str
    domain: str
    sync_batch: int

    def site_name(self, site_id: int) -> str:
        if site_id == self.home.site_id:
            return self.home.name
        peer = self.peers.get(site_id)
        return peer.name if peer is not None else str(site_id)


def state_dir(app: Application) -> Path:
    """``$SIPCLUSTER_STATE_DIR/NAME`` (the lab), else ``/var/lib/sipcluster/NAME``."""
    return Path(os.environ.get("SIPCLUSTER_STATE_DIR") or "/var/lib/sipcluster") / app.name


def read_options(config: ClusterConfig, app: Application) -> CollectiveOptions:
    """The options of ``app``; a ConfigError names file, key and reason."""
    s = Section(dict(app.options), file=config.file, path=f"applications.{app.name}.options")
    h = s.section("home-site", required=True)
    home = Site(site_id=_site_id(h), name=_name(h, "site-name"),
                phone_number=_phone(h))
    password = h.get_str("password")
    if not password:
        raise h.error("password", "a site needs a password (case-sensitive)")
    digits = h.get_str("note-id-dial-string-digits", "*90")
    if not _DIAL_DIGITS.match(digits):
        raise h.error("note-id-dial-string-digits",
                      f"expected 1-8 of 0-9 * #, got {digits!r}")
    h.check_unknown({"site-identifier", "site-name", "phone-number", "password",
                     "note-id-dial-string-digits"})
    peers: dict[int, PeerSite] = {}
    names = {home.name.lower(): "home-site"}
    for name, p in s.sections("peer-sites").items():
        site_id = _site_id(p)
        if site_id == home.site_id:
            raise p.error("site-identifier", f"{site_id} is the home site's identifier")
        if site_id in peers:
            raise p.error("site-identifier",
                          f"{site_id} is also peer site {peers[site_id].name!r}")
        if name.lower() in names:
            raise p.error(None, f"site name {name!r} is used twice (site names are unique)")
        names[name.lower()] = name
        peer_password = p.get_str("password")
        if not peer_password:
            raise p.error("password", "a peer site needs its password (case-sensitive)")
        t = p.section("trusted-access")
        t.check_unknown(set(TRUSTED_ACCESS))
        access = TrustedAccess(
            publish_handlers=t.get_bool("publish-handlers", False),
            manage_handlers=t.get_bool("manage-handlers", False),
            master_administrator=t.get_bool("master-administrator", False))
        peers[site_id] = PeerSite(
            site_id=site_id, name=name, phone_number=_phone(p), password=peer_password,
            use_note_id_dial_string=p.get_bool("use-note-id-dial-string", False),
            trusted_access=access)
        p.check_unknown({"site-identifier", "phone-number", "password",
                         "use-note-id-dial-string", "trusted-access"})
    if not peers:
        raise s.error("peer-sites", "define at least one peer site")
    workgroups = s.get_str_list("spanning-workgroups", [])
    for wg in workgroups:
        if not wg.strip():
            raise s.error("spanning-workgroups", "a workgroup name must not be empty")
    options = CollectiveOptions(
        home=home, password=password, note_id_dial_string_digits=digits, peers=peers,
        spanning_workgroups=frozenset(workgroups),
        hubs=_hubs(config, s),
        store=_store(s, app),
        rtm_state=s.get_str("rtm-state", str(state_dir(app) / "rtm-collective.db")),
        domain=config.switch.domain,
        sync_batch=s.get_int("sync-batch", 2000, min=1, max=10_000),
    )
    s.check_unknown({"home-site", "peer-sites", "spanning-workgroups", "hubs", "store",
                     "rtm-state", "sync-batch"})
    return options


def _site_id(s: Section) -> int:
    value = s.get_int("site-identifier", min=MIN_SITE_ID, max=MAX_SITE_ID)
    return value


def _name(s: Section, key: str) -> str:
    name = s.get_str(key)
    if not name.strip():
        raise s.error(key, "must not be empty")
    return name


def _phone(s: Section) -> str:
    number = s.get_str("phone-number")
    if not _PHONE.match(number):
        raise s.error("phone-number", f"expected digits (with + * #), got {number!r}")
    return number


def _store(s: Section, app: Application) -> str:
    url = s.get_str("store", f"sqlite:{state_dir(app) / 'collective.db'}")
    try:
        open_store(url)
    except ValueError as exc:
        raise s.error("store", str(exc)) from None
    return url


def _hubs(config: ClusterConfig, s: Section) -> tuple[tuple[str, int], ...]:
    """Hub addresses: an rtm-server application of this cluster file (its pair
    follows it) or ``HOST:PORT``."""
    entries = s.get_str_list("hubs")
    if not entries:
        raise s.error("hubs", "name the rtm-server hub (an application name or HOST:PORT)")
    out: list[tuple[str, int]] = []
    for entry in entries:
        app = config.applications.get(entry)
        if app is not None:
            if app.kind is not AppKind.RTM_SERVER:
                raise s.error("hubs", f"{entry!r} is a {app.kind.value}, not an rtm-server")
            out.append((app.host, app.ports["rtm-port"]))
            pair = app.options.get("pair")
            other = config.applications.get(pair) if isinstance(pair, str) else None
            if other is not None and other.kind is AppKind.RTM_SERVER:
                out.append((other.host, other.ports["rtm-port"]))
            continue
        m = _HOST_PORT.match(entry)
        if m is None or not 0 < int(m["port"]) < 65536:
            raise s.error("hubs", f"{entry!r} is neither an rtm-server application nor HOST:PORT")
        out.append((m["host"], int(m["port"])))
    return tuple(dict.fromkeys(out))
