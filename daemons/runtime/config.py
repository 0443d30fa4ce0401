"""Configuration loading for every daemon: one TOML file, typed access,
errors that name the file, the key and the reason.

Option names keep the spelling of the reference guides (``oos-check``,
``tc-reconnect-timeout``, ``geo-location`` ...), so TOML keys use dashes.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


class ConfigError(Exception):
    """A configuration file is unusable; the message names file, key and reason."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + reason)


class Section:
    """A table of the configuration file with typed getters.

    ``path`` is the dotted key of this table, used in error messages, so an
    operator reads ``cluster.toml: applications.SIPS_A1.sip-port: expected an
    integer between 1 and 65535, got 'x'``.
    """

    def __init__(self, data: Mapping[str, Any], *, file: str, path: str = "") -> None:
        self._data = data
        self.file = file
        self.path = path
        self._read: set[str] = set()

    # -- plumbing -----------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name) if name else (self.path or None), reason)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def keys(self) -> Iterator[str]:
        return iter(self._data)

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._read.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            raise self.error(name, "required option is missing")
        return default

    def check_unknown(self, allowed: set[str] | None = None) -> None:
        """Reject keys nobody reads: a typo must not pass silently."""
        known = allowed if allowed is not None else self._read
        unknown = sorted(set(self._data) - known)
        if unknown:
            raise self.error(unknown[0], "unknown option" + _did_you_mean(unknown[0], known))

    # -- typed getters ------------------------------------------------------
    def get_str(self, name: str, default: Any = _MISSING) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        return value

    def get_optional_str(self, name: str) -> str | None:
        value = self.raw(name, None)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        return value

    def get_int(
        self, name: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {value!r}")
        if (min is not None and value < min) or (max is not None and value > max):
            raise self.error(name, f"expected an integer between {min} and {max}, got {value}")
        return value

    def get_port(self, name: str, default: Any = _MISSING) -> int:
        return self.get_int(name, default, min=0, max=65535)

    def get_float(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {value!r}")
        if (min is not None and value < min) or (max is not None and value > max):
            raise self.error(name, f"expected a number between {min} and {max}, got {value}")
        return float(value)

    def get_bool(self, name: str, default: Any = _MISSING) -> bool:
        value = self.raw(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            # the guides write booleans as strings: accept them
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value

    def get_choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get_str(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def get_host(self, name: str, default: Any = _MISSING) -> str:
        """An IP address or a host name (not looked up: a name is checked for
        its form only, see :func:`is_host_name`)."""
        value = self.get_str(name, default)
        if not is_ip_address(value) and not is_host_name(value):
            raise self.error(name, f"expected an IP address or host name, got {value!r}")
        return value

    def get_ip_address(self, name: str, default: Any = _MISSING) -> str:
        """An IPv4 or IPv6 address literal, for options that are an address:
        a daemon binds it or sends to it, so a name would go to the system
        resolver at run time and a typo would surface only then."""
        value = self.get_str(name, default)
        if not is_ip_address(value):
            raise self.error(name, f"expected an IP address, got {value!r}")
        return value

    def get_str_list(self, name: str, default: Any = _MISSING) -> list[str]:
        value = self.raw(name, default)
        if isinstance(value, str):
            # "a, b, c" as in the guides' comma-separated option values
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, got {value!r}")
        return list(value)

    def section(self, name: str, *, required: bool = False) -> Section:
        value = self.raw(name, _MISSING if required else {})
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a table, got {value!r}")
        return Section(value, file=self.file, path=self.key(name))

    def sections(self, name: str) -> dict[str, Section]:
        """A table of tables, e.g. ``[applications.NAME]``."""
        outer = self.section(name)
        result: dict[str, Section] = {}
        for key in outer.keys():
            result[key] = outer.section(key, required=True)
        return result


def is_ip_address(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal (without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: hostname = *( domainlabel "." ) toplabel [ "." ] (RFC 3261 §25.1, after
#: RFC 1123 §2.1): the last label starts with a letter, so a mistyped dotted
#: quad such as ``127.0.1.300`` is neither an address nor a name
_HOST_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


def is_host_name(text: str) -> bool:
    """True when ``text`` has the form of a host name (RFC 3261 §25.1, labels of
    at most 63 characters, 253 in all besides a final dot); nothing is looked up."""
    return len(text) <= 254 and _HOST_NAME.fullmatch(text) is not None


def load_file(path: str | Path) -> Section:
    """Read a TOML file; syntax errors name the line and column."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(file, None, "file not found") from None
    except PermissionError:
        raise ConfigError(file, None, "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(file, None, "is a directory, not a file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, None, f"not valid TOML: {exc}") from None
    return Section(data, file=file)


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
