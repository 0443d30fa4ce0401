"""``sipcluster director status``: the running director's wallboard in a
terminal (docs/director.md, "Status for wallboards"): queues (waiting calls,
oldest wait, routed, abandoned, conflicts, service level), agents per site
and, for a Director Server, its monitored servers, read from its HTTP port.
Without ``--config`` the running lab's cluster file
(``lab-run/cluster.toml``), else ``/etc/sipcluster/cluster.toml``; without
``--name`` the one director application of that file.

The ``director`` command itself is declared by :mod:`daemons.director.service`
(``sipcluster director [run|status] --config F --name APP``); this module is
its operators' side.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, load_cluster
from daemons.runtime.config import ConfigError

__all__ = ["add_parser", "fetch_status", "format_status", "print_status", "run"]

#: where ``status`` looks for the cluster file when none is given
DEFAULT_CONFIGS = (Path("lab-run") / "cluster.toml", Path("/etc/sipcluster/cluster.toml"))


def add_parser(subparsers: Any) -> None:
    """``status`` is an action of the ``director`` command (service.py)."""
    if "director" not in subparsers.choices:
        parser = subparsers.add_parser("director", help="ask a running director its status")
        parser.add_argument("action", nargs="?", choices=("status",), default="status")
        parser.add_argument("--config", metavar="FILE")
        parser.add_argument("--name", metavar="APP")
        parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    return print_status(args)


def fetch_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{port}/status/director",
                                timeout=timeout) as resp:
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError("the status page is not a JSON object")
    return data


def format_status(status: dict[str, Any]) -> str:
    lines = [f"director {status.get('application')}: nodes "
             f"{', '.join(status.get('nodes') or []) or 'none'}; t-controller "
             f"{status.get('t-controller') or 'none'}; decision p99 "
             f"{status.get('decision-p99-ms')} ms"]
    lines.append(f"{'queue':<12} {'waiting':>7} {'oldest':>7} {'entered':>7} {'routed':>7} "
                 f"{'default':>7} {'abandon':>7} {'conflict':>8} {'svc-lvl':>7}")
    for name, q in sorted((status.get("queues") or {}).items()):
        level = q.get("service-level")
        lines.append(f"{name:<12} {q['waiting']:>7} {q['oldest-wait']:>7.1f} {q['entered']:>7} "
                     f"{q['routed']:>7} {q['default-routed']:>7} {q['abandoned']:>7} "
                     f"{q['conflicts']:>8} {'-' if level is None else f'{level:.0%}':>7}")
    lines.append(f"{'site':<12} {'ready':>7} {'busy':>7} {'reserved':>8} {'notready':>8}")
    for site, c in sorted((status.get("agents") or {}).items()):
        lines.append(f"{site:<12} {c['ready']:>7} {c['busy']:>7} {c['reserved']:>8} "
                     f"{c['not-ready']:>8}")
    sites = status.get("sites") or {}
    if sites:
        lines.append(f"{'monitored':<14} {'site':<8} {'state':<14} {'avail':>5} {'waiting':>7} "
                     f"{'routed':>6}")
        for name, m in sorted(sites.items()):
            waiting = sum(q.get("waiting", 0) for q in (m.get("queues") or {}).values())
            lines.append(f"{name:<14} {m.get('site') or '-':<8} {m['state']:<14} "
                         f"{(m.get('available') or {}).get('*', 0):>5} {waiting:>7} "
                         f"{m['routed']:>6}")
    return "\n".join(lines)


def print_status(args: argparse.Namespace) -> int:
    config = args.config or next((str(p) for p in DEFAULT_CONFIGS if p.exists()), None)
    if config is None:
        print("director: no cluster file (--config FILE; none in "
              f"{' or '.join(map(str, DEFAULT_CONFIGS))})", file=sys.stderr)
        return 2
    try:
        cluster = load_cluster(config)
        name = args.name
        if name is None:
            directors = [a.name for a in cluster.by_kind(AppKind.DIRECTOR)]
            if len(directors) != 1:
                print(f"director: {config}: {len(directors)} director applications "
                      f"({', '.join(directors) or 'none'}); name one with --name",
                      file=sys.stderr)
                return 2
            name = directors[0]
        app = cluster.application(name, AppKind.DIRECTOR)
    except ConfigError as exc:
        print(f"director: {exc}", file=sys.stderr)
        return 2
    port = app.port("http-port")
    assert port is not None  # required for a director
    try:
        status = fetch_status(app.host, port)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"director: {app.name} at {app.host}:{port} does not answer: {exc}",
              file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
