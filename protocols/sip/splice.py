"""A proxy's edits of a forwarded message, made on its wire form (RFC 3261 §16.6, §16.7).

A stateful proxy forwards a request with its Via and Record-Route (or Path)
on top, Max-Forwards decremented and some private headers removed (§16.6
steps 3-8), and passes a response on without its own Via (§16.7 step 3).
Parsing the message, editing the header list and serialising it again costs
more than the edits themselves, so these functions make the same edits on
the received bytes:

* :func:`splice_request` -- new lines right after the request line, the
  Max-Forwards value replaced, named header lines removed;
* :func:`pop_top_via` -- the first Via value removed (the rest of its line
  kept), named header lines removed.

``data`` is a message the parser accepted, or one the serialiser wrote
(every line ends in CRLF); for other bytes the result is unspecified, but
never an exception. Each returns ``None`` when the header section needs the
parser (folded lines, a quoted string in the first Via, several Max-Forwards
lines); the caller then takes the slow path,
:func:`edit_request` / :func:`edit_response`, which makes the same edits on
the parsed message. Both paths give the same message: same start line and
body, and per header name the same values in the same order (the order of
lines of different names is not significant, §7.3.1). The property tests in
``tests/protocols/sip/test_splice.py`` check that against the full parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final

from protocols.sip.headers import COMPACT_FORMS, header_key
from protocols.sip.message import Request, Response

__all__ = ["edit_request", "edit_response", "pop_top_via", "splice_request"]

#: the first Via line, its value up to a quote, a comma or the line's end
_FIRST_VIA: Final = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*([^\r\n\",]*)", re.IGNORECASE)
#: a folded line (§7.3.1)
_FOLDED: Final = re.compile(rb"\r\n[ \t]")
_MAX_FORWARDS: Final = re.compile(rb"\r\nmax-forwards[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_SHORT_FORM: Final = {full: short for short, full in COMPACT_FORMS.items()}


@lru_cache(maxsize=64)
def _line_of(name: str) -> re.Pattern[bytes]:
    """Every line of header ``name`` (its compact form too), with its leading CRLF."""
    key = header_key(name)
    names = [re.escape(key.encode())]
    short = _SHORT_FORM.get(key)
    if short is not None:
        names.append(re.escape(short.encode()))
    return re.compile(rb"\r\n(?:" + b"|".join(names) + rb")[ \t]*:[^\r\n]*", re.IGNORECASE)


def _plain(head: bytes) -> bool:
    """True when no line of ``head`` is folded (§7.3.1). Lines end in CRLF: the
    parser refuses a bare CR or LF, and the serialiser never writes one.

    One pattern search rather than two ``in`` or ``find`` tests: both of those
    parse their arguments the slow way (``bytes.__contains__`` even builds and
    drops a TypeError), which costs more than the scan.
    """
    return _FOLDED.search(head) is None


def _drop_lines(head: bytes, drop: Iterable[str]) -> bytes:
    for name in drop:
        head = _line_of(name).sub(b"", head)
    return head


def splice_request(
    data: bytes, top: Sequence[tuple[str, str]], max_forwards: str, drop: Iterable[str] = (),
    *, unfolded: bool = False,
) -> bytes | None:
    """The request ``data`` as a proxy forwards it (§16.6), edited as bytes.

    The lines ``top`` (name, value) go right after the request line, in that
    order; the Max-Forwards value becomes ``max_forwards`` (a line is added
    after ``top`` when there is none); the lines named in ``drop`` go.
    ``None`` when the header section needs the parser. ``unfolded``: the
    caller knows that no line is folded (``Headers.unfolded`` of the message
    ``data`` was serialised from), so the bytes are not searched for one.
    """
    end = data.find(b"\r\n\r\n")
    first = data.find(b"\r\n")
    if end < 0 or first == end:
        return None
    rest = data[first:end]
    if not unfolded and not _plain(rest):
        return None
    rest = _drop_lines(rest, drop)
    m = _MAX_FORWARDS.search(rest)
    lines = [f"{name}: {value}" for name, value in top]
    if m is None:
        lines.append(f"Max-Forwards: {max_forwards}")
    else:
        if _MAX_FORWARDS.search(rest, m.end()) is not None:
            return None
        rest = rest[:m.start(1)] + max_forwards.encode() + rest[m.end(1):]
    spliced = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    return data[:first] + b"\r\n" + spliced + rest + data[end:]


def pop_top_via(data: bytes, drop: Iterable[str] = (), *,
                unfolded: bool = False) -> bytes | None:
    """The response ``data`` without its first Via value and the lines named in
    ``drop``, edited as bytes (§16.7 step 3). ``None`` when the header section
    needs the parser; ``unfolded`` as for :func:`splice_request`."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    if not unfolded and not _plain(head):
        return None
    m = _FIRST_VIA.search(head)
    if m is None:
        return None
    stop = m.end()
    after = head[stop:stop + 1]
    if after == b'"':
        return None
    if after == b",":
        # several values on the line: the first goes, the others stay
        line_end = head.find(b"\r\n", stop)
        if line_end < 0:
            line_end = len(head)
        others = head[stop + 1:line_end]
        if others.find(b'"') >= 0:
            return None
        head = head[:m.start(1)] + others.lstrip(b" \t") + head[line_end:]
    else:
        head = head[:m.start()] + head[stop:]
    return _drop_lines(head, drop) + data[end:]


def edit_request(
    request: Request, top: Sequence[tuple[str, str]], max_forwards: str, drop: Iterable[str] = ()
) -> None:
    """:func:`splice_request`'s edits made on the parsed ``request`` (the slow path)."""
    h = request.headers
    for name in drop:
        h.remove(name)
    if "Max-Forwards" in h:
        h.set("Max-Forwards", max_forwards)
    else:
        h.prepend("Max-Forwards", max_forwards)
    for name, value in reversed(top):
        h.prepend(name, value)


def edit_response(response: Response, drop: Iterable[str] = ()) -> None:
    """:func:`pop_top_via`'s edits made on the parsed ``response`` (the slow path)."""
    h = response.headers
    h.remove_first("Via")
    for name in drop:
        h.remove(name)
