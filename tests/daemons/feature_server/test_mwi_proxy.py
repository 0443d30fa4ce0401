"""MWI through a sip-proxy (guide: "Configure Message Waiting Indicator (MWI)";
RFC 6665, RFC 3842): real ``sipcluster sip-proxy`` and ``sipcluster
feature-server`` processes and a node (``sipcluster sip responder``, the
registrar), on 127.0.250.x.

Phones reach the proxy over TCP and TLS and have no listener of their own for
it (our SIP endpoint listens on UDP only; SIPp's Contact is a private address
nobody can reach; baresip has no TLS listener): the NOTIFYs of their
subscriptions can only come back over the connection each phone opened, which
the feature-server's dialog reaches through the proxy's Record-Route and the
proxy through its flow token. The SUBSCRIBE is challenged by the
feature-server with the credentials the phone registers with; another DN's
mailbox is refused with 403, logged and counted.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.feature_server.voicemail.prompts import frames_of
from daemons.runtime.certs import init_ca, issue
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from protocols.rtp import g711
from protocols.rtp.tones import tone
from protocols.sip.dialog import Dialog
from protocols.sip.digest import DigestClient
from protocols.sip.message import Request, Response
from protocols.sip.mwi import parse_message_summary
from tests.conftest import free_port
from tests.daemons.feature_server.voicemail.phone import Phone
from tests.interop.lab.conftest import Baresip, baresip_config, write_tone

ROOT = Path(__file__).resolve().parents[3]
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
SCENARIOS = Path(__file__).parent / "scenarios"
DOMAIN = "mwi.test"
NODE, PROXY, FS = "127.0.250.11", "127.0.250.21", "127.0.250.31"
PASSWORDS = {dn: f"mwi-{dn}-secret" for dn in ("1001", "1002", "1003", "1004", "1005")}

pytestmark = pytest.mark.timeout(60)


@dataclass
class MwiCluster:
    tmp: Path
    ca: Path
    proxy_port: int
    tls_port: int
    proxy_http: int
    fs_sip: int
    fs_http: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        text = self.log(name).read_text(errors="replace")
        text = text[: text.rfind("\n") + 1]
        return [e for e in (json.loads(line) for line in text.splitlines()
                            if line.startswith("{")) if e.get("event") == event]

    def get(self, port: int, path: str, host: str = PROXY) -> str:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as answer:
            return str(answer.read().decode())

    def fs_metric(self, line_start: str) -> float:
        for line in self.get(self.fs_http, "/metrics", FS).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def proxy(self, transport: str) -> Destination:
        if transport == "TLS":
            return Destination("TLS", PROXY, self.tls_port, PROXY)
        return Destination(transport, PROXY, self.proxy_port)


def cluster_text(c: MwiCluster, node_port: int, repl_port: int) -> str:
    dns = "".join(f'[dns.{dn}]\ntype = "Extension"\ncontact = "*"\npassword = "{pw}"\n\n'
                  for dn, pw in PASSWORDS.items())
    return f"""\
[switch]
name = "SIP_Cluster"
domain = "{DOMAIN}"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]

{dns}
[applications.SIPS_1]
kind = "sip-server"
host = "{NODE}"
geo-location = "dc1"
sip-port = {node_port}
default-port = 0

[applications.TC_SIPS_1]
kind = "t-controller"
host = "{NODE}"
sip-server = "SIPS_1"
tc-port = 0

[applications.SPX_1]
kind = "sip-proxy"
host = "{PROXY}"
geo-location = "dc1"
sip-port = {c.proxy_port}
sip-tls-port = {c.tls_port}
replication-port = {repl_port}
http-port = {c.proxy_http}

[applications.SPX_1.sipproxy]
oos-check = 1
oos-force = 1

[applications.FS_1]
kind = "feature-server"
host = "{FS}"
geo-location = "dc1"
http-port = {c.fs_http}
sip-port = {c.fs_sip}

[applications.FS_1.options]
state-dir = "{c.tmp / 'fs'}"
default-pin = "2468"
rtp-ports = "36200-36299"

[applications.FS_1.options.mwi-delegates]
1005 = ["1001"]
"""


def _wait(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture(scope="module")
def mwi_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MwiCluster]:
    tmp = tmp_path_factory.mktemp("mwi")
    certs = tmp / "certs"
    init_ca(certs)
    issue(certs, "SPX_1", dns_names=[DOMAIN], ip_addresses=[PROXY])
    c = MwiCluster(tmp, certs / "ca.pem", free_port(PROXY), free_port(PROXY), free_port(PROXY),
                   free_port(FS), free_port(FS))
    node_port = free_port(NODE)
    config = tmp / "cluster.toml"
    config.write_text(cluster_text(c, node_port, free_port(PROXY)))
    users = [arg for dn, pw in PASSWORDS.items() for arg in ("--user", f"{dn}:{pw}")]
    commands = {
        "node": [*SIPCLUSTER, "sip", "responder", "--listen", f"{NODE}:{node_port}", "--tcp",
                 "--realm", DOMAIN, "--name", "SIPS_1", "--auth-algorithms", "MD5",
                 "--log-format", "json", *users],
        "proxy": [*SIPCLUSTER, "sip-proxy", "--config", str(config), "--name", "SPX_1",
                  "--log-format", "json", "--oos-check", "0.3"],
        "fs": [*SIPCLUSTER, "feature-server", "--config", str(config), "--name", "FS_1",
               "--log-format", "json"],
    }
    try:
        for name, argv in commands.items():
            with c.log(name).open("wb") as out:
                c.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=out,
                                                 stderr=subprocess.STDOUT)
        for name, proc in c.procs.items():
            assert proc.poll() is None, c.log(name).read_text()
        _wait(lambda: json.loads(c.get(c.proxy_http, "/status/nodes"))["nodes"]["SIPS_1"]
              ["usable"], "the proxy finds the node usable")
        _wait(lambda: "voicemail_started" in c.log("fs").read_text(), "the feature-server")
        yield c
    finally:
        for proc in c.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# =========================================================================== our phone


class MwiPhone:
    """Our SIP endpoint as a phone with no TCP/TLS listener: registers and
    subscribes over one connection to the proxy, keeps the NOTIFYs and the flow
    each came in on."""

    def __init__(self, c: MwiCluster, dn: str, host: str, transport: str) -> None:
        self.c, self.dn, self.host, self.transport = c, dn, host, transport
        self.notifies: list[tuple[Request, str, tuple[str, int]]] = []
        self.notified = asyncio.Event()
        self.ep = SipEndpoint(self._handle, client_ssl_context=ssl.create_default_context(
            cafile=str(c.ca)))

    async def start(self) -> MwiPhone:
        await self.ep.listen("UDP", self.host, 0)
        return self

    async def _handle(self, incoming: IncomingRequest) -> Response | None:
        if incoming.method == "NOTIFY":
            self.notifies.append((incoming.request, incoming.flow.transport,
                                  incoming.flow.remote))
            self.notified.set()
            return incoming.response(200)
        return incoming.response(405)

    def _request(self, method: str, uri: str, call_id: str, cseq: int,
                 headers: list[tuple[str, str]]) -> Request:
        local = self.ep.local_address("UDP")
        assert local is not None
        req = Request(method, uri)
        h = req.headers
        h.add("From", f"<sip:{self.dn}@{DOMAIN}>;tag=t{call_id}")
        h.add("To", f"<{uri}>" if method == "SUBSCRIBE" else f"<sip:{self.dn}@{DOMAIN}>")
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        h.add("Contact", f"<sip:{self.dn}@{local[0]}:{local[1]};"
                         f"transport={self.transport.lower()}>")
        for name, value in headers:
            h.add(name, value)
        return req

    async def _send(self, method: str, uri: str, call_id: str,
                    headers: list[tuple[str, str]], password: str | None
                    ) -> tuple[Response, Response | None, Request]:
        """(first answer, the answer with credentials when challenged, request sent last)."""
        dest = self.c.proxy(self.transport)
        first_req = self._request(method, uri, call_id, 1, headers)
        first = await self.ep.request(first_req, dest)
        if first.status not in (401, 407) or password is None:
            return first, None, first_req
        name = "WWW-Authenticate" if first.status == 401 else "Proxy-Authenticate"
        again = self._request(method, uri, call_id, 2, headers)
        client = DigestClient(self.dn, password=password)
        again.headers.add("Authorization" if first.status == 401 else "Proxy-Authorization",
                          client.authorize(first.headers.get_all(name), method=method,
                                           uri=uri))
        return first, await self.ep.request(again, dest), again

    async def register(self) -> None:
        _, final, _ = await self._send("REGISTER", f"sip:{DOMAIN}", f"reg-{self.dn}",
                                       [("Expires", "120")], PASSWORDS[self.dn])
        assert final is not None and final.status == 200, final

    async def subscribe(self, mailbox: str, password: str | None, call_id: str
                        ) -> tuple[Response, Response | None, Request]:
        return await self._send("SUBSCRIBE", f"sip:{mailbox}@{DOMAIN}", call_id, [
            ("Event", "message-summary"), ("Expires", "120"),
            ("Accept", "application/simple-message-summary")], password)

    async def wait_notifies(self, count: int, timeout: float = 8.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.notifies) < count:
                self.notified.clear()
                await self.notified.wait()


def _waiting(notify: Request) -> bool:
    return parse_message_summary(notify.body).waiting


async def _deposit(c: MwiCluster, mailbox: str, caller_host: str) -> None:
    """A message left in ``mailbox`` by a call straight to the feature-server (as a
    node forwards one): greeting, beep, a second of tone, BYE."""
    caller = await Phone(caller_host, "1009", rtp_ports="36400-36499").start()
    try:
        call = await caller.call(f"sip:{mailbox}@{FS}:{c.fs_sip};vm=deposit",
                                 Destination("UDP", FS, c.fs_sip))
        assert call.response.status == 200, call.response
        await asyncio.sleep(1.9)  # the greeting, then the beep
        await call.play(frames_of(g711.encode(tone([1850], 1000), call.codec), call.codec))
        await call.bye()
    finally:
        await caller.close()


# =========================================================================== tests


@pytest.mark.parametrize(("transport", "dn", "host"), [("TCP", "1001", "127.0.250.41"),
                                                       ("TLS", "1002", "127.0.250.42")])
async def test_lamp_notify_comes_over_the_phones_own_connection(
        mwi_cluster: MwiCluster, transport: str, dn: str, host: str) -> None:
    """Registered and subscribed over one TCP / TLS connection: the first NOTIFY,
    the one after a deposit and the last one after Expires: 0 (sent along the
    dialog's route set) all come from the proxy over that connection."""
    c = mwi_cluster
    phone = await MwiPhone(c, dn, host, transport).start()
    try:
        await phone.register()
        first, final, sent = await phone.subscribe(dn, PASSWORDS[dn], f"mwi-{dn}")
        assert first.status == 401, first                     # the feature-server's challenge
        assert any(f'realm="{DOMAIN}"' in v for v in first.headers.get_all("WWW-Authenticate"))
        assert final is not None and final.status == 200, final
        await phone.wait_notifies(1)
        proxy_at = (PROXY, c.tls_port if transport == "TLS" else c.proxy_port)
        notify, flow_transport, remote = phone.notifies[0]
        # over the phone's own connection (it listens on UDP only), from the proxy
        assert (flow_transport, remote) == (transport, proxy_at)
        assert not _waiting(notify)
        await _deposit(c, dn, f"127.0.250.7{dn[-1]}")
        await phone.wait_notifies(2)
        notify, flow_transport, remote = phone.notifies[1]
        assert (flow_transport, remote) == (transport, proxy_at) and _waiting(notify)
        # the refresh goes back along the route set: proxy, then feature-server
        dialog = Dialog.create_uac(sent, final)
        assert dialog.route_set and f"{PROXY}:" in dialog.route_set[0]
        bye = dialog.create_request("SUBSCRIBE", headers=[("Event", "message-summary"),
                                                          ("Expires", "0")])
        assert (await phone.ep.request(bye)).status == 200
        await phone.wait_notifies(3)
        assert (phone.notifies[2][0].headers.get("Subscription-State") or "").startswith(
            "terminated")
        assert phone.notifies[2][1:] == (transport, proxy_at)
        # the feature-server's NOTIFYs never went to the node
        assert "NOTIFY" not in c.log("node").read_text()
    finally:
        await phone.ep.close()


async def test_unauthenticated_and_foreign_subscriptions_are_refused(
        mwi_cluster: MwiCluster) -> None:
    c = mwi_cluster
    phone = await MwiPhone(c, "1001", "127.0.250.43", "TCP").start()
    refused = 'sipcluster_mwi_subscribe_refused_total{reason="not_owner"}'
    before = c.fs_metric(refused)
    try:
        bare, _, _ = await phone.subscribe("1001", None, "mwi-bare")
        assert bare.status == 401 and bare.headers.get_all("WWW-Authenticate")
        wrong, again, _ = await phone.subscribe("1001", "wrong-password", "mwi-wrong")
        assert wrong.status == 401 and again is not None and again.status == 401
        first, foreign, _ = await phone.subscribe("1002", PASSWORDS["1001"], "mwi-foreign")
        assert first.status == 401 and foreign is not None and foreign.status == 403, foreign
        _, delegate, _ = await phone.subscribe("1005", PASSWORDS["1001"], "mwi-delegate")
        assert delegate is not None and delegate.status == 200, delegate
        await phone.wait_notifies(1)                      # the delegate's, and only that one
        await asyncio.sleep(0.3)
        assert len(phone.notifies) == 1
        assert phone.notifies[0][0].headers.get("Call-ID") == "mwi-delegate"
    finally:
        await phone.ep.close()
    assert c.fs_metric(refused) == before + 1
    lines = [e for e in c.events("fs", "mwi_subscribe_refused") if e.get("why") == "not_owner"]
    assert lines and lines[-1]["mailbox"] == "1002" and lines[-1]["subscriber"] == "1001"
    assert lines[-1]["status"] == 403


def test_sipp_behind_nat_over_tcp(mwi_cluster: MwiCluster, require_tool: Any) -> None:
    """SIPp subscribes over TCP with a Contact nobody can reach: challenged, then
    the NOTIFY (no message waiting in 1003) over its own connection."""
    c = mwi_cluster
    sipp = require_tool("sipp")
    log = c.tmp / "sipp-mwi.log"
    run = subprocess.run(
        [sipp, f"{PROXY}:{c.proxy_port}", "-sf", str(SCENARIOS / "mwi_subscribe_nat.xml"),
         "-t", "t1", "-i", "127.0.250.51", "-p", str(free_port("127.0.250.51")),
         "-s", "1003", "-au", "1003", "-ap", PASSWORDS["1003"],
         "-set", "domain", DOMAIN, "-set", "contact", "10.250.0.9:5060",
         "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error", "-trace_logs",
         "-log_file", str(log), "-trace_err", "-error_file", str(c.tmp / "sipp-mwi.err")],
        cwd=c.tmp, capture_output=True, timeout=30)
    text = log.read_text() if log.exists() else ""
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:], text)
    assert "challenged: 401" in text
    assert re.findall(r"mwi: (\w+)", text) == ["no"], text


async def test_baresip_over_tls_gets_its_lamp(mwi_cluster: MwiCluster, tmp_path: Path,
                                             require_tool: Any) -> None:
    """baresip (mwi.so) registered over TLS, which has no TLS listener: a message
    waits in 1004, and its NOTIFY says so."""
    c = mwi_cluster
    binary = require_tool("baresip")
    await _deposit(c, "1004", "127.0.250.72")
    address = "127.0.250.61"
    workdir = tmp_path / "baresip"
    workdir.mkdir()
    phone = Baresip(name="1004", workdir=workdir, address=address,
                    sip_port=free_port(address), ctrl_port=free_port(address),
                    aor=f"sip:1004@{DOMAIN}")
    baresip_config(phone, dns=("127.0.250.53", 53), tone=write_tone(workdir / "tone.wav", 440.0))
    with (workdir / "config").open("a") as config:
        config.write(f"sip_cafile\t\t{c.ca}\nmodule_app\t\tmwi.so\n")
    account = (f"<sip:1004@{DOMAIN};transport=tls>;auth_pass={PASSWORDS['1004']};"
               f"outbound=\"sip:{PROXY}:{c.tls_port};transport=tls\";regint=60;"
               "answermode=manual;audio_codecs=PCMU;mwi=yes")
    await asyncio.to_thread(lambda: phone.start(binary, account=account))
    try:
        await asyncio.to_thread(phone.wait_registered)

        def notified() -> bool:  # an event, or baresip's own MWI log line
            return any(e.get("type") == "MWI_NOTIFY" and "Messages-Waiting: yes" in
                       str(e.get("param", "")) for e in phone.events) or \
                "Messages-Waiting: yes" in phone.log()
        deadline = time.monotonic() + 15
        while not notified():
            assert time.monotonic() < deadline, phone.log()
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(phone.stop)
    ok = [e for e in c.events("fs", "mwi_subscribed") if e.get("mailbox") == "1004"]
    assert ok, "no subscription for 1004 at the feature-server"
    assert not [e for e in c.events("fs", "mwi_notify_refused") if e.get("mailbox") == "1004"]
