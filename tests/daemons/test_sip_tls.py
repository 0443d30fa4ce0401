"""SIP over TLS on loopback (RFC 3261 §18, §26.2; RFC 5630; RFC 3263 §4.1).

A throwaway CA and server certificates come from ``trustme``. The transport
manager, two endpoints and the ``sipcluster sip responder`` / ``sip options`` /
``sip call`` commands are driven over real TLS connections: Via transport TLS,
sips: and ``;transport=tls`` URIs, one connection for a whole call, responses
on the request's connection, certificate verification failures as a local 503
with a warning, and RFC 3263 choosing ``_sips._tcp`` for a sips: URI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from daemons.cli import build_parser
from daemons.runtime.dns import SipResolver
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.sip_transport import Flow, SipTransportManager
from daemons.tools.sip_responder import SipResponder, server_ssl_context
from daemons.tools.sip_uac import client_ssl_context
from protocols.sip.dialog import Dialog
from protocols.sip.headers import Headers
from protocols.sip.location import StaticRecords, Transport
from protocols.sip.message import Request, Response, make_response, parse_message
from protocols.sip.timers import TimerSettings
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
FAST = TimerSettings(t1=0.05, t2=0.2, t4=0.25, trying_delay=None)


@dataclass(frozen=True)
class Pems:
    """PEM files of one test PKI."""

    ca: Path  # the CA that issued ``cert``
    cert: Path  # server certificate for 127.0.0.1, localhost and the domain tls.lab
    key: Path
    combined: Path  # key + chain in one file
    other_ca: Path  # a CA that issued nothing we serve
    other_key: Path  # a key that does not match ``cert``
    wrong_name_cert: Path  # issued by ``ca`` for sip.example.net only
    wrong_name_key: Path


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Pems:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost", "tls.lab")
    other = trustme.CA()
    wrong = ca.issue_cert("sip.example.net")
    stray = other.issue_cert("127.0.0.1")
    files = Pems(*(base / name for name in (
        "ca.pem", "cert.pem", "key.pem", "combined.pem", "other-ca.pem", "other-key.pem",
        "wrong-name.pem", "wrong-name-key.pem")))
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(files.combined))
    other.cert_pem.write_to_path(str(files.other_ca))
    stray.private_key_pem.write_to_path(str(files.other_key))
    wrong.cert_chain_pems[0].write_to_path(str(files.wrong_name_cert))
    wrong.private_key_pem.write_to_path(str(files.wrong_name_key))
    return files


class Tu:
    """Records (method, flow) of every request; answers INVITE with 180 then 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Flow]] = []

    async def __call__(self, incoming: IncomingRequest) -> Response | None:
        self.seen.append((incoming.method, incoming.flow))
        if incoming.method == "INVITE":
            incoming.respond(180)
            contact = incoming.endpoint.contact_uri(incoming.flow.transport)
            return incoming.response(200, headers=[("Contact", f"<{contact}>")])
        if incoming.method == "ACK":
            return None
        return incoming.response(200)


def build(method: str, uri: str, call_id: str) -> Request:
    headers = Headers([
        ("From", "<sips:alice@127.0.0.1>;tag=a1"),
        ("To", f"<{uri}>"),
        ("Call-ID", call_id),
        ("CSeq", f"1 {method}"),
    ])
    return Request(method, uri, headers=headers)


Uas = tuple[SipEndpoint, Tu, int]  # endpoint with a TLS listener, its TU, the TLS port


@pytest.fixture
async def tls_uas(pems: Pems) -> AsyncIterator[Uas]:
    tu = Tu()
    uas = SipEndpoint(tu, timers=FAST, ssl_context=server_ssl_context(str(pems.cert),
                                                                      str(pems.key)))
    port = (await uas.listen("TLS", "127.0.0.1", 0))[1]
    yield uas, tu, port
    await uas.close()


async def make_uac(ctx: ssl.SSLContext, resolver: SipResolver | None = None) -> SipEndpoint:
    uac = SipEndpoint(None, timers=FAST, client_ssl_context=ctx, resolver=resolver)
    await uac.listen("UDP", "127.0.0.1", 0)
    return uac


# --------------------------------------------------------------------------- transport


async def test_tls_listener_needs_a_context() -> None:
    mgr = SipTransportManager(lambda msg, flow: None)
    with pytest.raises(ValueError, match="ssl_context"):
        await mgr.listen("TLS", "127.0.0.1", 0)
    await mgr.close()


async def test_transport_answers_on_the_tls_connection(pems: Pems) -> None:
    """§18.2.2: a response goes back on the request's connection, whatever the Via says."""
    queue: asyncio.Queue[tuple[Request | Response, Flow]] = asyncio.Queue()
    mgr = SipTransportManager(lambda m, f: queue.put_nowait((m, f)),
                              ssl_context=server_ssl_context(str(pems.combined)))
    _, port = await mgr.listen("TLS", "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl_context(str(pems.ca)))
    # a sent-by nobody listens on: only the connection leads back
    writer.write(
        b"OPTIONS sips:svc@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bKtls1;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sips:a@example.com>;tag=1\r\n"
        b"To: <sips:svc@127.0.0.1>\r\nCall-ID: tls1@test\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n")
    await writer.drain()
    msg, flow = await asyncio.wait_for(queue.get(), 5)
    assert isinstance(msg, Request) and msg.ruri.scheme == "sips"
    assert flow.transport == "TLS" and flow.reliable and flow.connection_id is not None
    client_port = writer.get_extra_info("sockname")[1]
    assert flow.remote == ("127.0.0.1", client_port)
    assert msg.top_via.transport == "TLS"
    assert msg.top_via.received == "127.0.0.1" and msg.top_via.rport == client_port

    sent = await mgr.send(make_response(msg, 200, to_tag="t1"), "TLS", flow.remote,
                          connection_id=flow.connection_id)
    assert sent.connection_id == flow.connection_id and mgr.connection_count == 1
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    response = parse_message(head)
    assert isinstance(response, Response) and response.status == 200
    assert response.top_via.branch == "z9hG4bKtls1"

    # RFC 5626 §3.5.1 keep-alive over TLS, then a second message on the same connection
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    again = await mgr.send(make_response(msg, 200, to_tag="t1"), "TLS", flow.remote)
    assert again.connection_id == flow.connection_id and mgr.connection_count == 1
    writer.close()
    await mgr.close()


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("uri", ["sips:svc@127.0.0.1:{port}",
                                 "sip:svc@127.0.0.1:{port};transport=tls"],
                         ids=["sips", "transport-tls"])
async def test_options_over_tls(tls_uas: Uas, pems: Pems, uri: str) -> None:
    _, tu, port = tls_uas
    uac = await make_uac(client_ssl_context(str(pems.ca)))
    target = uri.format(port=port)
    request = build("OPTIONS", target, f"opt-{port}@test")
    response = await uac.request(request)  # located from the URI (RFC 3263 §4.1)
    assert response.status == 200
    assert request.top_via.transport == "TLS"
    assert response.top_via.transport == "TLS" and response.top_via.received == "127.0.0.1"
    [(method, flow)] = tu.seen
    assert method == "OPTIONS" and flow.transport == "TLS"
    await uac.close()


async def test_invite_ack_bye_share_one_tls_connection(tls_uas: Uas, pems: Pems) -> None:
    uas, tu, port = tls_uas
    uac = await make_uac(client_ssl_context(str(pems.ca)))
    uri = f"sips:svc@127.0.0.1:{port}"
    invite = build("INVITE", uri, "call-tls@test")
    provisional: list[int] = []
    response = await uac.request(invite, on_provisional=lambda r: provisional.append(r.status))
    assert provisional == [180] and response.status == 200
    # the UAS's Contact names its TLS listener; the ACK is sent there
    assert response.contacts[0].uri == f"sip:127.0.0.1:{port};transport=tls"
    await uac.send_ack(invite, response)
    dialog = Dialog.create_uac(invite, response, transport="TLS")
    assert dialog.secure  # sips Request-URI over TLS (§12.1.2)
    bye = await uac.request(dialog.create_request("BYE"))
    assert bye.status == 200
    for _ in range(100):  # the ACK handler runs as its own task
        if len(tu.seen) == 3:
            break
        await asyncio.sleep(0.01)
    assert [m for m, _ in tu.seen] == ["INVITE", "ACK", "BYE"]
    assert {f.transport for _, f in tu.seen} == {"TLS"}
    assert len({f.connection_id for _, f in tu.seen}) == 1
    assert uac.transport.connection_count == 1 and uas.transport.connection_count == 1
    await uac.close()


async def test_wrong_ca_gives_503_and_a_warning(tls_uas: Uas, pems: Pems) -> None:
    _, tu, port = tls_uas
    with capture_logs() as logs:
        uac = await make_uac(client_ssl_context(str(pems.other_ca)))
        response = await uac.request(build("OPTIONS", f"sips:svc@127.0.0.1:{port}", "bad-ca"))
        await uac.close()
    assert response.status == 503  # built locally, §8.1.3.1
    assert tu.seen == []
    [warning] = [e for e in logs if e["event"] == "sip_tls_handshake_failed"]
    assert warning["log_level"] == "warning" and warning["peer"] == f"127.0.0.1:{port}"
    assert "certificate" in warning["reason"]
    [failed] = [e for e in logs if e["event"] == "sip_send_failed"]
    assert "CERTIFICATE_VERIFY_FAILED" in failed["error"] and failed["transport"] == "TLS"


async def test_certificate_for_another_name_is_refused(pems: Pems) -> None:
    uas = SipEndpoint(Tu(), timers=FAST, ssl_context=server_ssl_context(
        str(pems.wrong_name_cert), str(pems.wrong_name_key)))
    port = (await uas.listen("TLS", "127.0.0.1", 0))[1]
    with capture_logs() as logs:
        uac = await make_uac(client_ssl_context(str(pems.ca)))
        response = await uac.request(build("OPTIONS", f"sips:svc@127.0.0.1:{port}", "name"))
        await uac.close()
    assert response.status == 503
    [warning] = [e for e in logs if e["event"] == "sip_tls_handshake_failed"]
    assert "mismatch" in warning["reason"].lower()
    # --insecure accepts it (lab use)
    lax = await make_uac(client_ssl_context(insecure=True))
    ok = await lax.request(build("OPTIONS", f"sips:svc@127.0.0.1:{port}", "insecure"))
    assert ok.status == 200
    await lax.close()
    await uas.close()


def test_server_context_refuses_a_key_of_another_certificate(pems: Pems) -> None:
    with pytest.raises(ssl.SSLError):
        server_ssl_context(str(pems.cert), str(pems.other_key))
    parser = build_parser()
    args = parser.parse_args(["sip", "responder", "--listen", "127.0.0.1:0",
                              "--tls-listen", "127.0.0.1:0", "--cert", str(pems.cert),
                              "--key", str(pems.other_key)])
    with pytest.raises(ValueError, match="--cert/--key"):
        SipResponder(args)
    args = parser.parse_args(["sip", "responder", "--tls-listen", "127.0.0.1:0"])
    with pytest.raises(ValueError, match="needs --cert"):
        SipResponder(args)


# --------------------------------------------------------------------------- RFC 3263


def lab_resolver(tls_port: int) -> SipResolver:
    """Static records only; the name server is a closed port, so any query would fail."""
    static = StaticRecords.from_config({
        "tls.lab": {"NAPTR": []},
        "_sip._udp.tls.lab": {"SRV": ["10 0 5999 sip1.tls.lab"]},
        "_sips._tcp.tls.lab": {"SRV": [f"10 0 {tls_port} sip1.tls.lab"]},
        "sip1.tls.lab": {"A": ["127.0.0.1"]},
    })
    return SipResolver(["127.0.0.1:9"], timeout=0.2, static=static)


async def test_sips_uri_is_located_with_sips_tcp_srv() -> None:
    resolver = lab_resolver(5071)
    secure = await resolver.resolve("tls.lab", secure=True)
    assert [(t.transport, t.host_ip, t.port) for t in secure] == [
        (Transport.TLS, "127.0.0.1", 5071)]
    plain = await resolver.resolve("tls.lab", secure=False)
    # a sip: URI prefers UDP and may fall back to TLS; a sips: URI never leaves TLS
    assert [(t.transport, t.port) for t in plain] == [(Transport.UDP, 5999),
                                                      (Transport.TLS, 5071)]
    assert resolver.queries_sent == 0


async def test_sips_request_reaches_the_srv_target_over_tls(tls_uas: Uas, pems: Pems) -> None:
    _, tu, port = tls_uas
    resolver = lab_resolver(port)
    uac = await make_uac(client_ssl_context(str(pems.ca)), resolver)
    assert await uac.resolve("sips:svc@tls.lab") == [
        Destination("TLS", "127.0.0.1", port, server_name="tls.lab")]
    response = await uac.request(build("OPTIONS", "sips:svc@tls.lab", "srv@test"))
    assert response.status == 200 and tu.seen[0][1].transport == "TLS"
    assert resolver.queries_sent == 0
    await uac.close()


async def test_certificate_is_checked_against_the_sip_domain(pems: Pems) -> None:
    """RFC 5922 §4.1, §7.2: the server proves the domain of the URI (sip.example.net),
    found through SRV at 127.0.0.1, not the address; the address alone is refused."""
    uas = SipEndpoint(Tu(), timers=FAST, ssl_context=server_ssl_context(
        str(pems.wrong_name_cert), str(pems.wrong_name_key)))
    port = (await uas.listen("TLS", "127.0.0.1", 0))[1]
    static = StaticRecords.from_config({
        "sip.example.net": {"NAPTR": []},
        "_sips._tcp.sip.example.net": {"SRV": [f"10 0 {port} edge1.example.net"]},
        "edge1.example.net": {"A": ["127.0.0.1"]},
    })
    resolver = SipResolver(["127.0.0.1:9"], timeout=0.2, static=static)
    uac = await make_uac(client_ssl_context(str(pems.ca)), resolver)
    with capture_logs() as logs:
        by_domain = await uac.request(build("OPTIONS", "sips:svc@sip.example.net", "domain"))
        by_address = await uac.request(build("OPTIONS", f"sips:svc@127.0.0.1:{port}", "addr"))
    assert by_domain.status == 200
    assert by_address.status == 503
    [warning] = [e for e in logs if e["event"] == "sip_tls_handshake_failed"]
    assert warning["server_name"] == "127.0.0.1"
    await uac.close()
    await uas.close()


async def test_host_name_destination_is_the_name_checked(pems: Pems) -> None:
    """An explicit next hop given by name (here ``localhost``) is checked against that
    name; the certificate of the suite's server holds it."""
    uas = SipEndpoint(Tu(), timers=FAST, ssl_context=server_ssl_context(
        str(pems.wrong_name_cert), str(pems.wrong_name_key)))
    port = (await uas.listen("TLS", "127.0.0.1", 0))[1]
    uac = await make_uac(client_ssl_context(str(pems.ca)))
    with capture_logs() as logs:
        refused = await uac.request(build("OPTIONS", "sips:svc@sip.example.net", "name"),
                                    Destination("TLS", "localhost", port))
    assert refused.status == 503
    [warning] = [e for e in logs if e["event"] == "sip_tls_handshake_failed"]
    assert warning["server_name"] == "localhost"
    ok = await uac.request(build("OPTIONS", "sips:svc@sip.example.net", "named"),
                           Destination("TLS", "127.0.0.1", port, server_name="sip.example.net"))
    assert ok.status == 200
    await uac.close()
    await uas.close()


# --------------------------------------------------------------------------- the commands


@dataclass
class ResponderProcess:
    proc: subprocess.Popen[str]
    tls_port: int
    log_path: Path

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()
                if line.startswith("{")]


@pytest.fixture
def responder(pems: Pems, tmp_path: Path) -> Iterator[ResponderProcess]:
    """``sipcluster sip responder --tls-listen`` in its own process (uvloop's TLS)."""
    log_path = tmp_path / "responder.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.cli", "sip", "responder", "--listen",
             "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", "--cert", str(pems.cert),
             "--key", str(pems.key), "--log-format", "json"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    tls_port = 0
    while time.monotonic() < deadline and proc.poll() is None:
        text = log_path.read_text()
        if "daemon_ready" in text:
            for line in text.splitlines():
                event = json.loads(line) if line.startswith("{") else {}
                if event.get("event") == "sip_listening" and event.get("transport") == "TLS":
                    tls_port = int(str(event["address"]).rpartition(":")[2])
            break
        time.sleep(0.05)
    if not tls_port:
        proc.kill()
        pytest.fail(f"responder did not start:\n{log_path.read_text()}")
    yield ResponderProcess(proc, tls_port, log_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, log_path.read_text()[-3000:]


def sip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemons.cli", "sip", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "NO_COLOR": "1"})


def test_cli_options_and_call_over_tls(responder: ResponderProcess, pems: Pems) -> None:
    uri = f"sips:1001@127.0.0.1:{responder.tls_port}"
    options = sip("options", uri, "--ca-file", str(pems.ca))
    assert options.returncode == 0 and options.stdout.startswith("200 OK"), options
    call = sip("call", uri, "--ca-file", str(pems.ca), "--duration", "0.2")
    assert call.returncode == 0, call
    assert call.stdout.splitlines() == ["180 Ringing", "200 OK", "BYE: 200 OK"]
    plain = sip("options", f"sip:svc@127.0.0.1:{responder.tls_port}", "--transport", "tls",
                "--ca-file", str(pems.ca))
    assert plain.returncode == 0, plain
    received = [e for e in responder.events() if e.get("event") == "sip_request_received"]
    assert [e["method"] for e in received] == ["OPTIONS", "INVITE", "ACK", "BYE", "OPTIONS"]
    assert {e["transport"] for e in received} == {"TLS"}
    # the whole call came over one connection: one client port
    assert len({e["peer"] for e in received[1:4]}) == 1
    ended = [e for e in responder.events() if e.get("event") == "sip_call_ended"]
    assert [e["outcome"] for e in ended] == ["completed"]


def test_cli_refuses_an_unverified_server(responder: ResponderProcess, pems: Pems) -> None:
    uri = f"sips:svc@127.0.0.1:{responder.tls_port}"
    refused = sip("options", uri, "--ca-file", str(pems.other_ca))
    assert refused.returncode == 1 and refused.stdout.startswith("503 "), refused
    assert "sip_tls_handshake_failed" in refused.stderr
    lab = sip("options", uri, "--insecure")
    assert lab.returncode == 0 and lab.stdout.startswith("200 OK"), lab
    assert "sip_tls_verification_disabled" in lab.stderr
