"""Fixtures of the deployment tests: the repository's deploy/ files, parsed.

systemd units are read with :func:`parse_unit` (systemd.syntax(7): sections,
``Key=value`` lines that may repeat, ``#``/``;`` comments, backslash line
continuation); the compose file with PyYAML; cluster files with
:func:`daemons.cluster.config.load_cluster`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemons.cluster.config import ClusterConfig, load_cluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections of a unit file -> ordered (key, value) pairs (keys may repeat)."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {line!r}")
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value ``key`` has in ``section``, in file order."""
    return [v for k, v in unit.get(section, []) if k == key]


@pytest.fixture(name="unit_files")
def _unit_files() -> dict[str, Path]:
    """Unit file name -> path, for every unit in deploy/systemd/."""
    files = sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.target"))
    assert files, "no unit files in deploy/systemd"
    return {p.name: p for p in files}


@pytest.fixture(name="read_unit")
def _read_unit() -> Callable[[Path], Unit]:
    return lambda path: parse_unit(path.read_text(encoding="utf-8"))


@pytest.fixture(name="unit_values")
def _unit_values() -> Callable[[Unit, str, str], list[str]]:
    return values


@pytest.fixture(name="compose", scope="session")
def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(name="compose_cluster", scope="session")
def _compose_cluster() -> ClusterConfig:
    return load_cluster(COMPOSE / "cluster.toml")


@pytest.fixture(name="lab_cluster", scope="session")
def _lab_cluster() -> ClusterConfig:
    return load_cluster(DEPLOY / "etc" / "cluster.toml")
