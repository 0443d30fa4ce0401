"""The SIP stack (RFC 3261 and companions), sans-I/O.

The message model, the transaction layer and the proxy's byte edits
(``COMPILED_MODULES``) may be compiled with mypyc (``setup.py``). The compiled
extensions sit next to their sources; they are used only while they are newer
than the source they were built from, so an edited module never runs as stale
machine code. Setting ``SIPCLUSTER_PURE_PYTHON=1`` makes every module load
from source. ``COMPILED`` tells which of the two is in use.

:func:`select_build` makes that choice for a package's compiled modules; the
sip-proxy's core (``daemons.sip_proxy``, compiled against these modules) makes
it the same way.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED", "COMPILED_MODULES", "SourceFinder", "select_build", "stale_modules"]

#: The modules setup.py compiles, in dependency order.
COMPILED_MODULES = ("uri", "headers", "message", "timers", "rules", "transaction", "splice")

_HERE = Path(__file__).resolve().parent
_SLACK_SECONDS = 2.0


def _extension(directory: Path, name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = directory / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def stale_modules(directory: Path = _HERE,
                  names: Sequence[str] = COMPILED_MODULES) -> list[str] | None:
    """The compiled modules ``names`` in ``directory`` built before their source was
    last changed.

    ``None`` when none is compiled at all; a module with a source but no
    extension while others have one counts as stale. An installed package
    unpacks sources and extensions a moment apart, so only a source newer than
    its extension by more than two seconds makes it stale.
    """
    built = {name: _extension(directory, name) for name in names}
    if all(path is None for path in built.values()):
        return None
    return [
        name for name, path in built.items()
        if path is None
        or (directory / f"{name}.py").stat().st_mtime - path.stat().st_mtime > _SLACK_SECONDS
    ]


class SourceFinder:
    """Loads the compiled modules ``names`` of ``package`` from their ``.py`` source."""

    def __init__(self, package: str, directory: Path, names: Sequence[str]) -> None:
        self.package = package
        self.directory = directory
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != self.package or name not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, self.directory / f"{name}.py")


def select_build(package: str, directory: Path, names: Sequence[str], *,
                 usable: bool = True) -> bool:
    """Whether ``package`` runs its compiled modules ``names`` (in ``directory``).

    True only when all of them are built and fresh (:func:`stale_modules`),
    ``SIPCLUSTER_PURE_PYTHON`` is unset and ``usable`` (what the build was
    compiled against runs compiled too); otherwise a :class:`SourceFinder`
    makes them load from source, with a ``RuntimeWarning`` when they are stale.
    Call it from the package's ``__init__``, before any of them is imported.
    """
    stale = stale_modules(directory, names)
    if stale is None:
        return False
    pure = os.environ.get("SIPCLUSTER_PURE_PYTHON", "") not in ("", "0")
    if stale and not pure:
        warnings.warn(
            f"compiled {package} modules older than their source ({', '.join(stale)}): "
            "running the pure Python sources; rebuild with `make compile`",
            RuntimeWarning,
            stacklevel=2,
        )
    if stale or pure or not usable:
        sys.meta_path.insert(0, SourceFinder(package, directory, names))
        return False
    return True


#: True when the mypyc-compiled message model and transaction layer are in use.
COMPILED: bool = select_build(__name__, _HERE, COMPILED_MODULES)
