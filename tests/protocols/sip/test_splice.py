"""The proxy's byte edits (protocols.sip.splice) against the full parser: a spliced
request or a response with its Via popped parses to the same message as the
slow path (parse, edit the header list, serialise) gives."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols.sip.errors import ParseError
from protocols.sip.headers import LIST_HEADERS, split_list
from protocols.sip.message import Message, Request, Response, parse_message
from protocols.sip.splice import (
    _pop_via_line,
    _splice_lines,
    edit_request,
    edit_response,
    pop_top_via,
    splice_request,
)

PROXY_VIA = "SIP/2.0/UDP 127.0.150.1:5060;branch=z9hG4bKsc1.a1;rport"


def same_message(a: Message, b: Message) -> None:
    """Same start line and body, and per header name the same values in order
    (§7.3.1: the order of different names is not significant; a list header's
    values count one by one, however they are spread over lines)."""
    assert type(a) is type(b)
    assert a._start_line() == b._start_line()
    assert a.body == b.body

    def values(m: Message) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        h = m.headers
        for key, value in zip(h._keys, h._values, strict=True):
            if key == "content-length":
                continue
            items = split_list(value) if key in LIST_HEADERS else [value]
            out.setdefault(key, []).extend(i.strip(" \t") for i in items)
        return out

    assert values(a) == values(b)


def parse(data: bytes) -> Message:
    return parse_message(data)


# ---------------------------------------------------------------- generators

_ws = st.sampled_from(["", " ", "  ", "\t"])
_case = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])


@st.composite
def _via(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(["127.0.150.2", "phone.example.com", "[2001:db8::1]"]))
    port = draw(st.sampled_from(["", ":5060", ":5090"]))
    branch = draw(st.from_regex(r"z9hG4bK[a-zA-Z0-9.\-]{1,12}", fullmatch=True))
    extra = draw(st.sampled_from(["", ";rport", ";rport=5090;received=127.0.150.9", ";lr"]))
    tp = draw(st.sampled_from(["UDP", "TCP", "udp"]))
    return f"SIP/2.0/{tp} {host}{port};branch={branch}{extra}"


@st.composite
def _header(draw: st.DrawFn, name: str, value: str, short: str | None = None) -> str:
    written = draw(_case)(name)
    if short is not None and draw(st.booleans()):
        written = short
    return f"{written}{draw(st.sampled_from(['', ' ']))}:{draw(_ws)}{value}"


@st.composite
def _vias(draw: st.DrawFn) -> list[str]:
    values = draw(st.lists(_via(), min_size=1, max_size=4))
    lines: list[str] = []
    while values:
        take = draw(st.integers(1, len(values)))
        chunk, values = values[:take], values[take:]
        sep = draw(st.sampled_from([",", ", ", " , "]))
        lines.append(draw(_header("Via", sep.join(chunk), "v")))
    return lines


_OTHERS = [
    ("From", "<sip:1001@cluster.lab>;tag=f1", "f"),
    ("To", "<sip:1002@cluster.lab>", "t"),
    ("Call-ID", "c1@127.0.150.2", "i"),
    ("Contact", "<sip:1001@127.0.150.2:5090>;expires=600", "m"),
    ("Route", "<sip:127.0.150.3;lr>, <sip:127.0.150.4;lr>", None),
    ("Record-Route", "<sip:127.0.150.5;lr>", None),
    ("Path", "<sip:127.0.150.6;lr>", None),
    ("X-SC-Node", "SIPS_1", None),
    ("User-Agent", "SIPp/3.6", None),
    ("Subject", "a \"quoted, text\" here", "s"),
    ("Expires", "600", None),
]


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request's bytes and whether splicing must succeed on it."""
    method = draw(st.sampled_from(["REGISTER", "OPTIONS", "SUBSCRIBE", "MESSAGE", "BYE"]))
    lines = [f"{method} sip:1002@cluster.lab SIP/2.0", *draw(_vias())]
    mf_count = draw(st.sampled_from([0, 1, 1, 1, 2]))
    for _ in range(mf_count):
        lines.append(draw(_header("Max-Forwards", str(draw(st.integers(0, 70))))))
    for name, value, short in draw(st.lists(st.sampled_from(_OTHERS), max_size=8)):
        lines.append(draw(_header(name, value, short)))
    lines.append(f"CSeq: 7 {method}")
    body = draw(st.sampled_from([b"", b"hello\r\n\r\nworld"]))
    lines = draw(st.permutations(lines[1:])).copy()
    lines.insert(0, f"{method} sip:1002@cluster.lab SIP/2.0")
    folded = draw(st.booleans()) and len(lines) > 2
    text = "\r\n".join(lines)
    if folded:
        text = text.replace(";tag=f1", "\r\n ;tag=f1")
        text = text.replace("<sip:127.0.150.4", "\r\n\t<sip:127.0.150.4")
        folded = "\r\n " in text or "\r\n\t" in text
    data = (text + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    return data, not folded and mf_count < 2


_top = st.lists(st.sampled_from([
    ("Record-Route", "<sip:127.0.150.1:5060;lr;sc-node=SIPS_1>"),
    ("Record-Route", "<sip:127.0.150.1:5060;transport=tcp;lr>"),
    ("Path", "<sip:127.0.150.1:5060;lr;ft=udp-127.0.150.2-5090>"),
    ("X-SC-Node", "SIPS_2"),
]), max_size=3)
_drop = st.lists(st.sampled_from(["X-SC-Node", "Path", "Subject", "User-Agent"]), max_size=2,
                 unique=True)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), _top, st.integers(0, 69), _drop)
def test_spliced_request_parses_like_the_edited_one(
    generated: tuple[bytes, bool], top: list[tuple[str, str]], mf: int, drop: list[str]
) -> None:
    data, plain = generated
    try:
        original = parse(data)
    except ParseError:
        assume(False)
        return
    assert isinstance(original, Request)
    lines = [("Via", PROXY_VIA), *top]
    out = splice_request(original.serialize(), lines, str(mf), drop)
    if plain:
        assert out is not None
    # the parser knows whether a line is folded; told so, splicing gives the same
    head = data.split(b"\r\n\r\n", 1)[0]
    assert original.headers.unfolded is not (b"\r\n " in head or b"\r\n\t" in head)
    assert splice_request(original.serialize(), lines, str(mf), drop,
                          unfolded=original.headers.unfolded) == out
    # the lines found by the text the parser kept: the same bytes
    assert splice_request(original.serialize(), lines, str(mf), drop,
                          headers=original.headers) == out
    slow = parse(data)
    assert isinstance(slow, Request)
    edit_request(slow, lines, str(mf), drop)
    if out is None:
        return
    spliced = parse(out)
    same_message(spliced, slow)
    # and what the slow path puts on the wire parses to the same again
    same_message(parse(slow.serialize()), spliced)
    assert isinstance(spliced, Request)
    assert spliced.top_via.branch == "z9hG4bKsc1.a1" and spliced.max_forwards == mf


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool]:
    status = draw(st.sampled_from(["100 Trying", "180 Ringing", "200 OK", "503 Busy"]))
    vias = draw(_vias())
    others = [draw(_header(n, v, s)) for n, v, s in draw(st.lists(st.sampled_from(_OTHERS),
                                                                   max_size=8))]
    lines = [*vias, *others, "CSeq: 7 REGISTER"]
    lines = draw(st.permutations(lines)).copy()
    # the first Via value is the proxy's own; a quoted string in it needs the parser
    quoted = draw(st.booleans())
    first_via = next(i for i, line in enumerate(lines) if line.split(":")[0].strip().lower()
                     in ("via", "v"))
    if quoted:
        name, _, value = lines[first_via].partition(":")
        value = value.replace(";branch=", ';x="a,b";branch=', 1)
        lines[first_via] = f"{name}:{value}"
    body = draw(st.sampled_from([b"", b"v=0\r\n"]))
    data = ("\r\n".join([f"SIP/2.0 {status}", *lines, f"Content-Length: {len(body)}"])
            + "\r\n\r\n").encode() + body
    return data, not quoted


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), _drop)
def test_response_with_via_popped_parses_like_the_edited_one(
    generated: tuple[bytes, bool], drop: list[str]
) -> None:
    data, plain = generated
    try:
        original = parse(data)
    except ParseError:
        assume(False)
        return
    assert isinstance(original, Response)
    out = pop_top_via(original.serialize(), drop)
    if plain:
        assert out is not None
    assert original.headers.unfolded
    assert pop_top_via(original.serialize(), drop, unfolded=True) == out
    # the lines found by the text the parser kept: the same bytes
    assert pop_top_via(original.serialize(), drop, headers=original.headers) == out
    slow = parse(data)
    assert isinstance(slow, Response)
    edit_response(slow, drop)
    if out is None:
        return
    popped = parse(out)
    same_message(popped, slow)
    assert [v.branch for v in popped.vias] == [v.branch for v in original.vias[1:]]
    for name in drop:
        assert name not in popped.headers


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 69))
def test_hostile_bytes_give_bytes_or_none(data: bytes, mf: int) -> None:
    """Whatever comes in, the edits return bytes or None and never raise; when the
    input parses and the edit succeeds, the result still matches the slow path."""
    spliced = splice_request(data, [("Via", PROXY_VIA)], str(mf), ["X-SC-Node"])
    popped = pop_top_via(data, ["Path"])
    try:
        msg = parse(data)
    except ParseError:
        return
    if isinstance(msg, Request) and spliced is not None:
        slow = parse(data)
        assert isinstance(slow, Request)
        edit_request(slow, [("Via", PROXY_VIA)], str(mf), ["X-SC-Node"])
        same_message(parse(spliced), slow)
    if isinstance(msg, Response) and popped is not None:
        slow_r = parse(data)
        assert isinstance(slow_r, Response)
        edit_response(slow_r, ["Path"])
        same_message(parse(popped), slow_r)


def test_examples() -> None:
    data = (b"REGISTER sip:cluster.lab SIP/2.0\r\n"
            b"v: SIP/2.0/UDP 127.0.150.2:5090;branch=z9hG4bKa\r\n"
            b"max-forwards:70\r\nX-SC-Node: evil\r\nTo: <sip:1@cluster.lab>\r\n"
            b"From: <sip:1@cluster.lab>;tag=1\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n"
            b"Content-Length: 0\r\n\r\n")
    out = splice_request(data, [("Via", PROXY_VIA), ("Path", "<sip:p;lr>")], "69", ["X-SC-Node"])
    assert out is not None
    assert out.startswith(b"REGISTER sip:cluster.lab SIP/2.0\r\nVia: " + PROXY_VIA.encode()
                          + b"\r\nPath: <sip:p;lr>\r\nv: SIP/2.0/UDP")
    assert b"max-forwards:69\r\n" in out and b"X-SC-Node" not in out
    parsed = parse(data)
    assert _splice_lines(data, data.find(b"\r\n"), data.find(b"\r\n\r\n"),
                         parsed.headers, "69", ["X-SC-Node"]) is not None
    assert splice_request(data, [("Via", PROXY_VIA), ("Path", "<sip:p;lr>")], "69",
                          ["X-SC-Node"], headers=parsed.headers) == out
    # folded lines and two Max-Forwards need the parser
    assert splice_request(data.replace(b"tag=1", b"\r\n tag=1"), [], "69") is None
    assert splice_request(data.replace(b"To:", b"Max-Forwards: 3\r\nTo:"), [], "69") is None
    resp = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"
            b"\r\nPath: <sip:p;lr>\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    assert pop_top_via(resp, ["Path"]) == (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nCSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert pop_top_via(b"SIP/2.0 200 OK\nVia: a\n\n") is None  # no CRLFCRLF: not a message
    # a quoted string anywhere in the first Via line needs the parser; a folded
    # line anywhere in the response too
    assert pop_top_via(resp.replace(b"z9hG4bK1", b'z9hG4bK1;x="a,b"')) is None
    assert pop_top_via(resp.replace(b"z9hG4bK2", b'z9hG4bK2;x="q"')) is None
    assert pop_top_via(resp.replace(b"\r\nCSeq", b"\r\n\tx\r\nCSeq")) is None
    single = resp.replace(b", SIP/2.0/UDP b;branch=z9hG4bK2", b"")
    assert pop_top_via(single) == (
        b"SIP/2.0 200 OK\r\nPath: <sip:p;lr>\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    # with the parsed lines at hand, they are found from the lengths of their
    # texts (no pattern search), the last line and a compact Via name included
    for message, drop in ((resp, ["Path"]), (single, ["Path"]), (single, ["Content-Length"]),
                          (single.replace(b"\r\nVia:", b"\r\nv :"), ["Path"])):
        parsed = parse(message)
        expected = pop_top_via(message, drop)
        assert expected is not None
        assert _pop_via_line(message, message.find(b"\r\n\r\n"), parsed.headers,
                             drop) == expected
        assert pop_top_via(message, drop, headers=parsed.headers) == expected
