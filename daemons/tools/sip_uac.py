"""``sipcluster sip options URI`` and ``sipcluster sip call URI``: a UAC on the stack.

* ``options`` sends an OPTIONS ping (RFC 3261 §11) and prints the final
  status line; exit code 0 for a 2xx, 1 otherwise.
* ``call`` places a call (§13): INVITE with an SDP offer, answers a 401/407
  digest challenge once (§22.2, RFC 7616), ACKs the 2xx (§13.2.2.4), holds the
  call ``--duration`` seconds and hangs up with BYE (§15). Exit code 0 when
  the call was answered and the BYE got a 2xx (or the far end hung up first);
  1 otherwise.

The target is located with RFC 3263 (``--transport`` forces one); ``--proxy
HOST:PORT`` sends to an outbound proxy instead.

Name servers, as the daemons' ``dns-servers`` (docs/configuration.md): ``--dns
HOST:PORT`` (repeat, or a comma list); else the lab's DNS from ``--lab
DIR/lab.json``, or from ``lab-run/lab.json`` when the tool runs in the
directory of a lab that ``sipcluster lab`` started; else the system's
resolver. Queries to named servers leave from ``--bind``: the lab's geo-aware
DNS answers by the client's address (docs/dns.md), so ``--bind 127.0.2.100``
gets DC2's proxies first, and an address in no data centre (127.0.0.1) gets
the default view, DC1's.

TLS: a ``sips:`` URI (RFC 3263 §4.1: TLS, ``_sips._tcp``) or ``--transport
tls``. The server certificate is verified against the system's CAs or
``--ca-file``, and its subjectAltName must match the address connected to
(§26.3.1, RFC 5922); ``--insecure`` skips both checks, for lab use only. A
certificate that does not verify fails the request with a local 503
(§8.1.3.1) and a ``sip_tls_handshake_failed`` / ``sip_send_failed`` log line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import secrets
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemons.runtime.dns import SipResolver, parse_nameserver
from daemons.runtime.logs import configure_logging, get_logger
from daemons.runtime.sip_endpoint import Destination, IncomingRequest, SipEndpoint
from daemons.runtime.sip_transport import TransportError
from daemons.tools.sip_responder import reserve_rtp_port, sdp_offer
from protocols.sip.dialog import Dialog
from protocols.sip.digest import DigestClient, DigestError
from protocols.sip.errors import SipError
from protocols.sip.headers import Headers
from protocols.sip.message import Request, Response
from protocols.sip.timers import TimerSettings
from protocols.sip.uri import parse_uri


def client_ssl_context(ca_file: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """The context for outgoing TLS connections (RFC 3261 §26.3.1, RFC 5922 §7.2).

    Verifies the server's chain against ``ca_file`` (PEM; default: the
    system's CAs) and its subjectAltName against the address connected to;
    TLS 1.2 at least (RFC 7525 §3.1.1). ``insecure`` turns both checks off.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


LAB_DESCRIPTION = "lab.json"


class NameServerError(ValueError):
    """``--lab`` names no usable lab description (missing, unreadable, no DNS)."""


@dataclass(frozen=True)
class NameServers:
    """The name servers a tool resolves SIP URIs with, and where they came from.

    ``servers`` None: the system's resolver. ``origin`` says which option (or
    lab.json) gave them, for logs and messages.
    """

    servers: tuple[tuple[str, int], ...] | None
    origin: str

    def resolver(self, bind: str) -> SipResolver:
        """A resolver asking these servers; queries leave from ``bind`` when it
        is one address and can reach them (a loopback source only reaches
        loopback servers), so that a geo-aware DNS answers by it."""
        if self.servers is None:
            return SipResolver()
        try:
            local = ipaddress.ip_address(bind)
        except ValueError:
            return SipResolver(self.servers)
        remote = [ipaddress.ip_address(host) for host, _ in self.servers]
        usable = not local.is_unspecified and all(
            r.version == local.version and (r.is_loopback or not local.is_loopback)
            for r in remote)
        return SipResolver(self.servers, source=bind if usable else None)


def dns_servers_arg(text: str) -> list[tuple[str, int]]:
    """``--dns`` value: ``HOST[:PORT]`` or a comma list of them, each HOST an
    IP address (as ``dns-servers`` in the cluster file); port 53 by default."""
    servers = []
    for item in text.split(","):
        try:
            host, port = parse_nameserver(item.strip())
            ipaddress.ip_address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected HOST:PORT with an IP address, got {item.strip()!r}") from None
        if not 0 < port < 65536:
            raise argparse.ArgumentTypeError(f"port out of range in {item.strip()!r}")
        servers.append((host, port))
    return servers


def lab_name_server(path: Path) -> tuple[str, int]:
    """The DNS server of a lab from its ``lab.json`` (``"dns": {"host", "port"}``);
    ``path`` is the file or the lab directory."""
    if path.is_dir():
        path = path / LAB_DESCRIPTION
    try:
        desc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NameServerError(f"cannot read {path}: {exc}") from exc
    dns = desc.get("dns") if isinstance(desc, dict) else None
    if not isinstance(dns, dict) or "host" not in dns or "port" not in dns:
        raise NameServerError(f"{path} names no DNS server (the lab runs without its GeoDNS)")
    try:
        (server,) = dns_servers_arg(f"{dns['host']}:{dns['port']}")
    except argparse.ArgumentTypeError as exc:
        raise NameServerError(f"{path}: dns: {exc}") from exc
    return server


def name_servers(args: argparse.Namespace, cwd: Path | None = None) -> NameServers:
    """``--dns``, else ``--lab``, else ``lab-run/lab.json`` in ``cwd`` (when it
    names a DNS server), else the system's resolver."""
    if args.dns:
        servers = tuple(server for group in args.dns for server in group)
        return NameServers(servers, "--dns")
    if args.lab is not None:
        return NameServers((lab_name_server(args.lab),), str(args.lab))
    from daemons.lab.cli import DEFAULT_DIR  # the directory `sipcluster lab` uses

    found = (cwd if cwd is not None else Path.cwd()) / DEFAULT_DIR / LAB_DESCRIPTION
    if found.is_file():
        try:
            return NameServers((lab_name_server(found),), str(found))
        except NameServerError:
            pass  # a lab without its DNS: nothing to take from it
    return NameServers(None, "system")


class Uac:
    """One UAC session: an endpoint listening on an ephemeral port, requests built here."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log = get_logger("sip_uac")
        scheme = args.uri.partition(":")[0].lower()
        # RFC 3263 §4.1: a sips URI without a transport goes over TLS
        self.transport = (args.transport or ("TLS" if scheme == "sips" else "UDP")).upper()
        self.endpoint: SipEndpoint | None = None
        self.remote_bye = asyncio.Event()
        self.call_id = f"{secrets.token_hex(10)}@sipcluster"
        self.from_tag = secrets.token_hex(6)
        self.cseq = 0
        self.digest = (DigestClient(args.user, password=args.password)
                       if getattr(args, "user", None) and getattr(args, "password", None)
                       else None)
        self.name_servers = name_servers(args)

    async def start(self) -> SipEndpoint:
        timers = TimerSettings(t1=self.args.t1) if self.args.t1 else None
        if self.args.insecure:
            self.log.warning("sip_tls_verification_disabled")
        tls = client_ssl_context(self.args.ca_file, insecure=self.args.insecure)
        resolver = self.name_servers.resolver(self.args.bind)
        self.log.debug("sip_dns_servers", origin=self.name_servers.origin,
                       servers=[f"{h}:{p}" for h, p in self.name_servers.servers or ()],
                       source=resolver.source)
        ep = SipEndpoint(self.handle, timers=timers, user_agent="sipcluster-uac",
                         logger=self.log, client_ssl_context=tls, resolver=resolver)
        await ep.listen_pair(self.args.bind)
        self.endpoint = ep
        return ep

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        method = incoming.method
        if method == "BYE":
            self.remote_bye.set()
            return incoming.response(200)
        if method == "OPTIONS":
            return incoming.response(200, headers=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")])
        if method == "ACK":
            return None
        return incoming.response(501)

    async def destination(self, uri: str) -> Destination | str:
        if self.args.proxy:
            return Destination.parse(self.args.proxy, self.transport)
        if self.args.transport:
            assert self.endpoint is not None
            targets = await self.endpoint.resolve(uri, default_transport=self.transport)
            if not targets:
                raise TransportError(f"no target for {uri}")
            return targets[0]
        return uri

    def build(self, method: str, uri: str, *, body: bytes = b"",
              extra: list[tuple[str, str]] | None = None) -> Request:
        assert self.endpoint is not None
        self.cseq += 1
        from_uri = self.args.from_uri or (
            f"sip:{self.args.user}@{parse_uri(uri).host}" if self.args.user
            else "sip:sipcluster@invalid")
        headers = Headers([
            ("From", f"<{from_uri}>;tag={self.from_tag}"),
            ("To", f"<{uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
        ])
        target = parse_uri(uri).host
        if method in ("INVITE", "REGISTER", "OPTIONS"):
            contact = self.endpoint.contact_uri(self.transport, self.args.user, target)
            if uri[:5].lower() == "sips:":
                # §8.1.1.8: a SIPS Request-URI needs a SIPS Contact
                contact = "sips:" + contact[4:].replace(";transport=tls", "")
            headers.add("Contact", f"<{contact}>")
        for name, value in extra or []:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", "application/sdp")
        return Request(method, uri, headers=headers, body=body)

    async def send(self, method: str, uri: str, *, body: bytes = b"",
                   on_provisional: Any = None) -> tuple[Request, Response]:
        """Send and, once, answer a digest challenge (§22.2).

        The transaction layer ACKs the 401/407 to an INVITE itself (§17.1.1.3).
        """
        assert self.endpoint is not None
        dest = await self.destination(uri)
        request = self.build(method, uri, body=body)
        response = await self.endpoint.request(request, dest, on_provisional=on_provisional)
        if response.status in (401, 407) and self.digest is not None:
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            answer = "Authorization" if response.status == 401 else "Proxy-Authorization"
            try:
                credentials = self.digest.authorize(
                    response.headers.get_all(header), method=method, uri=uri, body=body)
            except DigestError as exc:
                self.log.warning("sip_auth_unanswerable", reason=str(exc))
                return request, response
            request = self.build(method, uri, body=body, extra=[(answer, credentials)])
            response = await self.endpoint.request(request, dest,
                                                   on_provisional=on_provisional)
        return request, response


async def _options(args: argparse.Namespace) -> int:
    uac = Uac(args)
    ep = await uac.start()
    try:
        started = time.monotonic()
        _, response = await uac.send("OPTIONS", args.uri)
        elapsed = (time.monotonic() - started) * 1000
        print(f"{response.status} {response.reason} ({elapsed:.1f} ms)")
        return 0 if 200 <= response.status < 300 else 1
    except (TransportError, SipError) as exc:
        print(f"error: {exc}")
        return 1
    finally:
        await ep.close()


async def _call(args: argparse.Namespace) -> int:
    uac = Uac(args)
    ep = await uac.start()
    rtp = reserve_rtp_port(args.bind if args.bind not in ("0.0.0.0", "::") else "127.0.0.1")
    try:
        host = rtp.getsockname()[0]
        offer = sdp_offer(host, rtp.getsockname()[1], int(time.time()))

        def provisional(resp: Response) -> None:
            print(f"{resp.status} {resp.reason}")

        invite, response = await uac.send("INVITE", args.uri, body=offer,
                                          on_provisional=provisional)
        print(f"{response.status} {response.reason}")
        if not 200 <= response.status < 300:
            return 1
        await ep.send_ack(invite, response)
        dialog = Dialog.create_uac(invite, response)
        try:
            await asyncio.wait_for(uac.remote_bye.wait(), args.duration)
            print("BYE received")
            return 0
        except TimeoutError:
            pass
        via_dest: Destination | str = await uac.destination(dialog.next_hop())
        bye = dialog.create_request("BYE")
        for name in ("Authorization", "Proxy-Authorization"):
            for value in invite.headers.get_lines(name):
                bye.headers.add(name, value)
        result = await ep.request(bye, via_dest)
        print(f"BYE: {result.status} {result.reason}")
        return 0 if 200 <= result.status < 300 else 1
    except (TransportError, SipError) as exc:
        print(f"error: {exc}")
        return 1
    finally:
        rtp.close()
        await ep.close()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="target SIP URI, e.g. sip:1001@127.0.0.1:5060")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"),
                        help="force a transport (default: RFC 3263 selection)")
    parser.add_argument("--proxy", metavar="HOST:PORT", help="send via this outbound proxy")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="local address to use (DNS queries leave from it too)")
    parser.add_argument("--dns", type=dns_servers_arg, action="append", metavar="HOST:PORT",
                        help="name server to locate the target with (RFC 3263); repeat or "
                             "give a comma list (default: the lab's DNS from --lab or "
                             "./lab-run/lab.json, else the system's resolver)")
    parser.add_argument("--lab", type=Path, metavar="DIR/lab.json",
                        help="use the DNS server of this lab (its lab.json or directory)")
    parser.add_argument("--from", dest="from_uri", help="From URI (default from --user)")
    parser.add_argument("--user", help="digest user name (and From user)")
    parser.add_argument("--password", help="digest password")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="PEM CA certificates to verify a TLS server against "
                             "(default: the system's)")
    parser.add_argument("--insecure", action="store_true",
                        help="TLS without verifying the server certificate (lab use only)")
    parser.add_argument("--t1", type=float, default=None, help="RFC 3261 T1 in seconds")
    parser.add_argument("--log-level", default="warning")


def add_parser(subparsers: Any) -> None:
    options = subparsers.add_parser(
        "options", help="send an OPTIONS ping and print the status (exit 0 on 2xx)",
        description="Send OPTIONS to URI (RFC 3261 §11); prints the status line and the "
                    "round-trip time. Exit code 0 for a 2xx answer, 1 otherwise.")
    _common(options)
    options.set_defaults(run=run, action="options")
    call = subparsers.add_parser(
        "call", help="place a call: INVITE, ACK, wait, BYE (exit 0 on success)",
        description="Call URI: INVITE with an SDP offer, answer a 401/407 digest challenge "
                    "(--user/--password), ACK the 2xx, hold --duration seconds, then BYE. "
                    "Exit code 0 when answered and hung up cleanly, 1 otherwise.")
    _common(call)
    call.add_argument("--duration", type=float, default=1.0, metavar="SECONDS",
                      help="how long to hold the call before BYE")
    call.set_defaults(run=run, action="call")


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, fmt="console")
    action = _call if args.action == "call" else _options
    try:
        return asyncio.run(action(args))
    except NameServerError as exc:
        print(f"sip {args.action}: {exc}", file=sys.stderr)
        return 2
