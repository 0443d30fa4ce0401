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
both find the lines they edit from the lengths of the texts the parser kept of
each line, checked against the bytes, instead of by a case-insensitive
pattern scan of the whole section; both ways give the same bytes.

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

from protocols.sip.headers import COMPACT_FORMS, Headers, header_key, key_count, key_index
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


def _edit_lines(data: bytes, first: int, end: int, headers: Headers,
                edits: list[tuple[int, str | None]]) -> bytes | None:
    """``data`` with some of its header lines edited, found by the text the parser
    kept of each line (``headers``, unfolded) instead of by a pattern search.

    ``edits`` are (index of the line, its new text or None to remove it), in
    the order of the lines; ``first`` is the offset of the CRLF that ends the
    start line, ``end`` that of the CRLFCRLF that ends the section. Each line
    is where the lengths of the lines before it put it; ``None`` unless the
    section is ASCII, every edited line is there as its text, and the lines
    add up to the section (the patterns decide then).
    """
    raws = headers._raws
    if not edits or not data[:end].isascii():
        return None
    out: list[bytes] = []
    pos = first  # the CRLF before line i
    done = 0  # what is in out
    k = 0
    target, new = edits[0]
    for i in range(len(raws)):
        line = raws[i]
        if line is None:
            return None
        after = pos + 2 + len(line)
        if i == target:
            if data[pos + 2:after] != line.encode("utf-8", "surrogateescape"):
                return None
            out.append(data[done:pos])
            if new is not None:
                out.append(b"\r\n" + new.encode("utf-8", "surrogateescape"))
            done = after
            k += 1
            if k < len(edits):
                target, new = edits[k]
            else:
                target = -1
        pos = after
    if pos != end or k != len(edits):
        return None
    out.append(data[done:])
    return b"".join(out)


def _dropped(headers: Headers, drop: Iterable[str]) -> list[int]:
    """The indices of the lines named in ``drop``."""
    keys = [header_key(name) for name in drop]
    if not keys:
        return []
    return [i for i, k in enumerate(headers._keys) if key_index(keys, k) >= 0]


def _splice_lines(data: bytes, first: int, end: int, headers: Headers, max_forwards: str,
                  drop: Iterable[str]) -> tuple[bytes, bool] | None:
    """:func:`splice_request`'s edits of the header lines by :func:`_edit_lines`:
    the lines named in ``drop`` removed, the Max-Forwards value replaced. The
    message and whether it has a Max-Forwards line; ``None`` when that does
    not apply."""
    keys = headers._keys
    found = key_count(keys, "max-forwards")
    if found > 1:
        return None
    edits: list[tuple[int, str | None]] = [(i, None) for i in _dropped(headers, drop)]
    if found:
        i = key_index(keys, "max-forwards")
        line = headers._raws[i]
        if line is None:
            return None
        name, _, value = line.partition(":")
        edits.append((i, name + ":" + value[:len(value) - len(value.lstrip(" \t"))]
                      + max_forwards))
        edits.sort(key=lambda edit: edit[0])
    if not edits:
        return data, False
    edited = _edit_lines(data, first, end, headers, edits)
    return None if edited is None else (edited, found == 1)


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
        spliced_lines = _splice_lines(data, first, end, headers, max_forwards, drop)
        if spliced_lines is not None:
            edited, has_mf = spliced_lines
            lines = [f"{name}: {value}" for name, value in top]
            if not has_mf:
                lines.append(f"Max-Forwards: {max_forwards}")
            spliced = "\r\n".join(lines).encode("utf-8", "surrogateescape")
            return edited[:first] + b"\r\n" + spliced + edited[first:]
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


def _pop_via_line(data: bytes, end: int, headers: Headers,
                  drop: Iterable[str]) -> bytes | None:
    """:func:`pop_top_via`'s edits by :func:`_edit_lines`; ``None`` when that does
    not apply."""
    index = key_index(headers._keys, "via")
    if index < 0:
        return None
    line = headers._raws[index]
    if line is None:
        return None
    name, _, value = line.partition(":")
    rest = value.lstrip(" \t")
    if '"' in rest:
        return None
    comma = rest.find(",")
    # several values on the line: the first goes, the others stay
    kept = None if comma < 0 else \
        name + ":" + value[:len(value) - len(rest)] + rest[comma + 1:].lstrip(" \t")
    edits: list[tuple[int, str | None]] = [(i, None) for i in _dropped(headers, drop)]
    edits.append((index, kept))
    edits.sort(key=lambda edit: edit[0])
    return _edit_lines(data, data.find(b"\r\n"), end, headers, edits)


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
