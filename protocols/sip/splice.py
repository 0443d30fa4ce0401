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

Given the parsed header section the bytes were serialised from (``headers``),
both find the lines they edit by the text the parser kept of each line, with
a plain search, instead of by a case-insensitive pattern scan of the whole
section; both ways give the same bytes.

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

from protocols.sip.headers import COMPACT_FORMS, Headers, header_key
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


def _drop_found_lines(section: bytes, headers: Headers, drop: Iterable[str]) -> bytes | None:
    """``section`` (header lines, each after a CRLF, the last one followed by a
    CRLF too) without the lines named in ``drop``, found by the text the parser
    kept of them (``headers``); ``None`` when one is not there as a whole line."""
    keys = headers._keys
    raws = headers._raws
    for dropped in drop:
        key = header_key(dropped)
        for i, k in enumerate(keys):
            if k == key:
                pos, line_end = _find_line(section, raws[i], len(section) - 2)
                if pos < 0:
                    return None
                section = section[:pos] + section[line_end:]
    return section


def _splice_lines(section: bytes, headers: Headers, max_forwards: str,
                  drop: Iterable[str]) -> tuple[bytes, bool] | None:
    """:func:`splice_request`'s edits of the header lines ``section`` (as for
    :func:`_drop_found_lines`) by the text the parser kept of them: the lines
    named in ``drop`` removed, the Max-Forwards value replaced. The section and
    whether it has a Max-Forwards line; ``None`` when that does not apply (the
    patterns decide then)."""
    keys = headers._keys
    found = keys.count("max-forwards")
    if found > 1:
        return None
    edited = _drop_found_lines(section, headers, drop)
    if edited is None:
        return None
    if found:
        line = headers._raws[keys.index("max-forwards")]
        pos, line_end = _find_line(edited, line, len(edited) - 2)
        if line is None or pos < 0:
            return None
        name, _, value = line.partition(":")
        new = name + ":" + value[:len(value) - len(value.lstrip(" \t"))] + max_forwards
        edited = edited[:pos] + b"\r\n" + new.encode("utf-8", "surrogateescape") + \
            edited[line_end:]
    return edited, found == 1


def splice_request(
    data: bytes, top: Sequence[tuple[str, str]], max_forwards: str, drop: Iterable[str] = (),
    *, unfolded: bool = False, headers: Headers | None = None,
) -> bytes | None:
    """The request ``data`` as a proxy forwards it (§16.6), edited as bytes.

    The lines ``top`` (name, value) go right after the request line, in that
    order; the Max-Forwards value becomes ``max_forwards`` (a line is added
    after ``top`` when there is none); the lines named in ``drop`` go.
    ``None`` when the header section needs the parser. ``unfolded``: the
    caller knows that no line is folded (``Headers.unfolded`` of the message
    ``data`` was serialised from), so the bytes are not searched for one.
    ``headers``: that parsed header section, whose lines the edits then find
    by their text instead of by a pattern search.
    """
    end = data.find(b"\r\n\r\n")
    first = data.find(b"\r\n")
    if end < 0 or first == end:
        return None
    if headers is not None and headers.unfolded:
        spliced_lines = _splice_lines(data[first:end + 2], headers, max_forwards, drop)
        if spliced_lines is not None:
            section, has_mf = spliced_lines
            lines = [f"{name}: {value}" for name, value in top]
            if not has_mf:
                lines.append(f"Max-Forwards: {max_forwards}")
            spliced = "\r\n".join(lines).encode("utf-8", "surrogateescape")
            return data[:first] + b"\r\n" + spliced + section + data[end + 2:]
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


def _find_line(data: bytes, line: str | None, stop: int) -> tuple[int, int]:
    """Where the header line ``line`` is in ``data[:stop]`` (``stop``: the offset of
    the CRLFCRLF that ends the header section): the offset of the CRLF before it
    and the offset after its text; ``(-1, -1)`` when it is not a whole line there."""
    if line is None:
        return -1, -1
    text = b"\r\n" + line.encode("utf-8", "surrogateescape")
    pos = data.find(text + b"\r\n", 0, stop + 2)
    return (pos, pos + len(text)) if pos >= 0 else (-1, -1)


def _pop_via_line(data: bytes, end: int, headers: Headers,
                  drop: Iterable[str]) -> bytes | None:
    """:func:`pop_top_via` with the lines found by the text the parser kept of
    them (``headers``, unfolded), by a plain search instead of the patterns;
    ``None`` when that does not apply (the patterns decide then).

    The first whole line of the text of the first Via line is that line: an
    earlier line of the same text would have the same name, and so be a Via."""
    keys = headers._keys
    raws = headers._raws
    if "via" not in keys:
        return None
    line = raws[keys.index("via")]
    pos, line_end = _find_line(data, line, end)
    if line is None or pos < 0:
        return None
    name, _, value = line.partition(":")
    rest = value.lstrip(" \t")
    if '"' in rest:
        return None
    comma = rest.find(",")
    # the section up to the CRLF that ends its last line
    if comma < 0:
        head = data[:pos] + data[line_end:end + 2]
    else:
        # several values on the line: the first goes, the others stay
        kept = name + ":" + value[:len(value) - len(rest)] + rest[comma + 1:].lstrip(" \t")
        head = data[:pos] + b"\r\n" + kept.encode("utf-8", "surrogateescape") + \
            data[line_end:end + 2]
    edited = _drop_found_lines(head, headers, drop)
    return None if edited is None else edited + data[end + 2:]


def pop_top_via(data: bytes, drop: Iterable[str] = (), *,
                unfolded: bool = False, headers: Headers | None = None) -> bytes | None:
    """The response ``data`` without its first Via value and the lines named in
    ``drop``, edited as bytes (§16.7 step 3). ``None`` when the header section
    needs the parser; ``unfolded`` as for :func:`splice_request`. ``headers``:
    the parsed header section ``data`` was serialised from, whose lines the
    edits then find by their text instead of by a pattern search."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    if headers is not None and headers.unfolded:
        popped = _pop_via_line(data, end, headers, drop)
        if popped is not None:
            return popped
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
