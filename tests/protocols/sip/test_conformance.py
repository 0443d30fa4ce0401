"""RFC 4475 and RFC 5118 torture messages: every file, with the outcome the RFC describes.

The table ``CASES`` names each file, its RFC section, what our parser and
``validate`` do with it, and the answer the RFC expects from an element
(``ANSWER``, used by the daemons' tests). Each case also reads back the fields
the RFC highlights.

Outcomes:
  PARSE            parse_message succeeds and validate() passes
  PARSE_INVALID    parse_message succeeds; validate() raises ParseError(status, reason)
  REJECT           parse_message raises ParseError(status, reason)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from protocols.sip.errors import ParseError, VersionNotSupported
from protocols.sip.headers import CSeq
from protocols.sip.message import Message, Request, Response, parse_message, validate

ROOT = Path(__file__).resolve().parents[2] / "data" / "conformance"

PARSE, PARSE_INVALID, REJECT = "parse", "parse-invalid", "reject"


def load(name: str) -> bytes:
    path = next(ROOT.glob(f"rfc*/{name}.dat"))
    data = path.read_bytes()
    if b"\r" not in data:  # RFC 5118's files are published with LF line ends
        data = data.replace(b"\n", b"\r\n")
    return data


# ----------------------------------------------------------------------------- field checks


def check_wsinv(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert m.ruri.params == {"unknownparam": None}
    assert m.to.uri == "sip:vivekg@chair-dnrc.example.com"
    assert m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.uri == "sip:jdrosen@example.com"
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.cseq == CSeq(9, "INVITE")
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.routes[0].uri == "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    assert m.routes[0].sip_uri.params["unknownwith"] == "value"
    assert len(m.body) == 150
    # Proxies forward unknown headers unchanged: untouched message, same bytes.
    assert m.serialize() == data


def check_intmeth(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.ruri.host == "example.com"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.to.sip_uri.user == m.ruri.user
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    working = "\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"
    assert m.from_.params["fromparam''~+*_!.-%"] == f'"{working}"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.cseq.method == m.method
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def check_esc01(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.ruri.user == "sips%3Auser%40example.com"
    assert m.ruri.user_unescaped == "sips:user@example.com"
    assert m.ruri.host == "example.net"
    assert m.to.sip_uri.user_unescaped == "user"
    assert m.from_.sip_uri.user_unescaped == "I have spaces"
    uri = m.contacts[0].sip_uri
    assert uri.user_unescaped == "caller"
    assert uri.params == {"%6C%72": None, "n%61me": "v%61lue%25%34%31"}
    # "value%41" is NOT "valueA": unescaping is never recursive.
    assert unquote(uri.params["n%61me"] or "") == "value%41"
    assert m.headers.get("Content-Type") == "application/sdp"


def check_escnull(m: Message, data: bytes) -> None:
    assert m.to.sip_uri.user_unescaped == "null-\x00-null"
    users = [c.sip_uri.user_unescaped for c in m.contacts]
    assert users == ["\x00", "\x00\x00"]  # two distinct bindings
    assert m.content_length == 0


def check_esc02(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.method == "RE%47IST%45R"
    assert m.method != "REGISTER"
    assert m.to.display_name == "%Z%45"
    assert [c.uri for c in m.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"


def check_lwsdisp(m: Message, data: bytes) -> None:
    assert m.from_.display_name == "caller"
    assert m.from_.uri == "sip:caller@example.com"
    assert m.from_.tag == "323"


def check_longreq(m: Message, data: bytes) -> None:
    assert m.to.display_name == "I have a user name of " + "extreme" * 10 + " proportion"
    assert m.to.sip_uri.port == 6000
    assert m.from_.tag == "12" + "982" * 50 + "424"
    assert m.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert len(m.vias) == 34
    assert m.vias[-1].received == "192.0.2.5"
    assert m.vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.contacts[0].sip_uri.user == "amazinglylongcallername" * 5
    assert len(m.body) == 150


def check_dblreq(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.method == "REGISTER"
    assert m.body == b""
    out = m.serialize()
    assert b"INVITE" not in out  # the trailing octets are not forwarded (§18.3)
    assert data.startswith(out)


def check_semiuri(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.ruri.user_unescaped == "user;par=u@example.net"
    assert m.ruri.host == "example.com"
    assert m.ruri.params == {}
    assert m.headers.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


def check_transports(m: Message, data: bytes) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def check_mpart01(m: Message, data: bytes) -> None:
    assert len(m.body) == 553
    assert b"\x00" in m.body
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert m.top_via.port == 5070
    assert m.top_via.wants_rport


def check_unreason(m: Message, data: bytes) -> None:
    assert isinstance(m, Response)
    assert m.status == 200
    first_line = data.split(b"\r\n", 1)[0]
    assert m.reason == first_line[len(b"SIP/2.0 200 "):].decode("utf-8")
    assert m.reason.startswith("= 2**3 * 5**2 \u043d\u043e ")


def check_noreason(m: Message, data: bytes) -> None:
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")
    assert m.to.tag == "902jndnke3"


def check_badbranch(m: Message, data: bytes) -> None:
    assert m.top_via.branch == "z9hG4bK"


def check_insuf(m: Message, data: bytes) -> None:
    assert "To" not in m.headers and "From" not in m.headers
    with pytest.raises(ParseError, match="missing Call-ID"):
        _ = m.call_id


def check_unkscm(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.ruri.scheme == "nobodyknowsthisscheme"
    assert m.ruri.opaque == "totallyopaquecontent"
    assert not m.ruri.is_sip


def check_novelsc(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.ruri.scheme == "soap.beep"
    assert m.ruri.opaque == "//192.0.2.103:3002"


def check_unksm2(m: Message, data: bytes) -> None:
    assert m.to.sip_uri.scheme == "isbn"
    assert m.to.sip_uri.opaque == "2983792873"
    assert m.from_.sip_uri.scheme == "http"
    assert m.contacts[0].sip_uri.scheme == "name"


def check_bext01(m: Message, data: bytes) -> None:
    assert m.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.headers.get_all("Proxy-Require") == [
        "noProxiesSupportThis", "norDoAnyProxiesSupportThis",
    ]


def check_invut(m: Message, data: bytes) -> None:
    assert m.headers.get("Content-Type") == "application/unknownformat"
    assert len(m.body) == 40


def check_regaut01(m: Message, data: bytes) -> None:
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert m.content_length == 0


def check_multi01(m: Message, data: bytes) -> None:
    assert m.headers.count("CSeq") == 2
    assert m.headers.get_lines("Call-ID") == [
        "multi01.98asdh@192.0.2.1", "multi01.98asdh@192.0.2.2",
    ]


def check_bcast(m: Message, data: bytes) -> None:
    assert [v.host for v in m.vias] == ["192.0.2.198", "255.255.255.255"]


def check_zeromf(m: Message, data: bytes) -> None:
    assert m.max_forwards == 0


def check_cparam01(m: Message, data: bytes) -> None:
    (contact,) = m.contacts
    assert contact.params == {"unknownparam": None}  # a contact-param, not a url-param
    assert contact.sip_uri.params == {}
    assert contact.sip_uri.user == "+19725552222"


def check_cparam02(m: Message, data: bytes) -> None:
    (contact,) = m.contacts
    assert contact.params == {}
    assert contact.sip_uri.params == {"unknownparam": None}


def check_regescrt(m: Message, data: bytes) -> None:
    (contact,) = m.contacts
    assert contact.sip_uri.headers == {"Route": "%3Csip:sip.example.com%3E"}
    assert str(contact.sip_uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def check_sdp01(m: Message, data: bytes) -> None:
    assert m.headers.get_all("Accept") == ["text/nobodyKnowsThis"]


def check_inv2543(m: Message, data: bytes) -> None:
    assert m.content_length is None
    assert m.body == data.split(b"\r\n\r\n", 1)[1]  # the rest of the datagram
    assert m.body.startswith(b"v=0") and len(m.body) == 105
    assert m.top_via.branch is None
    assert m.from_.tag is None
    assert m.max_forwards is None
    validate(m, allow_rfc2543=True)  # backward-compatible elements accept it
    # re-sent with the Content-Length that stream transports need
    assert b"\r\nContent-Length: 105\r\n" in m.serialize()


def check_scalar02(m: Message, data: bytes) -> None:
    with pytest.raises(ParseError, match="Max-Forwards"):
        _ = m.max_forwards
    with pytest.raises(ParseError, match="Expires"):
        _ = m.expires
    with pytest.raises(ParseError, match="CSeq"):
        _ = m.cseq
    assert m.contacts[0].params["expires"] == "280297596632815"


def check_ipv6_good(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert (m.ruri.host, m.ruri.port) == ("2001:db8::10", None)
    assert str(m.ruri) == "sip:[2001:db8::10]"
    assert m.top_via.host == "2001:db8::9:1"
    assert m.contacts[0].sip_uri.host == "2001:db8::1"


def check_port_ambiguous(m: Message, data: bytes) -> None:
    # RFC 5118 §4.3: the port is inside the brackets, so it is part of the address.
    assert isinstance(m, Request)
    assert (m.ruri.host, m.ruri.port) == ("2001:db8::10:5070", None)


def check_port_unambiguous(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert (m.ruri.host, m.ruri.port) == ("2001:db8::10", 5070)


def check_received_no_delim(m: Message, data: bytes) -> None:
    assert m.top_via.host == "2001:db8::9:1"
    assert m.top_via.received == "2001:db8::9:255"
    assert m.top_via.branch == "z9hG4bKas3"


def check_received_with_delim(m: Message, data: bytes) -> None:
    assert m.top_via.params["received"] == "[2001:db8::9:255]"
    assert m.top_via.received == "2001:db8::9:255"


def check_mult_ip_header(m: Message, data: bytes) -> None:
    assert [(v.transport, v.host, v.port) for v in m.vias] == [
        ("UDP", "2001:db8::9:1", 6050),
        ("UDP", "192.0.2.1", None),
        ("TCP", "2001:db8::9:255", None),
    ]
    assert m.vias[2].received == "192.0.2.200"


def check_mult_ip_sdp(m: Message, data: bytes) -> None:
    assert len(m.body) == 181  # per Content-Length; the datagram carries more
    assert b"c=IN IP4 192.0.2.1" in m.body and b"c=IN IP6 2001:db8::1" in m.body


def check_ipv4_mapped(m: Message, data: bytes) -> None:
    assert [(v.host, v.port) for v in m.vias] == [
        ("::ffff:192.0.2.10", 19823),
        ("::ffff:192.0.2.2", None),
    ]
    assert m.contacts[0].sip_uri.host == "::ffff:192.0.2.2"
    assert b"IN IP6 ::ffff:192.0.2.2" in m.body


def check_two_colons(m: Message, data: bytes) -> None:
    assert isinstance(m, Request)
    assert m.ruri.host == "2001:db8::192.0.2.1"
    assert m.to.sip_uri.host == "2001:db8::192.0.2.1"


def check_three_colons(m: Message, data: bytes) -> None:
    # RFC 5118 §4.10: "an implementation must tolerate both of the above constructs".
    assert isinstance(m, Request)
    assert m.ruri.host == "2001:db8:::192.0.2.1"
    assert str(m.ruri) == "sip:user@[2001:db8:::192.0.2.1]"


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    section: str
    outcome: str
    answer: str  # what the RFC expects an element to do with it
    status: int | None = None  # ParseError.status for REJECT / PARSE_INVALID
    reason: str | None = None  # substring of ParseError.reason
    check: Callable[[Message, bytes], None] | None = None


CASES = [
    # ---- RFC 4475 §3.1.1 valid messages
    Case("wsinv", "4475 3.1.1.1", PARSE, "process normally", check=check_wsinv),
    Case("intmeth", "4475 3.1.1.2", PARSE, "proxy: forward or 404; UAS: 501 with Allow",
         check=check_intmeth),
    Case("esc01", "4475 3.1.1.3", PARSE, "process normally", check=check_esc01),
    Case("escnull", "4475 3.1.1.4", PARSE, "register two distinct contacts", check=check_escnull),
    Case("esc02", "4475 3.1.1.5", PARSE, "proxy: route on R-URI; UAS: 501", check=check_esc02),
    Case("lwsdisp", "4475 3.1.1.6", PARSE, "process normally", check=check_lwsdisp),
    Case("longreq", "4475 3.1.1.7", PARSE, "process normally", check=check_longreq),
    Case("dblreq", "4475 3.1.1.8", PARSE, "handle the REGISTER, ignore the trailing octets",
         check=check_dblreq),
    Case("semiuri", "4475 3.1.1.9", PARSE, "process normally", check=check_semiuri),
    Case("transports", "4475 3.1.1.10", PARSE, "process normally", check=check_transports),
    Case("mpart01", "4475 3.1.1.11", PARSE, "process normally", check=check_mpart01),
    Case("unreason", "4475 3.1.1.12", PARSE, "process normally", check=check_unreason),
    Case("noreason", "4475 3.1.1.13", PARSE, "process normally", check=check_noreason),
    # ---- RFC 4475 §3.1.2 invalid messages
    Case("badinv01", "4475 3.1.2.1", PARSE_INVALID, "400", 400, "empty parameter in Via"),
    Case("clerr", "4475 3.1.2.2", REJECT, "400 (UDP)", 400, "Content-Length larger than body"),
    Case("ncl", "4475 3.1.2.3", REJECT, "400; close the connection on TCP", 400,
         "invalid Content-Length"),
    Case("scalar02", "4475 3.1.2.4", PARSE_INVALID, "400 (CSeq)", 400, "CSeq",
         check=check_scalar02),
    Case("scalarlg", "4475 3.1.2.5", PARSE_INVALID, "discard the response", 400, "CSeq"),
    Case("quotbal", "4475 3.1.2.6", PARSE_INVALID, "400", 400, "unterminated quoted string"),
    Case("ltgtruri", "4475 3.1.2.7", REJECT, "400", 400, "malformed Request-URI"),
    Case("lwsruri", "4475 3.1.2.8", REJECT, "400", 400, "malformed Request-Line"),
    Case("lwsstart", "4475 3.1.2.9", REJECT, "400", 400, "malformed Request-Line"),
    Case("trws", "4475 3.1.2.10", REJECT, "400", 400, "malformed Request-Line"),
    Case("escruri", "4475 3.1.2.11", PARSE_INVALID, "400", 400,
         "escaped headers are not allowed in the Request-URI"),
    Case("baddate", "4475 3.1.2.12", PARSE_INVALID, "400 (when Date matters)", 400,
         "bad Date header"),
    Case("regbadct", "4475 3.1.2.13", PARSE_INVALID, "400", 400, "enclosed in <>"),
    Case("badaspec", "4475 3.1.2.14", PARSE_INVALID, "400", 400, "whitespace inside addr-spec"),
    Case("baddn", "4475 3.1.2.15", PARSE_INVALID, "400", 400, "unquoted display name"),
    Case("badvers", "4475 3.1.2.16", REJECT, "505", 505, "SIP/7.0 not supported"),
    Case("mismatch01", "4475 3.1.2.17", PARSE_INVALID, "400", 400,
         "CSeq method INVITE does not match OPTIONS"),
    Case("mismatch02", "4475 3.1.2.18", PARSE_INVALID, "501 (400 acceptable)", 501,
         "unknown method NEWMETHOD"),
    Case("bigcode", "4475 3.1.2.19", REJECT, "drop the response", 400, "invalid status code"),
    # ---- RFC 4475 §3.2 transaction layer
    Case("badbranch", "4475 3.2.1", PARSE, "400 statelessly, or RFC 2543 matching",
         check=check_badbranch),
    # ---- RFC 4475 §3.3 application layer
    Case("insuf", "4475 3.3.1", PARSE_INVALID, "400", 400, "missing To header",
         check=check_insuf),
    Case("unkscm", "4475 3.3.2", PARSE, "416", check=check_unkscm),
    Case("novelsc", "4475 3.3.3", PARSE, "416 (or 404)", check=check_novelsc),
    Case("unksm2", "4475 3.3.4", PARSE, "proxy: as usual; registrar: 400", check=check_unksm2),
    Case("bext01", "4475 3.3.5", PARSE, "420 with Unsupported", check=check_bext01),
    Case("invut", "4475 3.3.6", PARSE, "proxy: as usual; UAS: 415", check=check_invut),
    Case("regaut01", "4475 3.3.7", PARSE, "proxy: forward unchanged; registrar: 401 or ignore",
         check=check_regaut01),
    Case("multi01", "4475 3.3.8", PARSE_INVALID, "400", 400, "multiple", check=check_multi01),
    # The one §3.3 message parse_message rejects: conflicting Content-Length values
    # make datagram framing impossible; the RFC equates it to an invalid value.
    Case("mcl01", "4475 3.3.9", REJECT, "400; close the connection on TCP", 400,
         "conflicting Content-Length"),
    Case("bcast", "4475 3.3.10", PARSE, "UA: discard; proxy: drop", check=check_bcast),
    Case("zeromf", "4475 3.3.11", PARSE, "proxy: 483; UAS: process", check=check_zeromf),
    Case("cparam01", "4475 3.3.12", PARSE, "200, unknownparam is a contact-param",
         check=check_cparam01),
    Case("cparam02", "4475 3.3.13", PARSE, "200, unknownparam is a url-param",
         check=check_cparam02),
    Case("regescrt", "4475 3.3.14", PARSE, "200, binding keeps the escaped Route",
         check=check_regescrt),
    Case("sdp01", "4475 3.3.15", PARSE, "406 (or 400)", check=check_sdp01),
    # ---- RFC 4475 §3.4 backward compatibility: needs allow_rfc2543 in validate
    Case("inv2543", "4475 3.4.1", PARSE_INVALID, "accept if RFC 2543 compatible", 400,
         "missing Max-Forwards", check=check_inv2543),
    # ---- RFC 5118
    Case("ipv6-good", "5118 4.1", PARSE, "process normally", check=check_ipv6_good),
    Case("ipv6-bad", "5118 4.2", PARSE_INVALID, "400", 400, "bad Request-URI"),
    Case("port-ambiguous", "5118 4.3", PARSE, "process (address 2001:db8::10:5070, no port)",
         check=check_port_ambiguous),
    Case("port-unambiguous", "5118 4.4", PARSE, "process normally",
         check=check_port_unambiguous),
    Case("via-received-param-with-delim", "5118 4.5", PARSE, "accept received with [ ]",
         check=check_received_with_delim),
    Case("via-received-param-no-delim", "5118 4.5", PARSE, "accept received without [ ]",
         check=check_received_no_delim),
    # As published, ipv6-in-sdp's Content-Length (268) exceeds its body (251 octets
    # with CRLF line ends): the §18.3 datagram rule rejects it. See
    # test_ipv6_in_sdp_with_its_body_length for the message itself.
    Case("ipv6-in-sdp", "5118 4.6", REJECT, "process normally (with a correct length)", 400,
         "Content-Length larger than body"),
    Case("mult-ip-in-header", "5118 4.7", PARSE, "process normally",
         check=check_mult_ip_header),
    Case("mult-ip-in-sdp", "5118 4.8", PARSE, "process normally", check=check_mult_ip_sdp),
    Case("ipv4-mapped-ipv6", "5118 4.9", PARSE, "process normally", check=check_ipv4_mapped),
    Case("ipv6-bug-abnf-3-colons", "5118 4.10", PARSE, "tolerate", check=check_three_colons),
    Case("ipv6-correct-abnf-2-colons", "5118 4.10", PARSE, "process normally",
         check=check_two_colons),
]

#: File stem -> the answer the RFC expects from an element (for the daemons' tests).
ANSWER = {case.name: case.answer for case in CASES}


def test_table_covers_every_file() -> None:
    files = sorted(p.stem for p in ROOT.glob("rfc*/*.dat"))
    assert len(files) == 61
    assert sorted(case.name for case in CASES) == files


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torture_message(case: Case) -> None:
    data = load(case.name)
    if case.outcome == REJECT:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.status == case.status
        assert case.reason is not None and case.reason in info.value.reason
        return
    msg = parse_message(data)
    if case.check is not None:
        case.check(msg, data)
    if case.outcome == PARSE:
        validate(msg)
        assert case.check is not None, "a 'parses' case must check some field"
    else:
        with pytest.raises(ParseError) as info:
            validate(msg)
        assert info.value.status == case.status
        assert case.reason is not None and case.reason in info.value.reason


def test_badvers_is_version_not_supported() -> None:
    with pytest.raises(VersionNotSupported):
        parse_message(load("badvers"))


def test_ipv6_in_sdp_with_its_body_length() -> None:
    data = load("ipv6-in-sdp")
    head, body = data.split(b"\r\n\r\n", 1)
    fixed = head.replace(b"Content-Length: 268", b"Content-Length: %d" % len(body))
    msg = parse_message(fixed + b"\r\n\r\n" + body)
    validate(msg)
    assert b"c=IN IP6 2001:db8::20" in msg.body
    assert msg.top_via.host == "2001:db8::20"
    assert msg.contacts[0].sip_uri.host == "2001:db8::20"


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome != REJECT], ids=lambda c: c.name)
def test_parsed_torture_message_round_trips(case: Case) -> None:
    msg = parse_message(load(case.name))
    again = parse_message(msg.serialize())
    assert again == msg
    assert again.serialize() == msg.serialize()
