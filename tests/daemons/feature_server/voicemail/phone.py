"""A scriptable phone for voicemail tests and the benchmark: our SIP endpoint
and RTP session as the caller (INVITE with an offer, RFC 4733 digits, audio,
BYE) and as an MWI subscriber (SUBSCRIBE, answering a digest challenge when it has a
password; NOTIFYs collected)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from daemons.runtime.management import Metrics
from daemons.runtime.rtp import PortRange, RtpCounters, RtpPacer, RtpSession, open_rtp_session
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from protocols.rtp.g711 import Codec
from protocols.rtp.packet import RtpPacket
from protocols.rtp.telephone_event import digit_payloads
from protocols.sip.dialog import Dialog
from protocols.sip.digest import DigestClient
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response
from protocols.sip.mwi import MessageSummary, parse_message_summary
from protocols.sip.sdp import audio_offer, parse_sdp


@dataclass
class PhoneCall:
    phone: Phone
    invite: Request
    response: Response
    dialog: Dialog | None
    rtp: RtpSession | None
    codec: Codec = Codec.PCMU
    heard: bytearray = field(default_factory=bytearray)
    packets: list[RtpPacket] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def on_packet(self, packet: RtpPacket, now: float) -> None:
        self.packets.append(packet)
        if packet.payload_type == self.codec.payload_type:
            self.heard += packet.payload

    async def digits(self, keys: str, *, event_pt: int = 101, gap: float = 0.1) -> None:
        """Press keys as RFC 4733 events, one packet per 20 ms."""
        assert self.rtp is not None
        for key in keys:
            ts = self.rtp.timestamp_now()
            for i, payload in enumerate(digit_payloads(key)):
                self.rtp.send(payload, timestamp=ts, payload_type=event_pt,
                              marker=i == 0, kind="event")
                await asyncio.sleep(0.02)
            await asyncio.sleep(gap)

    async def play(self, frames: list[bytes]) -> None:
        assert self.rtp is not None
        await self.rtp.play(frames)

    async def info(self, key: str, content_type: str = "application/dtmf-relay") -> Response:
        assert self.dialog is not None
        body = f"Signal={key}\r\nDuration=160\r\n" if content_type.endswith("relay") else key
        req = self.dialog.create_request("INFO", headers=[("Content-Type", content_type)],
                                         body=body.encode())
        return await self.phone.endpoint.request(req)

    async def reinvite(self, direction: str) -> Response:
        """A new offer in the call (``sendonly`` puts the other side on hold)."""
        assert self.dialog is not None and self.rtp is not None
        offer = audio_offer(address=self.phone.host, port=self.rtp.local_address[1],
                            codecs=(self.codec.name,), session_id=7)
        body = offer.serialize().replace(b"a=sendrecv", f"a={direction}".encode())
        req = self.dialog.create_request(
            "INVITE", contact=f"<{self.phone.endpoint.contact_uri('UDP', user=self.phone.user)}>",
            headers=[("Content-Type", "application/sdp")], body=body)
        resp = await self.phone.endpoint.request(req)
        if resp.status == 200:
            await self.phone.endpoint.send_ack(req, resp)
        return resp

    async def bye(self) -> Response:
        assert self.dialog is not None
        if self.rtp is not None:
            self.rtp.close()
        resp = await self.phone.endpoint.request(self.dialog.create_request("BYE"))
        self.ended.set()
        return resp


class Phone:
    """One phone on ``host`` (loopback address of the test's subnet)."""

    def __init__(self, host: str, user: str, *, rtp_ports: str = "30000-30999") -> None:
        self.host = host
        self.user = user
        self.metrics = Metrics("phone")
        self.ports = PortRange.parse(rtp_ports)
        self.notifies: list[tuple[str, MessageSummary | None]] = []
        self.notified = asyncio.Event()
        #: what NOTIFYs are answered with (481: "no such subscription here")
        self.notify_status = 200
        self.subscription: Dialog | None = None
        #: the DN's digest password: a challenged SUBSCRIBE is sent again with it
        self.password: str | None = None
        self.calls: dict[str, PhoneCall] = {}
        self.endpoint: SipEndpoint
        self.pacer: RtpPacer

    async def start(self) -> Phone:
        self.endpoint = SipEndpoint(self._handle, metrics=self.metrics)
        await self.endpoint.listen_pair(self.host, 0)
        self.pacer = RtpPacer(asyncio.get_running_loop())
        self.counters = RtpCounters(self.metrics)
        return self

    async def close(self) -> None:
        for call in self.calls.values():
            if call.rtp is not None:
                call.rtp.close()
        self.pacer.close()
        await self.endpoint.close()

    async def _handle(self, incoming: IncomingRequest) -> Response | None:
        req = incoming.request
        if req.method == "NOTIFY":
            try:
                summary: MessageSummary | None = parse_message_summary(req.body)
            except Exception:
                summary = None
            self.notifies.append((req.headers.get("Subscription-State") or "", summary))
            self.notified.set()
            return incoming.response(self.notify_status)
        if req.method == "BYE":
            call = self.calls.get(req.call_id)
            if call is not None:
                call.ended.set()
                if call.rtp is not None:
                    call.rtp.close()
            return incoming.response(200)
        if req.method == "ACK":
            return None
        return incoming.response(405)

    def _request(self, method: str, uri: str, *, body: bytes = b"",
                 headers: list[tuple[str, str]] | None = None) -> Request:
        h = Headers()
        h.add("From", f"<sip:{self.user}@cluster.lab>;tag={secrets.token_hex(4)}")
        h.add("To", f"<{uri.split(';')[0]}>")
        h.add("Call-ID", secrets.token_hex(10))
        h.add("CSeq", f"1 {method}")
        h.add("Contact", f"<{self.endpoint.contact_uri('UDP', user=self.user)}>")
        for name, value in headers or []:
            h.add(name, value)
        return Request(method, uri, headers=h, body=body)

    async def call(self, uri: str, destination: Destination, *,
                   codecs: tuple[str, ...] = ("PCMU", "PCMA"), event_pt: int | None = 101,
                   body: bytes | None = None,
                   headers: list[tuple[str, str]] | None = None) -> PhoneCall:
        rtp = await open_rtp_session(self.host, self.ports, lambda: RtpSession(
            self.pacer, self.counters, payload_type=0))
        offer = body if body is not None else audio_offer(
            address=self.host, port=rtp.local_address[1], codecs=codecs,
            telephone_event=event_pt).serialize()
        invite = self._request("INVITE", uri, body=offer,
                               headers=[("Content-Type", "application/sdp"), *(headers or [])])
        response = await self.endpoint.request(invite, destination)
        call = PhoneCall(self, invite, response, None, None)
        if response.status != 200:
            rtp.close()
            return call
        await self.endpoint.send_ack(invite, response, destination=destination)
        call.dialog = Dialog.create_uac(invite, response)
        answer = parse_sdp(response.body)
        audio = answer.audio()
        assert audio is not None
        call.codec = Codec[audio.codec(int(audio.formats[0]))[0]]  # type: ignore[index]
        rtp.payload_type = call.codec.payload_type
        rtp.remote = (answer.address_of(audio) or "", audio.port)
        rtp.on_packet = call.on_packet
        call.rtp = rtp
        self.calls[invite.call_id] = call
        return call

    async def subscribe(self, mailbox: str, destination: Destination, *,
                        expires: int = 600, event: str = "message-summary") -> Response:
        req = self._request("SUBSCRIBE", f"sip:{mailbox}@{destination.host}",
                            headers=[("Event", event), ("Expires", str(expires)),
                                     ("Accept", "application/simple-message-summary")])
        resp = await self.endpoint.request(req, destination)
        if resp.status == 401 and self.password is not None:
            again = self._request("SUBSCRIBE", req.uri, headers=[
                ("Event", event), ("Expires", str(expires)),
                ("Accept", "application/simple-message-summary")])
            for name in ("From", "Call-ID"):
                again.headers.set(name, req.headers.get(name) or "")
            again.headers.set("CSeq", "2 SUBSCRIBE")
            client = DigestClient(self.user, password=self.password)
            again.headers.add("Authorization", client.authorize(
                resp.headers.get_all("WWW-Authenticate"), method="SUBSCRIBE", uri=again.uri))
            req = again
            resp = await self.endpoint.request(req, destination)
        if resp.status == 200:
            self.subscription = Dialog.create_uac(req, resp)
        return resp

    async def resubscribe(self, expires: int) -> Response:
        """SUBSCRIBE within the subscription's dialog (refresh; 0 unsubscribes)."""
        assert self.subscription is not None
        req = self.subscription.create_request(
            "SUBSCRIBE", contact=f"<{self.endpoint.contact_uri('UDP', user=self.user)}>",
            headers=[("Event", "message-summary"), ("Expires", str(expires))])
        return await self.endpoint.request(req)

    async def wait_notify(self, count: int, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while len(self.notifies) < count:
                self.notified.clear()
                await self.notified.wait()
        await asyncio.wait_for(wait(), timeout)
