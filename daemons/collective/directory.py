"""The company-wide directory of one site: its home users, the spanning users
replicated from its peers, their statuses, and the duplicate extensions among
spanning users (guide: "Company-wide directory, extensions, and agent status
indicators", "Similar user extensions on different peer sites").

Sans-I/O: the service feeds it what the store loaded, what the peers sent and
what the site's status-aggregator reports, and reads what it should tell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from daemons.collective.messages import SpanningUser, UserStatus

__all__ = ["Directory", "Duplicate", "Location"]

Key = tuple[int, str]


@dataclass(frozen=True)
class Duplicate:
    """Spanning users of different sites sharing one extension."""

    extension: str
    users: tuple[Key, ...]

    def to_map(self) -> dict[str, object]:
        return {"extension": self.extension,
                "users": [{"home_site": h, "id": i} for h, i in self.users]}


@dataclass(frozen=True)
class Location:
    """Where calls to a user's extension go (guide: "Multi-Site Supports Roaming
    Users"): the site the user is logged on at, else (logged off, or not heard
    of) the home site. With the hub away this is the last site heard of."""

    user: SpanningUser
    site: int
    source: str  # "logged-on" | "home"


@dataclass
class Directory:
    """Users by (home site, id); ``spanning`` for the ones that replicate."""

    home_site: int
    users: dict[Key, SpanningUser] = field(default_factory=dict)
    spanning: set[Key] = field(default_factory=set)
    statuses: dict[Key, UserStatus] = field(default_factory=dict)
    _by_extension: dict[str, set[Key]] = field(default_factory=dict)

    # -- users -------------------------------------------------------------------
    def put(self, user: SpanningUser, spanning: bool) -> None:
        key = (user.home_site, user.id)
        old = self.users.get(key)
        if old is not None:
            self._unindex(key, old.extension)
        self.users[key] = user
        self._by_extension.setdefault(user.extension, set()).add(key)
        if spanning:
            self.spanning.add(key)
        else:
            self.spanning.discard(key)

    def remove(self, home_site: int, user_id: str) -> SpanningUser | None:
        key = (home_site, user_id)
        old = self.users.pop(key, None)
        if old is not None:
            self._unindex(key, old.extension)
            self.spanning.discard(key)
            self.statuses.pop(key, None)
        return old

    def _unindex(self, key: Key, extension: str) -> None:
        keys = self._by_extension.get(extension)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_extension[extension]

    def get(self, home_site: int, user_id: str) -> SpanningUser | None:
        return self.users.get((home_site, user_id))

    def home_spanning(self) -> list[SpanningUser]:
        """This site's users that replicate to every site, in id order."""
        return sorted((self.users[k] for k in self.spanning if k[0] == self.home_site),
                      key=lambda u: u.id)

    def of_site(self, site: int) -> list[str]:
        return [i for h, i in self.users if h == site]

    def duplicates(self, extensions: Iterable[str] | None = None) -> list[Duplicate]:
        """Spanning users of more than one site on one extension (all of them,
        or only on ``extensions``)."""
        names = self._by_extension if extensions is None else extensions
        out = []
        for extension in sorted(set(names)):
            keys = self._by_extension.get(extension, set()) & self.spanning
            if len({h for h, _ in keys}) > 1:
                out.append(Duplicate(extension, tuple(sorted(keys))))
        return out

    def find(self, user_id: str) -> SpanningUser | None:
        """The user a status identity's local part names: the home user of that
        id, else the one spanning user of that id from another site."""
        home = self.users.get((self.home_site, user_id))
        if home is not None:
            return home
        others = [self.users[k] for k in self.spanning if k[1] == user_id]
        return others[0] if len(others) == 1 else None

    def locate(self, extension: str) -> list[Location]:
        """Where each user on ``extension`` is: this site's users and the spanning
        users of the others (more than one: a duplicate extension)."""
        out = []
        for key in sorted(self._by_extension.get(extension, ())):
            if key[0] != self.home_site and key not in self.spanning:
                continue
            status = self.statuses.get(key)
            if status is not None and status.logged_on:
                out.append(Location(self.users[key], status.site, "logged-on"))
            else:
                out.append(Location(self.users[key], key[0], "home"))
        return out

    # -- statuses ----------------------------------------------------------------
    def apply_status(self, status: UserStatus) -> bool:
        """Take a status report; False when it is ignored: an unknown user, or a
        log-off from a site the user has since left."""
        key = (status.home_site, status.id)
        if key not in self.users:
            return False
        current = self.statuses.get(key)
        if (not status.logged_on and current is not None and current.logged_on
                and current.site != status.site):
            return False
        self.statuses[key] = status
        return True
