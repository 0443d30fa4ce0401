"""The directory the aggregator joins users by: their e-mail identity (guide:
"a user must have an associated email account matching his or her LDAP (or
other data source) email account").

:class:`FileDirectory` reads a CSV file with a header line (``email`` first,
then any columns: ``name``, ``department`` ...). Without a directory
(:class:`OpenDirectory`) every user a publisher publishes is known, and a
search looks through the users the table holds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

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
        needle = text.lower()
        found: list[dict[str, Any]] = []
        for email, entry in self.entries.items():
            if needle in email or needle in entry.get("name", "").lower():
                found.append(dict(entry, email=email))
                if len(found) >= limit:
                    break
        return found


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
