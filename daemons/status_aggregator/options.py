"""The status-aggregator's options, from ``[applications.NAME.options]`` of
the cluster file (docs/status-aggregator.md, "Configuration").

Every option has a default; a wrong value is a :class:`ConfigError` naming
the file, the key and the reason, which ``run_daemon`` prints as one line.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from daemons.cluster.config import AppKind, ClusterConfig
from daemons.runtime.certs import certs_dir_for
from daemons.runtime.config import Section
from daemons.runtime.status_client import aggregator_group
from daemons.status_aggregator.directory import LdapSource
from daemons.status_aggregator.store import state_dir
from protocols.status.framing import MAX_FRAME_SIZE

#: kinds whose applications may publish (their certificate name is one of them)
DEFAULT_PUBLISHER_KINDS = (AppKind.T_CONTROLLER.value, AppKind.SIP_SERVER.value)


@dataclass(frozen=True)
class AggregatorOptions:
    #: the mirror group in fail-over order (this aggregator among them)
    status_aggregators: tuple[str, ...]
    publisher_timeout: float = 30.0
    keep_alive_interval: float = 10.0
    keep_alive_timeout: float = 30.0
    max_frame_size: int = MAX_FRAME_SIZE
    #: bytes of events waiting for a watcher before it is cut off
    max_consumer_backlog: int = 16 * 2**20
    #: the file directory source (None: every published user is known)
    directory: Path | None = None
    certs: Path = Path("certs")
    publisher_kinds: tuple[str, ...] = DEFAULT_PUBLISHER_KINDS
    #: certificate names that are not applications (operators' tools, desktops,
    #: wallboards) and may connect as consumers
    consumers: tuple[str, ...] = ()
    #: ... and as publishers
    publishers: tuple[str, ...] = ()
    #: the LDAP directory source (``directory = "ldap://..."``)
    ldap: LdapSource | None = None
    #: where persistent statuses are kept: sqlite:PATH, postgresql://..., or "none"
    store: str = "none"


KNOWN = {"store", "status-aggregators", "publisher-timeout", "keep-alive-interval",
         "keep-alive-timeout", "max-frame-size", "directory", "certs", "publisher-kinds",
         "consumers", "publishers", "max-consumer-backlog", "ldap-base", "ldap-bind-dn",
         "ldap-password", "ldap-filter", "polling-interval", "next-polling-time"}


def read_options(config: ClusterConfig, name: str) -> AggregatorOptions:
    app = config.application(name, AppKind.STATUS_AGGREGATOR)
    s = Section(dict(app.options), file=config.file, path=f"applications.{name}.options")
    s.check_unknown(KNOWN)
    group = tuple(s.get_str_list("status-aggregators", list(aggregator_group(config, name))))
    for member in group:
        other = config.applications.get(member)
        if other is None or other.kind is not AppKind.STATUS_AGGREGATOR:
            raise s.error("status-aggregators", f"{member!r} is not a status-aggregator")
    if name not in group:
        raise s.error("status-aggregators", f"must list {name} itself")
    base = Path(config.file).resolve().parent
    directory = s.get_optional_str("directory")
    certs = s.get_optional_str("certs")
    kinds = tuple(s.get_str_list("publisher-kinds", list(DEFAULT_PUBLISHER_KINDS)))
    for kind in kinds:
        if kind not in {k.value for k in AppKind}:
            raise s.error("publisher-kinds", f"{kind!r} is not an application kind")
    interval = s.get_float("keep-alive-interval", 10.0, min=0.1)
    timeout = s.get_float("keep-alive-timeout", max(30.0, 3 * interval), min=0.1)
    if timeout <= interval:
        raise s.error("keep-alive-timeout", "must be longer than keep-alive-interval")
    return AggregatorOptions(
        status_aggregators=group,
        publisher_timeout=s.get_float("publisher-timeout", 30.0, min=0.1),
        keep_alive_interval=interval,
        keep_alive_timeout=timeout,
        max_frame_size=s.get_int("max-frame-size", MAX_FRAME_SIZE, min=4096, max=64 * 2**20),
        max_consumer_backlog=s.get_int("max-consumer-backlog", 16 * 2**20, min=65536),
        directory=(base / directory) if directory and not _is_ldap(directory) else None,
        ldap=_ldap(s, directory) if directory and _is_ldap(directory) else None,
        certs=(base / certs) if certs else certs_dir_for(config.file),
        publisher_kinds=kinds,
        consumers=tuple(s.get_str_list("consumers", [])),
        publishers=tuple(s.get_str_list("publishers", [])),
        store=_store(s, name),
    )


def _is_ldap(directory: str) -> bool:
    return directory.startswith(("ldap://", "ldaps://"))


def _ldap(s: Section, url: str) -> LdapSource:
    """The guide's LDAP data source: where, and its polling schedule."""
    when = s.get_optional_str("next-polling-time")
    first: float | None = None
    if when is not None:
        try:
            moment = datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise s.error("next-polling-time",
                          f"expected UTC time as YYYY-MM-DD hh:mm:ss, got {when!r}") from None
        first = moment.replace(tzinfo=datetime.UTC).timestamp()
    return LdapSource(
        url=url,
        base=s.get_str("ldap-base"),
        bind_dn=s.get_optional_str("ldap-bind-dn"),
        password=s.get_optional_str("ldap-password"),
        filter=s.get_str("ldap-filter", "(mail=*)"),
        polling_interval=s.get_float("polling-interval", 86400.0, min=1.0),
        next_polling_time=first,
    )


def _store(s: Section, name: str) -> str:
    value = s.get_str("store", f"sqlite:{state_dir(name) / 'status.db'}")
    if value != "none" and not value.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise s.error("store", f"expected sqlite:PATH, postgresql://... or none, got {value!r}")
    return value
