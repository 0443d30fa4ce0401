"""Attended transfer when the two calls sit on different nodes.

The proxies spread new calls over a data centre's nodes by Call-ID, so a
phone's call and its consultation call are often on two nodes. Here the
transferor A is a small UA of our own (so its Call-IDs, hence the nodes, are
chosen); B (440 Hz) and C (880 Hz) are baresip. A calls B (call 1, on node
1) and C (call 2, on node 2), then sends REFER in call 1 with call 2's
dialog in a Replaces header (RFC 5589 §7). Node 1 finds no such dialog of
its own, sends INVITE with Replaces to the other nodes; node 2 replaces A's
leg and B and C talk through both nodes. A gets the NOTIFY sipfrag 200 and a
BYE for call 2, and hangs up call 1; B's hang-up later ends C's call.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.sip_proxy.routing import NodeTarget, hrw_order
from protocols.sip.dialog import Dialog
from protocols.sip.digest import DigestClient
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response
from protocols.sip.replaces import Replaces

LAB_SUBNETS = {"127.0.1.": "127.0.163.", "127.0.2.": "127.0.164."}

pytestmark = pytest.mark.timeout(120)

B_HZ = 440.0
C_HZ = 880.0
SILENCE_RMS = 500.0


class Transferor:
    """Phone A: calls, REFER with Replaces, answers NOTIFY and BYE."""

    def __init__(self, lab: Any, dn: str, address: str) -> None:
        self.lab, self.dn, self.address = lab, dn, address
        self.domain = lab.domain
        proxy = lab.proxies("dc1")[0]
        self.proxy = Destination("UDP", proxy["host"], proxy["sip_port"])
        self.digest = DigestClient(dn, password=lab.password(dn))
        self.notifies: list[bytes] = []
        self.byes: list[str] = []
        self.ep = SipEndpoint(self.handle, user_agent="attended-transferor")

    async def start(self) -> None:
        await self.ep.listen_pair(self.address, 0)

    async def handle(self, inc: IncomingRequest) -> Response | None:
        if inc.method == "NOTIFY":
            self.notifies.append(inc.request.body)
            return inc.response(200)
        if inc.method == "BYE":
            self.byes.append(inc.request.call_id)
            return inc.response(200)
        if inc.method == "ACK":
            return None
        return inc.response(488)

    def sdp(self) -> bytes:
        return (f"v=0\r\no=a 1 1 IN IP4 {self.address}\r\ns=-\r\nc=IN IP4 {self.address}\r\n"
                "t=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=sendrecv\r\n").encode()

    def _invite(self, dn: str, call_id: str, tag: str, cseq: int,
                auth: tuple[str, str] | None = None) -> Request:
        uri = f"sip:{dn}@{self.domain}"
        headers = Headers([
            ("From", f"<sip:{self.dn}@{self.domain}>;tag={tag}"), ("To", f"<{uri}>"),
            ("Call-ID", call_id), ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<{self.ep.contact_uri('UDP', self.dn, self.proxy.host)}>"),
            ("Content-Type", "application/sdp")])
        if auth:
            headers.add(*auth)
        return Request("INVITE", uri, headers=headers, body=self.sdp())

    async def call(self, dn: str, call_id: str) -> Dialog:
        tag = secrets.token_hex(4)
        invite = self._invite(dn, call_id, tag, 1)
        resp = await self.ep.request(invite, self.proxy)
        if resp.status == 407:
            creds = self.digest.authorize(resp.headers.get_all("Proxy-Authenticate"),
                                          method="INVITE", uri=invite.uri, body=invite.body)
            invite = self._invite(dn, call_id, tag, 2, ("Proxy-Authorization", creds))
            resp = await self.ep.request(invite, self.proxy)
        assert resp.status == 200, f"call to {dn}: {resp.status} {resp.reason}"
        await self.ep.send_ack(invite, resp, destination=self.proxy)
        return Dialog.create_uac(invite, resp)

    async def in_dialog(self, dialog: Dialog, method: str,
                        headers: list[tuple[str, str]] | None = None) -> Response:
        request = dialog.create_request(method, headers=headers or [])
        resp = await self.ep.request(request, self.proxy)
        dialog.receive_response(resp)
        return resp


def node_for(lab: Any, call_id: str) -> str:
    nodes = [NodeTarget(n["name"], "dc1", n["host"], n["sip_port"]) for n in lab.nodes("dc1")]
    return hrw_order(call_id, nodes)[0].name


def call_ids_on_two_nodes(lab: Any) -> tuple[str, str]:
    first = f"{secrets.token_hex(8)}@transferor"
    while True:
        second = f"{secrets.token_hex(8)}@transferor"
        if node_for(lab, second) != node_for(lab, first):
            return first, second


def events(lab: Any, node: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in lab.log(node).splitlines():
        if f'"{name}"' in line:
            found.append(json.loads(line))
    return found


def test_attended_transfer_across_nodes(
    lab: Any, baresip_phone: Callable[..., Any], tmp_path: Path,
) -> None:
    b = baresip_phone("1001", "dc1", route="address", tone_hz=B_HZ)
    c = baresip_phone("1002", "dc1", route="address", tone_hz=C_HZ)
    b_before, c_before = b.recordings(), c.recordings()
    b_mark, c_mark = b.mark(), c.mark()
    cid1, cid2 = call_ids_on_two_nodes(lab)
    node1, node2 = node_for(lab, cid1), node_for(lab, cid2)

    async def scenario() -> Transferor:
        a = Transferor(lab, "1008", lab.prefix("dc1") + "170")
        await a.start()
        try:
            call1 = await a.call("1001", cid1)
            call2 = await a.call("1002", cid2)
            await asyncio.sleep(0.5)
            replaces = Replaces(cid2, call2.id.remote_tag, call2.id.local_tag)
            refer_to = f"<sip:1002@{lab.domain}?Replaces={replaces.uri_header()}>"
            resp = await a.in_dialog(call1, "REFER", [
                ("Refer-To", refer_to), ("Referred-By", f"<sip:1008@{lab.domain}>")])
            assert resp.status == 202, resp.status
            for _ in range(100):
                if any(b" 200 " in n for n in a.notifies):
                    break
                await asyncio.sleep(0.1)
            assert any(b"SIP/2.0 200" in n for n in a.notifies), a.notifies
            await a.in_dialog(call1, "BYE")  # RFC 5589 §7.1: A hangs up after the 200
            for _ in range(50):
                if cid2 in a.byes:
                    break
                await asyncio.sleep(0.1)
            return a
        finally:
            await a.ep.close()

    a = asyncio.run(scenario())
    assert cid2 in a.byes, f"the replaced call was not ended: {a.byes}"
    time.sleep(2.5)  # B and C talk through both nodes
    assert not any(e.get("type") == "CALL_CLOSED" for e in b.events[b_mark + 1:]), b.log()
    b.hangup()
    c.wait_event("CALL_CLOSED", after=c_mark, timeout=10)
    heard_b, heard_c = b.heard(b_before), c.heard(c_before)
    assert heard_b.rms > SILENCE_RMS and heard_b.power[C_HZ] > 10 * heard_b.power[B_HZ], heard_b
    assert heard_c.rms > SILENCE_RMS and heard_c.power[B_HZ] > 10 * heard_c.power[C_HZ], heard_c
    attended = events(lab, node1, "call_transfer_attended")
    assert attended and attended[-1]["here"] is False, attended
    assert events(lab, node2, "call_replaced"), f"{node2} replaced nothing"
