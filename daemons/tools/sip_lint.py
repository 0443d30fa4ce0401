"""``sipcluster sip lint [FILE|-]``: check one raw SIP message (RFC 3261 §7, §8.1.1).

Reads one message as bytes from FILE (or stdin for ``-``), prints its start
line and its headers with full canonical names (``v:`` -> ``Via:``), one per
line, then runs the checks a SIP element runs before acting on it. Exits 0
when the message is valid, 1 with the reason and the status code a server
would answer on stderr when it is not.

A file with no CR at all (saved by an editor with LF line endings) is read
with every LF turned into CRLF, and the tool says so on stderr.

Also runnable as ``python -m daemons.tools.sip_lint FILE``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, TextIO

from protocols.sip.errors import ParseError
from protocols.sip.headers import canonical_name
from protocols.sip.message import REASON_PHRASES, Request, parse_message, validate


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``lint`` subcommand on ``subparsers`` (the ``sip`` group)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lint",
        help="check one raw SIP message: print it normalised, validate it",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="-", help="message file, or - for stdin")
    parser.add_argument(
        "--rfc2543",
        action="store_true",
        help="accept a request without Max-Forwards (RFC 2543 backward compatibility)",
    )
    parser.add_argument(
        "--max-size", type=int, default=65536, help="message size limit (default: %(default)s)"
    )


def _read(path: str, stdin: BinaryIO) -> bytes:
    if path == "-":
        return stdin.read()
    with open(path, "rb") as fh:
        return fh.read()


def run(
    args: argparse.Namespace,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Lint the message named by ``args.file``; return the exit status."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        data = _read(args.file, sys.stdin.buffer if stdin is None else stdin)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=err)
        return 1
    if b"\n" in data and b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")
        print("note: the input has LF line endings; read as CRLF", file=err)
    try:
        msg = parse_message(data, max_size=args.max_size)
    except ParseError as exc:
        _report(exc, err)
        return 1
    if isinstance(msg, Request):
        print(f"{msg.method} {msg.uri} {msg.version}", file=out)
    else:
        print(f"{msg.version} {msg.status} {msg.reason}".rstrip(), file=out)
    for name, value in msg.headers:
        print(f"{canonical_name(name)}: {value}", file=out)
    if msg.body:
        print(f"({len(msg.body)} octets of body)", file=out)
    try:
        validate(msg, allow_rfc2543=args.rfc2543)
    except ParseError as exc:
        _report(exc, err)
        return 1
    return 0


def _report(exc: ParseError, err: TextIO) -> None:
    phrase = REASON_PHRASES.get(exc.status, "")
    print(f"invalid: {exc.reason}", file=err)
    print(f"a server would answer: {exc.status} {phrase}".rstrip(), file=err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sip-lint", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
