"""The directory the aggregator joins users by: their e-mail identity (guide:
"a user must have an associated email account matching his or her LDAP (or
other data source) email account").

:class:`FileDirectory` reads a CSV file with a header line (``email`` first,
then any columns: ``name``, ``department`` ...). :class:`LdapDirectory` reads
the entries of an LDAP server (``ldap3``) with a ``mail`` attribute, at start
and then on the guide's schedule: ``next-polling-time`` (UTC), then every
``polling-interval`` seconds (:func:`next_poll`). Without a directory
(:class:`OpenDirectory`) every user a publisher publishes is known, and a
search looks through the users the table holds.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]

from daemons.runtime.config import ConfigError


class FileDirectory:
    """Users from a CSV file, kept in memory; searched by identity and name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, str]] = {}
        self.load()

    def load(self) -> None:
        try:
            with self.path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or reader.fieldnames[0] != "email":
                    raise ConfigError(str(self.path), None,
                                      "a directory file starts with the header line email,...")
                entries = {}
                for row in reader:
                    email = (row.get("email") or "").strip().lower()
                    if email:
                        entries[email] = {k: (v or "") for k, v in row.items() if k}
        except OSError as exc:
            raise ConfigError(str(self.path), None, f"cannot read the directory: {exc}") from exc
        self.entries = entries

    def __contains__(self, user: str) -> bool:
        return user.lower() in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        return _search(self.entries, text, limit)


def _search(entries: dict[str, dict[str, str]], text: str, limit: int) -> list[dict[str, Any]]:
    needle = text.lower()
    found: list[dict[str, Any]] = []
    for email, entry in entries.items():
        if needle in email or needle in entry.get("name", "").lower():
            found.append(dict(entry, email=email))
            if len(found) >= limit:
                break
    return found


def next_poll(now: float, next_polling_time: float | None, interval: float) -> float:
    """When to poll the directory source next (UNIX time, UTC; guide:
    NEXT_POLLING_TIME, POLLING_INTERVAL): ``next-polling-time``, then every
    ``polling-interval`` after it; the first of these not before ``now``.
    Without ``next-polling-time``: ``now + interval``."""
    if next_polling_time is None:
        return now + interval
    if next_polling_time >= now:
        return next_polling_time
    return next_polling_time + math.ceil((now - next_polling_time) / interval) * interval


@dataclass(frozen=True)
class LdapSource:
    """Where the LDAP directory is and how to read it."""

    url: str
    base: str
    bind_dn: str | None = None
    password: str | None = None
    filter: str = "(mail=*)"
    polling_interval: float = 86400.0
    next_polling_time: float | None = None


class LdapDirectory:
    """Users from an LDAP server, kept in memory between polls; searched like
    the file directory. :meth:`fetch` blocks (run it in a thread); :meth:`replace`
    installs what it read."""

    def __init__(self, source: LdapSource) -> None:
        self.source = source
        self.entries: dict[str, dict[str, str]] = {}
        self.loaded = False

    def fetch(self) -> dict[str, dict[str, str]]:
        """Every entry with a mail attribute (``ldap3.core.exceptions.LDAPException``
        or OSError when the server cannot be read)."""
        server = ldap3.Server(self.source.url, connect_timeout=5)
        with ldap3.Connection(server, user=self.source.bind_dn, password=self.source.password,
                              auto_bind=True, receive_timeout=30) as conn:
            pages = conn.extend.standard.paged_search(
                self.source.base, self.source.filter, attributes=["mail", "cn", "ou",
                                                                  "telephoneNumber"],
                paged_size=500, generator=True)
            entries: dict[str, dict[str, str]] = {}
            for item in pages:
                attributes = item.get("attributes") or {}
                mails = attributes.get("mail") or []
                mails = [mails] if isinstance(mails, str) else mails
                name = attributes.get("cn") or ""
                name = name[0] if isinstance(name, list) and name else name
                phone = attributes.get("telephoneNumber") or ""
                phone = phone[0] if isinstance(phone, list) and phone else phone
                for mail in mails:
                    entries[str(mail).lower()] = {"email": str(mail).lower(), "name": str(name),
                                                  "phone": str(phone), "dn": item.get("dn", "")}
        return entries

    def replace(self, entries: dict[str, dict[str, str]]) -> None:
        self.entries = entries
        self.loaded = True

    def __contains__(self, user: str) -> bool:
        return user.lower() in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        return _search(self.entries, text, limit)


class OpenDirectory:
    """No directory source: the users the table holds."""

    def __init__(self, users: Callable[[], Iterable[str]]) -> None:
        self._users = users

    def __contains__(self, user: str) -> bool:
        return True

    def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        needle = text.lower()
        found: list[dict[str, Any]] = []
        for user in self._users():
            if needle in user.lower():
                found.append({"email": user})
                if len(found) >= limit:
                    break
        return found
