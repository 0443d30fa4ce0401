"""``sipcluster status``: the status-aggregators for operators and scripts
(docs/status-aggregator.md, "Operators' tool").

    sipcluster status publish --config F --as ops USER STATUS [--persistent] [--detail D]
                              [--until TIME] [--on-phone] [--server S | --logged-off]
    sipcluster status query   --config F --as desk USER...
    sipcluster status watch   --config F --as desk USER... | '*'  [--count N] [--for S]
    sipcluster status search  --config F --as desk TEXT [--limit N]

Each connects over mutual TLS with the certificate ``--as`` names (from
``certs/`` beside the cluster file, or ``--certs DIR``) to the first
status-aggregator of ``status-aggregators`` that answers, and prints one
JSON object per line. Exit status: 0; 1 when a user was refused or no
aggregator answered; 2 for a bad command line or cluster file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemons.cluster.config import load_cluster
from daemons.runtime.certs import CertError, certs_dir_for, client_context
from daemons.runtime.config import ConfigError
from daemons.runtime.logs import configure_logging
from daemons.runtime.status_client import StatusClient, aggregator_addresses
from protocols.status.errors import ErrorCode
from protocols.status.messages import Role, StatusRecord

__all__ = ["add_parser", "run"]


def _until(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ISO 8601 or a UNIX time, got {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="publish, query, watch and search user status at the status-aggregators",
        description="A client of the status-aggregators (mutual TLS, fail-over in list order).")
    sub = parser.add_subparsers(dest="status_action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, type=Path, help="the cluster file (TOML)")
        p.add_argument("--as", dest="identity", required=True, metavar="NAME",
                       help="the certificate to connect with (an application or a name the "
                            "aggregators' options list)")
        p.add_argument("--certs", type=Path, help="certificates directory (certs/ beside the "
                                                   "cluster file)")
        p.add_argument("--aggregator", help="connect to this status-aggregator only")
        p.add_argument("--timeout", type=float, default=10.0)
        p.add_argument("--log-level", default="warning")

    publish = sub.add_parser("publish", help="publish one user's status")
    common(publish)
    publish.add_argument("user")
    publish.add_argument("status", help="the status key ('' for none)")
    publish.add_argument("--persistent", action="store_true")
    publish.add_argument("--detail", default="")
    publish.add_argument("--until", type=_until, help="ISO 8601 time or UNIX time")
    publish.add_argument("--on-phone", action="store_true")
    where = publish.add_mutually_exclusive_group()
    where.add_argument("--server", help="the logged-on server (default: the --as name)")
    where.add_argument("--logged-off", action="store_true")
    query = sub.add_parser("query", help="print users' status")
    common(query)
    query.add_argument("users", nargs="+")
    watch = sub.add_parser("watch", help="print users' status and every change ('*': all)")
    common(watch)
    watch.add_argument("users", nargs="+")
    watch.add_argument("--count", type=int, help="stop after N records")
    watch.add_argument("--for", dest="duration", type=float, help="stop after S seconds")
    search = sub.add_parser("search", help="search the directory")
    common(search)
    search.add_argument("text")
    search.add_argument("--limit", type=int, default=50)
    parser.set_defaults(run=run)


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, fmt="console")
    try:
        config = load_cluster(args.config)
        addresses = aggregator_addresses(config)
        if args.aggregator:
            addresses = [a for a in addresses if a.name == args.aggregator]
        if not addresses:
            raise ConfigError(str(args.config), None, "no status-aggregator to connect to")
        context = client_context(args.certs or certs_dir_for(args.config), args.identity)
    except (ConfigError, CertError) as exc:
        print(f"status {args.status_action}: {exc}", file=sys.stderr)
        return 2
    role = Role.PUBLISHER if args.status_action == "publish" else Role.CONSUMER
    try:
        return asyncio.run(_run(args, addresses, context, role))
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        print(f"status {args.status_action}: {exc or 'no status-aggregator answered'}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def _run(args: argparse.Namespace, addresses: Any, context: Any, role: Role) -> int:
    done = asyncio.Event()
    seen = 0

    def on_records(records: list[StatusRecord]) -> None:
        nonlocal seen
        for record in records:
            _print(record.to_map())
            seen += 1
            if args.status_action == "watch" and args.count is not None and seen >= args.count:
                done.set()

    client = StatusClient(name=args.identity, role=role, aggregators=addresses, context=context,
                          on_records=on_records if args.status_action == "watch" else None,
                          snapshot=False)
    client.start()
    try:
        await client.wait_open(args.timeout, fail_fast=True)
        action = args.status_action
        if action == "publish":
            server = "" if args.logged_off else (args.server or args.identity)
            result = await client.publish_now([StatusRecord(
                user=args.user, status=args.status, persistent=args.persistent,
                until=args.until, detail=args.detail, on_phone=args.on_phone,
                server=server)], args.timeout)
            return _report_refused(result.refused)
        if action == "query":
            result = await client.query(args.users, args.timeout)
            for record in result.records:
                _print(record.to_map())
            return _report_refused(result.refused)
        if action == "search":
            found = await client.search(args.text, args.limit, args.timeout)
            for entry in found.entries:
                _print(dict(entry))
            return 0
        result = await client.watch(args.users, args.timeout)
        if result.refused:
            _report_refused(result.refused)
        if args.count is not None and seen >= args.count:
            return 0
        try:
            await asyncio.wait_for(done.wait(), args.duration)
        except TimeoutError:
            pass
        return 0
    finally:
        await client.stop()


def _report_refused(refused: Mapping[str, int]) -> int:
    for user, code in refused.items():
        print(f"refused: {user}: {ErrorCode(code).name.lower()}", file=sys.stderr)
    return 1 if refused else 0
