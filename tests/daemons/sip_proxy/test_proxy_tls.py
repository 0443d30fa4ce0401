"""SIP over TLS on the sip-proxy's ``sip-tls-port`` (RFC 3261 §26.2, RFC 5630,
RFC 5922), with a real ``sipcluster sip-proxy`` process in front of a node
(``sipcluster sip responder`` in the test's loop).

Certificates come from ``sipcluster certs`` (the proxy's with the SIP domain
and its address as subject alternative names, as the lab issues them). Phones
are our SIP endpoint and baresip 1.0 (libre, OpenSSL): they register over
TLS, are called over their TLS flow and call out through it; Via and
Record-Route name the TLS listener. Refused handshakes (plaintext, a client
that trusts another CA, a client certificate of another CA) are logged and
counted while the listener keeps serving; unusable certificate files refuse
the config at load in one line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster.config import load_cluster
from daemons.runtime.certs import init_ca, issue
from daemons.runtime.config import ConfigError
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_proxy.service import SipProxy
from daemons.tools.sip_responder import SipResponder
from protocols.sip.dialog import Dialog
from protocols.sip.digest import DigestClient
from protocols.sip.message import Request, Response
from tests.daemons.sip_proxy.conftest import (  # type: ignore[import-not-found]
    DOMAIN,
    PASSWORDS,
    pair_port,
    proxy_args,
    responder_args,
)
from tests.interop.lab.conftest import Baresip, baresip_config, write_tone
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
PROXY_HOST = "127.0.200.21"
NODE_HOST = "127.0.200.11"
PHONE_HOST = "127.0.200.31"

pytestmark = pytest.mark.timeout(60)


# =========================================================================== the cluster


class Node(SipResponder):
    """The responder as a cluster node that copies Record-Route into its 2xx to an
    INVITE (§12.1.1, as a node's UAS does), and keeps the INVITEs it got."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.invites: list[tuple[Request, str]] = []

    async def invite(self, incoming: IncomingRequest, log: Any) -> Response | None:
        self.invites.append((incoming.request, incoming.flow.transport))
        response = await super().invite(incoming, log)
        if response is not None and response.status == 200:
            for value in incoming.request.headers.get_lines("Record-Route"):
                response.headers.add("Record-Route", value)
        return response


def cluster_text(proxy_port: int, tls_port: int, http_port: int, repl_port: int,
                 node_port: int, sipproxy: str = "") -> str:
    return f"""\
[switch]
name = "SIP_Cluster"
domain = "{DOMAIN}"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]

[dns.1001]
type = "Extension"
contact = "*"
password = "{PASSWORDS['1001']}"

[dns.1002]
type = "Extension"
contact = "*"
password = "{PASSWORDS['1002']}"

[applications.SIPS_1]
kind = "sip-server"
host = "{NODE_HOST}"
geo-location = "dc1"
sip-port = {node_port}
default-port = 0

[applications.TC_SIPS_1]
kind = "t-controller"
host = "{NODE_HOST}"
sip-server = "SIPS_1"
tc-port = 0

[applications.SPX_1]
kind = "sip-proxy"
host = "{PROXY_HOST}"
geo-location = "dc1"
sip-port = {proxy_port}
sip-tls-port = {tls_port}
replication-port = {repl_port}
http-port = {http_port}

[applications.SPX_1.sipproxy]
oos-check = 1
oos-force = 1
{sipproxy}"""


def issue_proxy_certificate(certs: Path) -> None:
    """The lab's way: the CA, then SPX_1's certificate for the domain and its address."""
    init_ca(certs)
    issue(certs, "SPX_1", dns_names=[DOMAIN], ip_addresses=[PROXY_HOST])


@dataclass
class TlsCluster:
    tmp: Path
    ca: Path
    port: int
    tls_port: int
    http_port: int
    node: Node
    proc: asyncio.subprocess.Process
    endpoints: list[SipEndpoint] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.tmp / "proxy.log"

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    async def get(self, path: str) -> str:
        def fetch() -> str:
            url = f"http://{PROXY_HOST}:{self.http_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        return await asyncio.to_thread(fetch)

    def tls(self, server_name: str = PROXY_HOST) -> Destination:
        return Destination("TLS", PROXY_HOST, self.tls_port, server_name)

    async def endpoint(self, host: str, handler: Any = None, *,
                       trust: Path | None = None) -> SipEndpoint:
        context = ssl.create_default_context(cafile=str(trust or self.ca))
        ep = SipEndpoint(handler, client_ssl_context=context)
        await ep.listen("UDP", host, 0)
        self.endpoints.append(ep)
        return ep


@pytest.fixture
async def tls_cluster(tmp_path: Path) -> AsyncIterator[TlsCluster]:
    certs = tmp_path / "certs"
    issue_proxy_certificate(certs)
    node_port = pair_port(NODE_HOST)
    args = responder_args("SIPS_1", NODE_HOST, node_port)
    args.auth_algorithms = "MD5"  # baresip 1.0 gives up on a SHA-256 challenge
    node = Node(args)
    await node.start()
    port, tls_port = pair_port(PROXY_HOST), pair_port(PROXY_HOST)
    http_port, repl_port = pair_port(PROXY_HOST), pair_port(PROXY_HOST)
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_text(port, tls_port, http_port, repl_port, node_port))
    log = (tmp_path / "proxy.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemons.cli", "sip-proxy", "--config", str(path),
        "--name", "SPX_1", "--log-format", "json", "--oos-check", "0.3", cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    cluster = TlsCluster(tmp_path, certs / "ca.pem", port, tls_port, http_port, node, proc)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                assert proc.returncode is None, cluster.log_path.read_text()
                # daemon_ready: logged once the management listener is up too
                if '"daemon_ready"' in cluster.log_path.read_text():
                    nodes = json.loads(await cluster.get("/status/nodes"))["nodes"]
                    if nodes["SIPS_1"]["usable"]:
                        break
                await asyncio.sleep(0.1)
        yield cluster
    finally:
        for ep in cluster.endpoints:
            await ep.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        await node.stop()


# =========================================================================== our phone


class Phone:
    """Answers INVITE (200 with a Contact over TLS) and BYE; keeps what it got and how."""

    def __init__(self) -> None:
        self.got: list[tuple[Request, str]] = []

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        self.got.append((incoming.request, incoming.flow.transport))
        if incoming.method == "INVITE":
            local = incoming.flow.local
            # §12.1.1: the UAS copies Record-Route into its 2xx
            rr = [("Record-Route", v) for v in incoming.request.headers.get_lines("Record-Route")]
            return incoming.response(200, headers=[
                *rr, ("Contact", f"<sip:1001@{local[0]}:{local[1]};transport=tls>")])
        if incoming.method == "ACK":
            return None
        return incoming.response(200)


def tls_register(phone: SipEndpoint, user: str, cseq: int = 1,
                 call_id: str = "tls-reg@test") -> Request:
    local = phone.local_address("UDP")
    assert local is not None
    req = Request("REGISTER", f"sip:{DOMAIN}")
    h = req.headers
    h.add("From", f"<sip:{user}@{DOMAIN}>;tag=r{user}")
    h.add("To", f"<sip:{user}@{DOMAIN}>")
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} REGISTER")
    h.add("Contact", f"<sip:{user}@{local[0]}:{local[1]};transport=tls>")
    h.add("Expires", "300")
    return req


async def register_tls(phone: SipEndpoint, dest: Destination, user: str) -> Response:
    first = await phone.request(tls_register(phone, user), dest)
    if first.status != 401:
        return first
    again = tls_register(phone, user, cseq=2)
    client = DigestClient(user, password=PASSWORDS[user])
    again.headers.add("Authorization", client.authorize(
        first.headers.get_all("WWW-Authenticate"), method="REGISTER", uri=again.uri))
    return await phone.request(again, dest)


def invite(uri: str, ep: SipEndpoint, call_id: str, user: str = "5000",
           transport: str = "UDP") -> Request:
    local = ep.local_address("UDP")
    assert local is not None
    tp = "" if transport == "UDP" else f";transport={transport.lower()}"
    req = Request("INVITE", uri)
    h = req.headers
    h.add("From", f"<sip:{user}@{DOMAIN}>;tag=c-{call_id}")
    h.add("To", f"<{uri}>")
    h.add("Call-ID", call_id)
    h.add("CSeq", "1 INVITE")
    h.add("Contact", f"<sip:{user}@{local[0]}:{local[1]}{tp}>")
    h.add("Content-Type", "application/sdp")
    req.body = (b"v=0\r\no=- 1 1 IN IP4 127.0.200.31\r\ns=-\r\nc=IN IP4 127.0.200.31\r\n"
                b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    return req


async def until(check: Any, what: str, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        await asyncio.sleep(0.05)


# =========================================================================== tests


async def test_phone_registers_is_called_and_calls_over_tls(tls_cluster: TlsCluster) -> None:
    c = tls_cluster
    phone = Phone()
    ep = await c.endpoint(PHONE_HOST, phone.handle)
    # the certificate names the SIP domain: a phone that dialled the domain checks it
    assert (await register_tls(ep, c.tls(DOMAIN), "1001")).status == 200
    regs = json.loads(await c.get("/status/registrations"))
    (binding,) = [b for b in regs["bindings"] if b["aor"] == f"1001@{DOMAIN}"]
    assert binding["transport"] == "TLS", binding

    # the node calls 1001: the INVITE reaches the phone on its TLS flow
    node_side = SipEndpoint()
    await node_side.listen("UDP", NODE_HOST, 0)
    c.endpoints.append(node_side)
    call_in = invite(f"sip:1001@{DOMAIN}", node_side, "tls-in@test")
    final = await node_side.request(call_in, Destination("UDP", PROXY_HOST, c.port))
    assert final.status == 200
    (got, transport) = phone.got[0]
    assert got.method == "INVITE" and transport == "TLS"
    assert got.top_via.transport == "TLS" and got.top_via.port == c.tls_port
    rr = got.headers.get_all("Record-Route")
    # two entries (RFC 5658): the phone's route set starts at the TLS listener,
    # the node's side is UDP; the flow token names the phone's TLS connection
    assert rr[0].startswith(f"<sip:{PROXY_HOST}:{c.tls_port};transport=tls;lr"), rr
    assert rr[1].startswith(f"<sip:{PROXY_HOST}:{c.port};lr"), rr
    assert "ft=tls-" in rr[0]
    # the dialog's ACK and BYE follow the route set back over TLS
    await node_side.send_ack(call_in, final)
    bye = Dialog.create_uac(call_in, final).create_request("BYE")
    assert (await node_side.request(bye)).status == 200
    await until(lambda: [r.method for r, _ in phone.got] == ["INVITE", "ACK", "BYE"],
                "ACK and BYE at the phone")
    assert {t for _, t in phone.got} == {"TLS"}

    # the phone calls out over TLS: the node answers, the 2xx comes back on TLS
    call_out = invite(f"sip:1002@{DOMAIN}", ep, "tls-out@test", user="1001",
                      transport="TLS")
    answer = await ep.request(call_out, c.tls())
    assert answer.status == 200
    (at_node, transport) = c.node.invites[-1]
    assert at_node.call_id == "tls-out@test" and transport == "UDP"
    rr = at_node.headers.get_all("Record-Route")
    assert rr[0].startswith(f"<sip:{PROXY_HOST}:{c.port};lr;sc-node=SIPS_1"), rr
    assert rr[1].startswith(f"<sip:{PROXY_HOST}:{c.tls_port};transport=tls;lr"), rr
    await ep.send_ack(call_out, answer)
    bye = Dialog.create_uac(call_out, answer, transport="TLS").create_request("BYE")
    assert (await ep.request(bye)).status == 200
    # a SIPS Request-URI: the Record-Route on the phone's side is a SIPS URI (§16.6 4)
    call_sips = invite(f"sips:1002@{DOMAIN}", ep, "tls-sips@test", user="1001",
                       transport="TLS")
    answer = await ep.request(call_sips, c.tls())
    assert answer.status == 200
    (at_node, _) = c.node.invites[-1]
    rr = at_node.headers.get_all("Record-Route")
    assert rr[0].startswith(f"<sip:{PROXY_HOST}:{c.port};lr;sc-node=SIPS_1"), rr
    assert rr[1].startswith(f"<sips:{PROXY_HOST}:{c.tls_port};lr"), rr
    await ep.send_ack(call_sips, answer)
    bye = Dialog.create_uac(call_sips, answer, transport="TLS").create_request("BYE")
    assert (await ep.request(bye)).status == 200
    metrics = await c.get("/metrics")
    assert 'sipcluster_sip_messages_received_total{kind="request",transport="TLS"}' in metrics


async def test_refused_handshakes_are_logged_and_counted(tls_cluster: TlsCluster,
                                                         tmp_path: Path) -> None:
    c = tls_cluster
    # plaintext SIP on the TLS port
    reader, writer = await asyncio.open_connection(PROXY_HOST, c.tls_port)
    writer.write(b"OPTIONS sip:" + DOMAIN.encode() + b" SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on us
    writer.close()
    # a phone that trusts another CA refuses the proxy
    other = tmp_path / "other"
    init_ca(other)
    fooled = await c.endpoint("127.0.200.32", trust=other / "ca.pem")
    assert (await register_tls(fooled, c.tls(), "1001")).status == 503
    # a client certificate of another CA is refused by the proxy
    issue(other, "intruder")
    context = ssl.create_default_context(cafile=str(c.ca))
    context.load_cert_chain(other / "intruder.pem", other / "intruder.key")
    try:  # TLS 1.3: the client's side completes; the proxy's alert ends the connection
        reader, writer = await asyncio.open_connection(
            PROXY_HOST, c.tls_port, ssl=context, server_hostname=PROXY_HOST)
        writer.write(tls_register(fooled, "1001").serialize())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    except (ssl.SSLError, ConnectionError):
        data = b""
    assert data == b""
    await until(lambda: len(c.events("sip_tls_handshake_refused")) >= 3,
                "three sip_tls_handshake_refused lines")
    reasons = sorted(e["reason"] for e in c.events("sip_tls_handshake_refused"))
    # the phone that trusts another CA closes without a word (Python sends no alert)
    assert reasons == ["certificate_verify_failed", "eof", "not_tls"], reasons
    metrics = await c.get("/metrics")
    for reason in reasons:
        assert f'sipcluster_sip_tls_refused_total{{reason="{reason}"}} 1.0' in metrics
    # the listener keeps serving
    phone = await c.endpoint("127.0.200.33")
    assert (await register_tls(phone, c.tls(), "1002")).status == 200


async def test_baresip_over_tls_through_the_proxy(tls_cluster: TlsCluster, tmp_path: Path,
                                                  require_tool: Any, free_port: Any) -> None:
    c = tls_cluster
    binary = require_tool("baresip")
    workdir = tmp_path / "baresip"
    workdir.mkdir()
    phone = Baresip(name="1002", workdir=workdir, address="127.0.200.41",
                    sip_port=free_port("127.0.200.41"), ctrl_port=free_port("127.0.200.41"),
                    aor=f"sip:1002@{DOMAIN}")
    tone = write_tone(workdir / "tone.wav", 440.0, seconds=10.0)
    baresip_config(phone, dns=("127.0.200.53", 53), tone=tone)
    with (workdir / "config").open("a") as config:
        config.write(f"sip_cafile\t\t{c.ca}\n")
    (workdir / "accounts").write_text(
        f"<sip:1002@{DOMAIN};transport=tls>;auth_pass={PASSWORDS['1002']};"
        f"outbound=\"sip:{PROXY_HOST}:{c.tls_port};transport=tls\";regint=60;"
        "answermode=auto;audio_codecs=PCMU\n")
    # baresip is driven from threads: the node answers in this test's event loop
    await asyncio.to_thread(phone.start, binary)
    try:
        await asyncio.to_thread(phone.wait_registered)
        regs = json.loads(await c.get("/status/registrations"))
        (binding,) = [b for b in regs["bindings"] if b["aor"] == f"1002@{DOMAIN}"]
        assert binding["transport"] == "TLS", binding
        # the node calls baresip: over its TLS flow, auto-answered
        node_side = SipEndpoint()
        await node_side.listen("UDP", NODE_HOST, 0)
        c.endpoints.append(node_side)
        mark = phone.mark()
        call_in = invite(f"sip:1002@{DOMAIN}", node_side, "baresip-in@test")
        final = await node_side.request(call_in, Destination("UDP", PROXY_HOST, c.port))
        assert final.status == 200, final
        await node_side.send_ack(call_in, final)
        await asyncio.to_thread(phone.wait_event, "CALL_ESTABLISHED", after=mark)
        bye = Dialog.create_uac(call_in, final).create_request("BYE")
        assert (await node_side.request(bye)).status == 200
        await asyncio.to_thread(phone.wait_event, "CALL_CLOSED", after=mark)
        # baresip calls out through the proxy to the node, which answers
        mark = phone.mark()
        await asyncio.to_thread(phone.dial, f"sip:5000@{DOMAIN}")
        await asyncio.to_thread(phone.wait_event, "CALL_ESTABLISHED", after=mark)
        await asyncio.to_thread(phone.hangup)
        await asyncio.to_thread(phone.wait_event, "CALL_CLOSED", after=mark)
    finally:
        await asyncio.to_thread(phone.stop)
    metrics = await c.get("/metrics")
    tls_in = [line for line in metrics.splitlines() if line.startswith(
        'sipcluster_sip_messages_received_total{kind="request",transport="TLS"}')]
    # REGISTER x2, the ACK and BYE... at least the INVITE, ACK and BYE of the call out
    assert tls_in and float(tls_in[0].rsplit(" ", 1)[1]) >= 5, tls_in


# =========================================================================== bad config


def _proxy(tmp_path: Path, sipproxy: str) -> SipProxy:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_text(5060, 5061, 0, 0, 5070, sipproxy))
    return SipProxy(proxy_args("SPX_1", path), load_cluster(path))


def test_unusable_tls_files_refuse_the_config(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    issue_proxy_certificate(certs)
    issue(certs, "other")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    cases = {
        'tls-cert = "missing.pem"': ("sipproxy.tls-cert", "does not exist"),
        'tls-cert = "garbage.pem"': ("sipproxy.tls-cert", "holds no PEM certificate"),
        'tls-key = "garbage.pem"': ("sipproxy.tls-key", "no usable PEM private key"),
        'tls-key = "certs/other.key"': ("sipproxy.tls-key", "does not match the certificate"),
        'tls-ca = "garbage.pem"': ("sipproxy.tls-ca", "no PEM CA certificate"),
    }
    for option, (key, reason) in cases.items():
        with pytest.raises(ConfigError) as err:
            _proxy(tmp_path, option)
        assert err.value.key == f"applications.SPX_1.{key}", (option, str(err.value))
        assert reason in err.value.reason, (option, str(err.value))
    # the defaults: certs/SPX_1.pem and .key beside the cluster file
    assert _proxy(tmp_path, "").ssl_context is not None


def test_missing_certificate_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_text(5060, 5061, 0, 0, 5070))
    run = subprocess.run([sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
                          str(path), "--name", "SPX_1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "applications.SPX_1.sip-tls-port" in lines[0] and "SPX_1.pem" in lines[0], lines
    assert "sipcluster certs issue" in lines[0], lines


def test_certs_issue_san_names_what_phones_dial(tmp_path: Path) -> None:
    """``sipcluster certs issue NAME --san ...`` (deploy, compose): DNS names, and each
    address as an address and as a DNS name (mbed TLS matches DNS names only)."""
    from cryptography import x509
    certs = tmp_path / "certs"
    init_ca(certs)
    run = subprocess.run([sys.executable, "-m", "daemons.cli", "certs", "issue", "SPX_1",
                          "--dir", str(certs), "--san", DOMAIN, "--san", PROXY_HOST],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    cert = x509.load_pem_x509_certificate((certs / "SPX_1.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["SPX_1", DOMAIN, PROXY_HOST]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [PROXY_HOST]
