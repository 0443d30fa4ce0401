"""``sipcluster tlib``: a desktop emulator speaking T-Library as JSON lines
(docs/tlib.md, "Command-line client").

Reads one request per line on stdin, e.g.::

    {"message":"RequestAgentLogin","AttributeThisDN":"1001","AttributeAgentID":"a1001"}

and prints every event received as one JSON line on stdout, starting with
the handshake's ``EventServerInfo``. Bytes values are written (and may be
given) as ``{"$base64": "..."}``. The tool exits when stdin is closed and
every request has had its answer (plus ``--grace`` seconds for trailing
events), and with status 1 and a message on stderr when the connection is
lost or an answer does not come within ``--answer-timeout``. Input lines
that are not valid requests are reported on stderr and skipped; the exit
status is then 2.

Also runnable as ``python -m daemons.tools.tlib_cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

from daemons.runtime.logs import configure_logging
from daemons.runtime.tlib_client import TLibClient, TLibConnectionLost, TLibHandshakeError
from protocols.tlib.errors import TLibError
from protocols.tlib.session import DEFAULT_ADDP_REMOTE_TIMEOUT, DEFAULT_ADDP_TIMEOUT

BASE64_KEY = "$base64"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``tlib`` subcommand on ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tlib",
        help="T-Library client: JSON-line requests on stdin, events on stdout",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect", required=True, metavar="HOST:PORT", help="T-Library port (TCport, SmartProxy)"
    )
    parser.add_argument(
        "--app", default="tlib-cli", help="AttributeApplicationName (default: %(default)s)"
    )
    parser.add_argument(
        "--smart", action="store_true", help="register as a smart client (default: legacy)"
    )
    parser.add_argument(
        "--tls-ca", metavar="CA_PEM",
        help="connect over TLS (a t-controller's tc-tls-port), trusting this CA "
             "(certs/ca.pem of the installation)"
    )
    parser.add_argument(
        "--tls-name", metavar="APP",
        help="the application the server's certificate must name (default: HOST)"
    )
    parser.add_argument(
        "--addp-timeout",
        type=float,
        default=DEFAULT_ADDP_TIMEOUT,
        help="seconds of silence before a keep-alive; 0 disables ADDP (default: %(default)s)",
    )
    parser.add_argument(
        "--addp-remote-timeout",
        type=float,
        default=DEFAULT_ADDP_REMOTE_TIMEOUT,
        help="extra seconds before the server is declared lost (default: %(default)s)",
    )
    parser.add_argument(
        "--answer-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the answers once stdin is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=0.5,
        help="seconds to keep printing events after the last answer (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        help="log level of the diagnostics written to stderr (default: %(default)s)",
    )


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def to_json(value: Any) -> Any:
    """A decoded T-Library value in JSON form (bytes -> ``{"$base64": ...}``)."""
    if isinstance(value, bytes):
        return {BASE64_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def from_json(value: Any) -> Any:
    """The reverse of :func:`to_json`; ValueError for bad base64."""
    if isinstance(value, dict):
        if len(value) == 1 and BASE64_KEY in value:
            encoded = value[BASE64_KEY]
            if not isinstance(encoded, str):
                raise ValueError(f"{BASE64_KEY} must hold a string")
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"bad base64: {exc}") from exc
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def parse_request_line(line: str) -> tuple[str, dict[str, Any]]:
    """One input line -> (message name, attributes); ValueError if not a request map."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a request line is a JSON object")
    name = data.pop("message", None)
    if not isinstance(name, str):
        raise ValueError('a request line needs "message": "Request..."')
    return name, from_json(data)


async def stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, read by a daemon thread so that a blocked read never
    delays the exit on connection loss (and regular files work too)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for raw in sys.stdin.buffer:
                loop.call_soon_threadsafe(queue.put_nowait, raw.decode("utf-8", "replace"))
        finally:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


async def run_session(
    args: argparse.Namespace, lines: AsyncIterator[str], out: TextIO, err: TextIO
) -> int:
    """The whole tool: connect, send each line, print each event, exit status."""

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(to_json(event), ensure_ascii=False) + "\n")
        out.flush()

    try:
        host, port = parse_host_port(args.connect)
    except ValueError as exc:
        err.write(f"tlib: {exc}\n")
        return 2
    tls = None
    if args.tls_ca:
        try:
            tls = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            err.write(f"tlib: --tls-ca {args.tls_ca}: {exc}\n")
            return 2
    try:
        client = await TLibClient.connect(
            host,
            port,
            args.app,
            "smart" if args.smart else "legacy",
            addp_timeout=args.addp_timeout if args.addp_timeout > 0 else None,
            addp_remote_timeout=args.addp_remote_timeout,
            tls=tls,
            server_hostname=args.tls_name,
        )
    except TLibHandshakeError as exc:
        err.write(f"tlib: {exc}\n")
        return 1
    except (OSError, TimeoutError) as exc:
        err.write(f"tlib: cannot connect to {args.connect}: {exc}\n")
        return 1

    emit(client.server_info)
    client.add_listener(emit)
    answers: list[asyncio.Future[dict[str, Any]]] = []
    rejected = 0

    async def send_lines() -> None:
        nonlocal rejected
        number = 0
        async for line in lines:
            number += 1
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                name, attrs = parse_request_line(text)
                answers.append(client.submit(name, attrs))
            except (ValueError, TLibError) as exc:
                rejected += 1
                err.write(f"tlib: line {number}: {exc}\n")
            except TLibConnectionLost:
                return

    async def drain_events() -> None:
        async for _event in client.events():
            pass  # already printed by the listener

    drainer = asyncio.create_task(drain_events())
    closed = asyncio.create_task(client.wait_closed())
    sender = asyncio.create_task(send_lines())
    try:
        await asyncio.wait({sender, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not closed.done() and answers:
            waiting: asyncio.Future[Any] = asyncio.gather(*answers, return_exceptions=True)
            watched: set[asyncio.Future[Any]] = {waiting, closed}
            done, _ = await asyncio.wait(
                watched, timeout=args.answer_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                waiting.cancel()
                err.write(
                    f"tlib: {client.pending} request(s) without an answer after "
                    f"{args.answer_timeout:g} s\n"
                )
                return 1
        if not closed.done():
            await asyncio.wait({closed}, timeout=args.grace)
        if closed.done():
            err.write(f"tlib: connection lost: {client.lost_reason}\n")
            return 1
        return 2 if rejected else 0
    finally:
        for task in (sender, closed, drainer):
            task.cancel()
        await client.close()
        for future in answers:  # retrieve failures so that asyncio does not log them
            if future.done() and not future.cancelled():
                future.exception()


def run(args: argparse.Namespace) -> int:
    """Entry point for ``sipcluster tlib``."""
    # stdout carries the events only: diagnostics go to stderr
    configure_logging(args.log_level, stream=sys.stderr)
    try:
        return asyncio.run(run_session(args, stdin_lines(), sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemons.tools.tlib_cli")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
