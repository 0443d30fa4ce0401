"""``sipcluster rtm ...``: operators' tools for the hub and failure drills
(docs/rtm-server.md, "Operators' tools").

    sipcluster rtm check-site PEER (--hub HOST:PORT | --config F --hub-name RTM1) --password-file F
    sipcluster rtm send --site N --to DEST --object O --event E [-i INT] [-s STR] [--request]
    sipcluster rtm listen --handler NAME --site N [--respond] [--send-to DEST ... --count N]
    sipcluster rtm dead-letters --config F --name RTM1 [--limit N]

``check-site`` is the guide's "Check Site": it logs on to the hub with the
peer's site id and password (without taking the peer's session) and prints
the hub's report as JSON; exit status 0 (accepted), 1 (refused: wrong id or
password, version) or 2 (hub unreachable). ``send`` sends one message
through the durable outbox and prints its seq once the hub holds it (for a
request, the response too). ``listen`` is a durable handler: every message it
handles is printed as one JSON line with its delivery id, once, and kept in
its journal (``--state DIR``/NAME.db); with ``--send-to`` it also sends a
numbered load (events, and every ``--request-every`` one a request) for
drills.

The password comes from ``--password-file``, ``$SIPCLUSTER_RTM_PASSWORD`` or
``--password`` (visible to other users in the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, load_cluster
from daemons.runtime.config import ConfigError
from daemons.runtime.logs import configure_logging
from daemons.runtime.rtm_client import (
    Delivery,
    RequestRejected,
    RequestTimeout,
    RtmClient,
    RtmRefused,
    check_site,
)
from protocols.rtm.elements import Element, MessageBuilder

__all__ = ["add_parser", "run"]


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _site(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 999:
        raise argparse.ArgumentTypeError(f"a site id is 1-999, got {text!r}")
    return int(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", type=_hostport, action="append", metavar="HOST:PORT",
                        help="a hub's rtm-port (repeat for the pair)")
    parser.add_argument("--config", type=Path, help="the cluster file: find the hub there")
    parser.add_argument("--hub-name", metavar="APP",
                        help="the rtm-server application (with its backup, if any)")
    parser.add_argument("--password-file", type=Path, help="file holding the password")
    parser.add_argument("--password", help="the password (prefer --password-file)")
    parser.add_argument("--tls", action="store_true", help="connect over TLS")
    parser.add_argument("--ca", type=Path, help="CA certificate that signed the hub's")
    parser.add_argument("--log-level", default=os.environ.get("SIPCLUSTER_LOG_LEVEL", "warning"))


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", type=_site, required=True, help="this site's id")
    parser.add_argument("--state", type=Path, default=Path("."),
                        help="directory of the outbox and journal files (default .)")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rtm", help="RTM tools: check a site, send, listen (docs/rtm-server.md)",
        description="Operators' tools for the rtm-server hub.")
    sub = parser.add_subparsers(dest="rtm_action", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check-site", help="log on as a peer site and report (Check Site)")
    check.add_argument("peer", type=_site, metavar="PEER", help="the peer's site id")
    check.add_argument("--timeout", type=float, default=5.0)
    _common(check)
    check.set_defaults(run=run_check)

    send = sub.add_parser("send", help="send one message through the durable outbox")
    _common(send)
    _client_options(send)
    send.add_argument("--to", required=True, help="destination site id, or * (every other)")
    send.add_argument("--object", required=True, help="object id")
    send.add_argument("--event", required=True, help="event id")
    send.add_argument("-i", "--integer", dest="elements", type=int, action="append",
                      default=[], help="put an integer element (repeat, in order)")
    send.add_argument("-s", "--string", dest="elements", action="append",
                      help="put a string element (repeat, in order)")
    send.add_argument("--request", action="store_true",
                      help="send a request, wait for its response")
    send.add_argument("--timeout-ms", type=int, default=0,
                      help="request timeout in ms (0: wait forever)")
    send.set_defaults(run=run_send)

    dead = sub.add_parser("dead-letters",
                          help="list the hub's dead letters (newest first) as JSON lines")
    dead.add_argument("--config", type=Path, required=True, help="the cluster file")
    dead.add_argument("--name", required=True, metavar="APP", help="the rtm-server application")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(run=run_dead_letters)

    listen = sub.add_parser("listen", help="a durable handler printing what it handles")
    _common(listen)
    _client_options(listen)
    listen.add_argument("--handler", required=True, help="handler name (its journal file)")
    listen.add_argument("--respond", action="store_true",
                        help="answer every request with its own elements")
    listen.add_argument("--send-to", action="append", default=[], metavar="DEST",
                        help="drill: send a numbered load to this site or * (repeat)")
    listen.add_argument("--count", type=int, default=0, help="drill: messages to send")
    listen.add_argument("--rate", type=float, default=0.0,
                        help="drill: messages per second (0: as fast as accepted)")
    listen.add_argument("--request-every", type=int, default=0,
                        help="drill: every Nth message is a request")
    listen.add_argument("--timeout-ms", type=int, default=0, help="drill: request timeout")
    listen.add_argument("--quiet", action="store_true", help="do not print handled messages")
    listen.set_defaults(run=run_listen)


def run(args: argparse.Namespace) -> int:  # the group itself has no action
    return 2


# ----------------------------------------------------------------------------- helpers


class _Refusal(Exception):
    pass


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        return str(args.password_file.read_text(encoding="utf-8")).rstrip("\r\n")
    env = os.environ.get("SIPCLUSTER_RTM_PASSWORD")
    if env:
        return env
    if args.password:
        return str(args.password)
    raise _Refusal("give --password-file, $SIPCLUSTER_RTM_PASSWORD or --password")


def _hubs(args: argparse.Namespace) -> list[tuple[str, int]]:
    hubs: list[tuple[str, int]] = list(args.hub or [])
    if args.config is not None:
        cfg = load_cluster(args.config)
        names = [args.hub_name] if args.hub_name else [
            a.name for a in cfg.by_kind(AppKind.RTM_SERVER)]
        for name in names:
            app = cfg.application(name, AppKind.RTM_SERVER)
            pair = app.options.get("pair")
            for entry in (app, cfg.applications.get(pair) if isinstance(pair, str) else None):
                if entry is not None and (entry.host, entry.ports["rtm-port"]) not in hubs:
                    hubs.append((entry.host, entry.ports["rtm-port"]))
    if not hubs:
        raise _Refusal("give --hub HOST:PORT or --config FILE [--hub-name APP]")
    return hubs


def _ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls:
        return None
    context = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
    return context


def _prepare(args: argparse.Namespace, name: str) -> tuple[list[tuple[str, int]], str,
                                                            ssl.SSLContext | None] | int:
    configure_logging(args.log_level)
    try:
        return _hubs(args), _password(args), _ssl(args)
    except (_Refusal, ConfigError, OSError) as exc:
        print(f"rtm {name}: {exc}", file=sys.stderr)
        return 2


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- commands


def run_dead_letters(args: argparse.Namespace) -> int:
    """Read the dead letters from the hub's store (the hub may be running)."""
    from daemons.rtm_server.options import read_options
    from daemons.rtm_server.store import StoreError, open_store

    try:
        cfg = load_cluster(args.config)
        options = read_options(cfg, cfg.application(args.name, AppKind.RTM_SERVER))
    except (ConfigError, ValueError) as exc:
        print(f"rtm dead-letters: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        store = open_store(options.store)
        try:
            await store.open()
            rows = await store.dead_letters(args.limit)
        except StoreError as exc:
            print(f"rtm dead-letters: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()
        for row in rows:
            _print(dict(row))
        return 0

    return int(asyncio.run(main()))


def run_check(args: argparse.Namespace) -> int:
    prepared = _prepare(args, "check-site")
    if isinstance(prepared, int):
        return prepared
    hubs, password, context = prepared

    async def main() -> int:
        last = "no hub"
        for host, port in hubs:
            try:
                report = await check_site(host, port, args.peer, password, ssl=context,
                                          timeout=args.timeout)
            except RtmRefused as exc:
                _print({"site": args.peer, "hub": f"{host}:{port}", "ok": False,
                        "code": exc.code, "reason": exc.reason})
                return 1
            except (OSError, TimeoutError) as exc:
                last = f"{host}:{port}: {exc or 'timed out'}"
                continue
            _print({"site": args.peer, "hub_address": f"{host}:{port}", "ok": True, **report})
            return 0
        print(f"rtm check-site: cannot reach a hub ({last})", file=sys.stderr)
        return 2

    return int(asyncio.run(main()))


def _elements(values: list[Any]) -> tuple[Element, ...]:
    builder = MessageBuilder()
    for value in values:
        if isinstance(value, int):
            builder.put_integer(value)
        else:
            builder.put_string(str(value))
    return builder.elements


async def _until_connected(client: RtmClient, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not client.connected.is_set():
            if client.refusal is not None and client.refusal.code in (
                    "auth-failed", "version-mismatch"):
                raise client.refusal
            await asyncio.sleep(0.05)


def run_send(args: argparse.Namespace) -> int:
    prepared = _prepare(args, "send")
    if isinstance(prepared, int):
        return prepared
    hubs, password, context = prepared

    async def main() -> int:
        client = RtmClient(site=args.site, password=password, hubs=hubs, ssl=context,
                           state=args.state / f"send-site-{args.site}.db")
        await client.start()
        try:
            elements = _elements(args.elements)
            if args.request:
                seq, future = await client.submit_request(args.to, args.object, args.event,
                                                          elements, args.timeout_ms)
                await client.flushed()
                _print({"seq": seq, "held": True})
                try:
                    response = await future
                except (RequestTimeout, RequestRejected) as exc:
                    _print({"seq": seq, "error": str(exc)})
                    return 1
                _print({"seq": seq, "response": response.to_json()})
                return 0
            seq = await client.send_event(args.to, args.object, args.event, elements)
            await client.flushed()
            rejected = [r for r in client.rejected if r[0] == seq]
            if rejected:
                _print({"seq": seq, "rejected": rejected[0][1], "reason": rejected[0][2]})
                return 1
            _print({"seq": seq, "held": True})
            return 0
        finally:
            await client.close()

    try:
        return int(asyncio.run(main()))
    except RtmRefused as exc:
        print(f"rtm send: refused: {exc}", file=sys.stderr)
        return 1


def run_listen(args: argparse.Namespace) -> int:
    prepared = _prepare(args, "listen")
    if isinstance(prepared, int):
        return prepared
    hubs, password, context = prepared
    if args.send_to and args.count <= 0:
        print("rtm listen: --send-to needs --count N", file=sys.stderr)
        return 2

    def handler(delivery: Delivery) -> tuple[Element, ...] | None:
        if delivery.kind == "request" and args.respond:
            return delivery.elements
        return None

    def handled(deliveries: list[Delivery]) -> None:
        if args.quiet:
            return
        for d in deliveries:
            _print({"handler": args.handler, **d.to_json()})

    async def main() -> int:
        stop = asyncio.Event()  # SIGTERM: close the journal cleanly
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        client = RtmClient(site=args.site, password=password, hubs=hubs, ssl=context,
                           state=args.state / f"{args.handler}.db", handler=handler,
                           on_handled=handled, keep_sent=bool(args.send_to))
        await client.start()
        sender = asyncio.create_task(_drill(client, args)) if args.send_to else None
        await stop.wait()
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await client.close()
        return 0

    return int(asyncio.run(main()))


async def _drill(client: RtmClient, args: argparse.Namespace) -> None:
    """Send ``--count`` numbered messages round the ``--send-to`` destinations;
    the elements are (n, "site:n"). Already sent ones (after a restart) are
    not sent again: the count goes on from the outbox's ``sent`` log."""
    db = client._db
    assert db is not None
    (done,), = await db.execute_fetchall("SELECT count(*) FROM sent")
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending: set[asyncio.Future[Any]] = set()
    for n in range(int(done), args.count):
        dest = args.send_to[n % len(args.send_to)]
        elements = MessageBuilder().put_integer(n).put_string(f"{client.site}:{n}").elements
        if args.request_every and n % args.request_every == args.request_every - 1 \
                and dest != "*":
            _, future = await client.submit_request(dest, "drill", "request", elements,
                                                    args.timeout_ms)
            pending.add(future)
            future.add_done_callback(pending.discard)
        else:
            await _submit_event(client, dest, elements, pending)
        if args.rate > 0:
            delay = started + (n - done + 1) / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif len(pending) > 2000:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await client.flushed()


async def _submit_event(client: RtmClient, dest: str, elements: tuple[Element, ...],
                        pending: set[asyncio.Future[Any]]) -> None:
    future = asyncio.ensure_future(client.send_event(dest, "drill", "event", elements))
    pending.add(future)
    future.add_done_callback(pending.discard)
    await asyncio.sleep(0)
