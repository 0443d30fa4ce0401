"""``sipcluster sip responder``: a small UAS and registrar for interop testing.

Built on :class:`daemons.runtime.sip_endpoint.SipEndpoint`:

* OPTIONS -> 200 with Allow, Accept and Supported (RFC 3261 §11.2);
* REGISTER -> digest challenge (401) and, with valid credentials, 200 listing
  the current bindings with their expiry (§10.3, RFC 7616); unknown users and
  wrong passwords get the same 401; after ``--max-auth-failures`` failures in
  a row from one source a 403;
* INVITE -> 180, then after ``--answer-after`` seconds 200 with an SDP answer
  mirroring the offer's codecs on a reserved, unused RTP port (RFC 3264 §6);
  486 for ``--busy`` users; CANCEL -> 200 + 487 (by the endpoint, §9.2);
* ACK, BYE -> 200 (481 for an unknown dialog, §15.1.2); re-INVITE -> 200.

It listens on UDP, on TCP with ``--tcp`` and on TLS with ``--tls-listen``
(``--cert``/``--key``: the server certificate chain and its key; §26.2,
RFC 5630). A request whose Request-URI is a SIPS URI gets a SIPS Contact in
the answer (§8.1.1.8, §12.1.1).

It runs as a daemon (SIGTERM stops it) with ``/healthz`` and ``/metrics`` on
``--http-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from daemons.runtime.logs import configure_logging
from daemons.runtime.service import Service, run_service
from daemons.runtime.sip_endpoint import IncomingRequest, SipEndpoint
from protocols.sip.digest import DigestAuthenticator
from protocols.sip.errors import ParseError
from protocols.sip.message import Response

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"
#: Methods we know but do not serve: 405 with Allow (§8.2.1); others 501.
_KNOWN_UNSERVED = {"INFO", "MESSAGE", "NOTIFY", "PRACK", "PUBLISH", "REFER", "SUBSCRIBE",
                   "UPDATE"}


# --------------------------------------------------------------------------- SDP


def sdp_answer(offer: bytes, address: str, port: int, session_id: int) -> bytes | None:
    """An SDP answer to ``offer`` (RFC 3264 §6): the offer's audio formats, our address/port.

    Every payload type of the first ``m=audio`` line is accepted with its
    ``a=rtpmap``/``a=fmtp`` lines; other media lines get port 0 (rejected).
    ``None`` when the offer has no audio stream.
    """
    lines = offer.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    media: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("m="):
            media.append((line[2:], []))
        elif media and line.startswith("a="):
            media[-1][1].append(line[2:])
    ip = "IP6" if ":" in address else "IP4"
    out = ["v=0", f"o=sipcluster {session_id} {session_id} IN {ip} {address}", "s=sipcluster",
           f"c=IN {ip} {address}", "t=0 0"]
    audio_done = False
    for mline, attrs in media:
        parts = mline.split()
        if len(parts) < 4:
            continue
        kind, proto, formats = parts[0], parts[2], parts[3:]
        if kind == "audio" and not audio_done and proto.startswith("RTP/"):
            audio_done = True
            out.append(f"m=audio {port} {proto} {' '.join(formats)}")
            for attr in attrs:
                name, _, rest = attr.partition(":")
                if name in ("rtpmap", "fmtp") and rest.split(" ", 1)[0] in formats:
                    out.append(f"a={attr}")
                elif name == "ptime":
                    out.append(f"a={attr}")
            out.append("a=sendrecv")
        else:
            out.append(f"m={kind} 0 {proto} {' '.join(formats)}")
    if not audio_done:
        return None
    return ("\r\n".join(out) + "\r\n").encode()


def sdp_offer(address: str, port: int, session_id: int) -> bytes:
    """An SDP offer with G.711 and RFC 4733 events (used by ``sip call`` and offer-less INVITEs)."""
    ip = "IP6" if ":" in address else "IP4"
    lines = ["v=0", f"o=sipcluster {session_id} {session_id} IN {ip} {address}", "s=sipcluster",
             f"c=IN {ip} {address}", "t=0 0", f"m=audio {port} RTP/AVP 0 8 101",
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000",
             "a=fmtp:101 0-15", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def reserve_rtp_port(host: str) -> socket.socket:
    """Bind a UDP socket on an even ephemeral port and keep it, so the port stays unused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        if sock.getsockname()[1] % 2 == 0:  # RTP on even ports (RFC 3550 §11)
            return sock
        sock.close()
    return sock


# --------------------------------------------------------------------------- TLS


def server_ssl_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """The context of a TLS listener (RFC 3261 §26.2.1, RFC 5630): our certificate
    chain (PEM, leaf first) and its private key; TLS 1.2 at least (RFC 7525 §3.1.1).

    Client certificates are not asked for. Raises ``OSError`` for an unreadable
    file and ``ssl.SSLError`` for a key that does not match the certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def parse_hostport(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` of a listen option; ValueError names ``option``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or "]" in port:
        raise ValueError(f"{option} expects HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


# --------------------------------------------------------------------------- state


@dataclass
class Call:
    call_id: str
    local_tag: str
    remote_tag: str
    peer: str
    rtp: socket.socket | None
    started: float
    answer: bytes = b""
    confirmed: bool = False


@dataclass
class Binding:
    contact: str
    expires_at: float


@dataclass
class Registrar:
    """Bindings per address-of-record (RFC 3261 §10.3)."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    bindings: dict[str, dict[str, Binding]] = field(default_factory=dict)

    def current(self, aor: str, now: float) -> dict[str, Binding]:
        table = self.bindings.get(aor, {})
        for uri in [u for u, b in table.items() if b.expires_at <= now]:
            del table[uri]
        return table


# --------------------------------------------------------------------------- the service


class SipResponder(Service):
    """The responder daemon (see module docstring)."""

    kind = "sip_responder"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(app_name=args.name)
        self.host, self.port = parse_hostport(args.listen, "--listen")
        self.tcp = args.tcp
        self.tls_listen = (parse_hostport(args.tls_listen, "--tls-listen")
                           if args.tls_listen else None)
        self.ssl_context: ssl.SSLContext | None = None
        if self.tls_listen is not None:
            if not args.cert:
                raise ValueError("--tls-listen needs --cert (and --key unless the key is in it)")
            try:
                self.ssl_context = server_ssl_context(args.cert, args.key)
            except OSError as exc:  # unreadable file, or ssl.SSLError: key/cert mismatch
                raise ValueError(f"cannot load --cert/--key: {exc}") from exc
        self.tls_address: tuple[str, int] | None = None
        self.realm = args.realm
        self.users: dict[str, str] = {}
        for spec in args.user or []:
            name, sep, password = spec.partition(":")
            if not sep or not name:
                raise ValueError(f"--user expects NAME:PASSWORD, got {spec!r}")
            self.users[name] = password
        self.answer_after: float = args.answer_after
        self.busy = set(args.busy or [])
        self.max_auth_failures: int = args.max_auth_failures
        self.management_port = args.http_port
        algorithms = [a.strip() for a in args.auth_algorithms.split(",") if a.strip()]
        self.auth = DigestAuthenticator(args.realm, os.urandom(32), algorithms=algorithms)
        self.registrar = Registrar()
        self.calls: dict[tuple[str, str], Call] = {}
        self.failures: dict[str, int] = {}
        self.endpoint: SipEndpoint | None = None
        self._calls_total = self.metrics.counter(
            "responder_calls", "Calls by outcome", ("outcome",))
        self._registrations = self.metrics.counter(
            "responder_registrations", "REGISTER outcomes", ("outcome",))

    async def start(self) -> None:
        self.endpoint = SipEndpoint(self.handle, metrics=self.metrics, logger=self.log,
                                    user_agent="sipcluster-responder",
                                    ssl_context=self.ssl_context)
        if self.tcp:
            udp = await self.endpoint.listen_pair(self.host, self.port)
        else:
            udp = await self.endpoint.listen("UDP", self.host, self.port)
        self.port = udp[1]
        if self.tls_listen is not None:
            self.tls_address = await self.endpoint.listen("TLS", *self.tls_listen)
        self.management.add_health_check("sip", lambda: (True, {"calls": len(self.calls)}))
        self.management.add_status_page("/status/calls", lambda: [
            {"call_id": c.call_id, "peer": c.peer, "confirmed": c.confirmed}
            for c in self.calls.values()])

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
        for call in self.calls.values():
            if call.rtp is not None:
                call.rtp.close()
        self.calls.clear()

    # ------------------------------------------------------------ dispatch

    async def handle(self, incoming: IncomingRequest) -> Response | list[Response] | None:
        req = incoming.request
        method = req.method
        log = self.log.bind(call_id=req.call_id, method=method,
                            peer=f"{incoming.flow.remote[0]}:{incoming.flow.remote[1]}")
        log.info("sip_request_received", transport=incoming.flow.transport)
        if method == "OPTIONS":
            return incoming.response(200, headers=[
                ("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", ""),
                ("Accept-Language", "en")])
        if method == "REGISTER":
            return self.register(incoming, log)
        if method == "INVITE":
            return await self.invite(incoming, log)
        if method == "ACK":
            self.ack(incoming, log)
            return None
        if method == "BYE":
            return self.bye(incoming, log)
        if method in _KNOWN_UNSERVED:
            return incoming.response(405, headers=[("Allow", ALLOW)])
        return incoming.response(501)

    # ------------------------------------------------------------ REGISTER

    def register(self, incoming: IncomingRequest, log: Any) -> Response:
        req = incoming.request
        now = time.time()
        source = incoming.flow.remote[0]
        if self.failures.get(source, 0) >= self.max_auth_failures > 0:
            self._registrations.labels("forbidden").inc()
            log.warning("sip_register_forbidden", failures=self.failures[source])
            return incoming.response(403)
        aor_user = req.to.sip_uri.user or ""
        if self.users:
            credentials = req.headers.get("Authorization")
            if credentials is None:
                return self._challenge(incoming, now, stale=False)
            result = self.auth.verify("REGISTER", credentials, now=now,
                                      password_lookup=self.users.get)
            if not result.ok:
                if not result.stale:
                    self.failures[source] = self.failures.get(source, 0) + 1
                    self._registrations.labels("auth_failed").inc()
                    log.info("sip_auth_failed", reason=result.reason.value if result.reason
                             else None, username=result.username)
                return self._challenge(incoming, now, stale=result.stale)
            if result.username != aor_user:
                self._registrations.labels("forbidden").inc()
                log.info("sip_register_wrong_aor", username=result.username, aor=aor_user)
                return incoming.response(403)
            self.failures.pop(source, None)
        aor = f"{aor_user}@{req.to.sip_uri.host}".lower()
        table = self.registrar.current(aor, now)
        try:
            header_expires = req.expires
            contacts = req.contacts
        except ParseError as exc:
            return incoming.response(400, exc.reason)
        default = header_expires if header_expires is not None else \
            self.registrar.default_expires
        if any(c.is_star for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return incoming.response(400, "Invalid Contact *")
            table.clear()
        for contact in contacts:
            if contact.is_star:
                continue
            raw = contact.params.get("expires")
            try:
                expires = int(raw) if raw is not None else default
            except ValueError:
                return incoming.response(400, "Invalid Contact expires")
            if 0 < expires < self.registrar.min_expires:
                return incoming.response(423, headers=[
                    ("Min-Expires", str(self.registrar.min_expires))])
            expires = min(expires, self.registrar.max_expires)
            if expires == 0:
                table.pop(contact.uri, None)
            else:
                table[contact.uri] = Binding(contact.uri, now + expires)
        self.registrar.bindings[aor] = table
        self._registrations.labels("ok").inc()
        log.info("sip_registered", aor=aor, bindings=len(table))
        headers = [("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
                   for b in table.values()]
        headers.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))))
        return incoming.response(200, headers=headers)

    def _challenge(self, incoming: IncomingRequest, now: float, stale: bool) -> Response:
        return incoming.response(
            401, headers=[("WWW-Authenticate", value) for value in self.auth.challenge(now, stale)])

    # ------------------------------------------------------------ calls

    async def invite(self, incoming: IncomingRequest, log: Any) -> Response | None:
        req = incoming.request
        if req.to.tag:
            call = self.calls.get((req.call_id, req.to.tag))
            if call is None:
                return incoming.response(481)
            log.info("sip_reinvite")
            return incoming.response(200, headers=self._answer_headers(incoming),
                                     body=call.answer)
        user = req.ruri.user or ""
        if user in self.busy:
            self._calls_total.labels("busy").inc()
            log.info("sip_call_busy", user=user)
            return incoming.response(486)
        rtp = reserve_rtp_port(self.host)
        port = rtp.getsockname()[1]
        session = int(time.time())
        if req.body:
            answer = sdp_answer(req.body, self.host, port, session)
            if answer is None:
                rtp.close()
                self._calls_total.labels("rejected").inc()
                return incoming.response(488)
        else:
            answer = sdp_offer(self.host, port, session)
        call = Call(req.call_id, incoming.to_tag, req.from_.tag or "",
                    f"{incoming.flow.remote[0]}:{incoming.flow.remote[1]}", rtp, time.time(),
                    answer)
        self.calls[(call.call_id, call.local_tag)] = call
        incoming.respond(180)
        try:
            if self.answer_after > 0:
                await asyncio.sleep(self.answer_after)
        except asyncio.CancelledError:
            self._end_call(call, "cancelled", log)
            raise
        if incoming.cancelled.is_set():
            self._end_call(call, "cancelled", log)
            return None
        log.info("sip_call_answered", rtp_port=port)
        return incoming.response(200, headers=self._answer_headers(incoming), body=answer)

    def _answer_headers(self, incoming: IncomingRequest) -> list[tuple[str, str]]:
        assert self.endpoint is not None
        flow = incoming.flow
        contact = self.endpoint.contact_uri(flow.transport, remote_host=flow.remote[0])
        if incoming.request.uri[:5].lower() == "sips:" and flow.transport == "TLS":
            # §8.1.1.8 / §12.1.1: a SIPS Request-URI asks for a SIPS Contact
            contact = "sips:" + contact[4:].replace(";transport=tls", "")
        return [("Contact", f"<{contact}>"), ("Allow", ALLOW),
                ("Content-Type", "application/sdp")]

    def ack(self, incoming: IncomingRequest, log: Any) -> None:
        req = incoming.request
        call = self.calls.get((req.call_id, req.to.tag or ""))
        if call is None:
            log.debug("sip_ack_unmatched")
            return
        if not call.confirmed:
            call.confirmed = True
            log.info("sip_call_confirmed")

    def bye(self, incoming: IncomingRequest, log: Any) -> Response:
        req = incoming.request
        call = self.calls.get((req.call_id, req.to.tag or ""))
        if call is None:
            return incoming.response(481)
        self._end_call(call, "completed", log)
        return incoming.response(200)

    def _end_call(self, call: Call, outcome: str, log: Any) -> None:
        if self.calls.pop((call.call_id, call.local_tag), None) is None:
            return
        if call.rtp is not None:
            call.rtp.close()
        self._calls_total.labels(outcome).inc()
        log.info("sip_call_ended", outcome=outcome,
                 duration=round(time.time() - call.started, 3))


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "responder",
        help="run a SIP UAS/registrar for interop tests (OPTIONS, REGISTER, INVITE, BYE)",
        description=(
            "A small SIP user agent server and registrar on the sipcluster stack. "
            "Answers OPTIONS with 200, challenges REGISTER with digest (--user), rings "
            "and answers INVITE with an SDP answer, handles ACK, BYE and CANCEL. "
            "Listens on UDP, and on TCP (--tcp) and TLS (--tls-listen, --cert, --key). "
            "Stops on SIGTERM; /healthz and /metrics on --http-port."),
    )
    parser.add_argument("--listen", default="127.0.0.1:5060", metavar="HOST:PORT",
                        help="UDP address to listen on (port 0: any free port)")
    parser.add_argument("--tcp", action="store_true",
                        help="also listen on TCP at the same address and port")
    parser.add_argument("--tls-listen", metavar="HOST:PORT",
                        help="also listen on TLS at this address (port 0: any free port); "
                             "needs --cert")
    parser.add_argument("--cert", metavar="FILE",
                        help="PEM certificate chain (leaf first) for --tls-listen; may hold "
                             "the key too")
    parser.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    parser.add_argument("--realm", default="sipcluster", help="digest realm for REGISTER")
    parser.add_argument("--user", action="append", metavar="NAME:PASSWORD",
                        help="an account allowed to REGISTER (repeat; none = no auth)")
    parser.add_argument("--auth-algorithms", default="SHA-256,MD5",
                        help="digest algorithms offered, preferred first (RFC 8760)")
    parser.add_argument("--max-auth-failures", type=int, default=0,
                        help="answer 403 after this many failed attempts from one address "
                             "(0: never)")
    parser.add_argument("--answer-after", type=float, default=0.0, metavar="SECONDS",
                        help="ring this long before answering an INVITE")
    parser.add_argument("--busy", action="append", metavar="USER",
                        help="answer INVITEs to this user with 486 Busy Here (repeat)")
    parser.add_argument("--http-port", type=int, default=0,
                        help="management HTTP port for /healthz and /metrics (0: any)")
    parser.add_argument("--name", default="sip-responder", help="application name in logs")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, fmt=args.log_format)
    try:
        service = SipResponder(args)
    except ValueError as exc:
        print(f"sip responder: {exc}")
        return 2
    return run_service(service)
