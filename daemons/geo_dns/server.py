"""An authoritative DNS server over UDP and TCP that answers by the client's
source address (views, see :mod:`daemons.geo_dns.zones`).

:meth:`GeoDnsServer.respond` is the whole answering logic, bytes in and bytes
out, with no socket; the asyncio protocols around it only move datagrams and
length-prefixed TCP messages (RFC 1035 §4.2, RFC 7766).

Behaviour, by RFC:

* answers carry AA (RFC 1035 §4.1.1); RA is never set (no recursion);
* a name that does not exist: NXDOMAIN; a name without the asked type
  (including an empty non-terminal such as ``_udp.spx-srv``): NOERROR with no
  answer; both with the zone's SOA in the authority section, its TTL the
  lesser of the SOA's TTL and MINIMUM (RFC 2308 §3);
* a name in no zone of the client's view: REFUSED (RFC 1035 §4.1.1, RFC 8906 §3.1.4);
* a query that does not parse, or has a question count other than one:
  FORMERR (RFC 1035 §4.1.1, RFC 6891 §7 for a bad OPT); shorter than a header
  or with QR set: dropped. Each is counted and logged, and serving goes on;
* an opcode other than QUERY: NOTIMP; EDNS version above 0: BADVERS
  (RFC 6891 §6.1.3); zone transfers: REFUSED;
* EDNS0 (RFC 6891): the UDP answer may be as large as the client's advertised
  payload, capped at ``max_udp_payload`` (1232 by default, RFC 9715 / DNS flag
  day 2020); without EDNS 512 bytes (RFC 1035 §4.2.1). A bigger answer is cut
  at an RRset boundary with TC set (RFC 2181 §9), and the client retries over TCP;
* additional data: the addresses of SRV targets and NS hosts, and the SRV sets
  NAPTR ``s`` records point at, when they are in the same zone (RFC 2782,
  RFC 3403 §4.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone

from daemons.geo_dns.zones import View, select_view
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics

__all__ = ["GeoDnsServer", "Outcome"]

#: Linux socket(7): SO_RCVBUF past net.core.rmem_max, for a privileged process
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: each UDP socket's receive buffer unless configured: room for a burst of queries
UDP_RECEIVE_BUFFER = 8 * 1024 * 1024

_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_MAX_CNAME_CHAIN = 8
#: What dnspython raises on wire data it cannot parse.
_PARSE_ERRORS = (dns.exception.DNSException, ValueError, IndexError, struct.error)


class Outcome:
    """What :meth:`GeoDnsServer.respond` did with one message, for logs and metrics."""

    __slots__ = ("qname", "qtype", "rcode", "truncated", "view", "wire")

    def __init__(
        self,
        wire: bytes | None,
        *,
        view: str = "-",
        rcode: str = "-",
        qname: str = "",
        qtype: str = "",
        truncated: bool = False,
    ) -> None:
        self.wire = wire
        self.view = view
        self.rcode = rcode
        self.qname = qname
        self.qtype = qtype
        self.truncated = truncated


class _ZoneIndex:
    """Names of a zone including the empty non-terminals between them and the origin."""

    def __init__(self, zone: dns.zone.Zone) -> None:
        self.zone = zone
        origin = zone.origin
        assert origin is not None
        self.origin = origin
        names: set[dns.name.Name] = set()
        for name in zone.nodes:
            n = name
            while n.is_subdomain(origin) and n not in names:
                names.add(n)
                if n == origin:
                    break
                n = n.parent()
        self.names = names
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        if soa is None:
            raise ValueError(f"zone {origin} has no SOA")
        neg_ttl = min(soa.ttl, soa[0].minimum)
        self.negative_soa = dns.rrset.from_rdata_list(origin, neg_ttl, list(soa))

    def rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        rds = self.zone.get_rdataset(name, rdtype)
        if rds is None:
            return None
        return dns.rrset.from_rdata_list(name, rds.ttl, list(rds))


class GeoDnsServer:
    """Answers from the view that matches the client's source address.

    ``views`` come from :func:`daemons.geo_dns.zones.compile_views`;
    ``metrics`` gets ``geo_dns_queries_total{view,rcode,transport}``,
    ``geo_dns_malformed_total{transport}``, ``geo_dns_dropped_total{reason}``
    and ``geo_dns_truncated_total``.
    """

    def __init__(
        self,
        views: Sequence[View],
        *,
        metrics: Metrics | None = None,
        max_udp_payload: int = 1232,
        tcp_idle_timeout: float = 10.0,
        udp_receive_buffer: int = UDP_RECEIVE_BUFFER,
    ) -> None:
        self.log = get_logger("geo_dns")
        self.udp_receive_buffer = udp_receive_buffer
        self.max_udp_payload = max(512, max_udp_payload)
        self.tcp_idle_timeout = tcp_idle_timeout
        self._views: list[View] = []
        self._index: dict[int, _ZoneIndex] = {}
        self.set_views(views)
        m = metrics if metrics is not None else Metrics(namespace="sipcluster")
        self.queries = m.counter(
            "geo_dns_queries", "DNS queries answered, by view and rcode",
            ("view", "rcode", "transport"),
        )
        self.malformed = m.counter(
            "geo_dns_malformed", "queries that did not parse (FORMERR)", ("transport",)
        )
        self.dropped = m.counter("geo_dns_dropped", "messages dropped unanswered", ("reason",))
        self.truncated = m.counter("geo_dns_truncated", "UDP answers cut with TC set")
        self.kernel_drops = m.gauge(
            "geo_dns_udp_receive_drops",
            "queries the kernel dropped because the socket's receive buffer was full "
            "(/proc/net/udp drops of the listening sockets)")
        self.kernel_drops.set_function(self._kernel_drops)
        self._inodes: list[int] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []

    def set_views(self, views: Sequence[View]) -> None:
        """Serve ``views`` from now on (a reload)."""
        index: dict[int, _ZoneIndex] = {}
        for view in views:
            for zone in view.zones.values():
                index.setdefault(id(zone), _ZoneIndex(zone))
        self._views = list(views)
        self._index = index

    @property
    def views(self) -> list[View]:
        return list(self._views)

    # ------------------------------------------------------------ answering

    def respond(
        self, wire: bytes, source: str, transport: str = "udp", destination: str | None = None
    ) -> Outcome:
        """The answer to one message from ``source`` (no I/O); ``wire`` None means drop.

        ``destination`` is the address the query reached (the listener's); it
        chooses the view for a client that belongs to no data centre.
        """
        if len(wire) < _HEADER.size:
            return self._drop("short", source, transport, len(wire))
        qid, flags, *_ = _HEADER.unpack_from(wire)
        if flags & _QR:
            return self._drop("response", source, transport, len(wire))
        try:
            query = dns.message.from_wire(wire)
        except _PARSE_ERRORS as exc:
            return self._formerr(qid, flags, source, transport, exc, destination)
        if len(query.question) != 1:
            return self._formerr(qid, flags, source, transport,
                                 ValueError(f"{len(query.question)} questions"), destination)
        outcome = self._answer(query, source, transport, destination)
        self.queries.labels(outcome.view, outcome.rcode, transport).inc()
        if outcome.truncated:
            self.truncated.inc()
        return outcome

    def _drop(self, reason: str, source: str, transport: str, size: int) -> Outcome:
        self.dropped.labels(reason).inc()
        self.log.info("dns_query_dropped", reason=reason, peer=source, transport=transport,
                      size=size)
        return Outcome(None)

    def _formerr(
        self, qid: int, flags: int, source: str, transport: str, exc: BaseException,
        destination: str | None = None,
    ) -> Outcome:
        self.malformed.labels(transport).inc()
        view = select_view(self._views, source, destination)
        view_name = view.name if view is not None else "-"
        self.queries.labels(view_name, "FORMERR", transport).inc()
        self.log.warning("dns_query_malformed", peer=source, transport=transport,
                         error=f"{type(exc).__name__}: {exc}")
        # header only: echo ID, opcode and RD (RFC 1035 §4.1.1)
        out_flags = _QR | (flags & 0x7800) | (flags & dns.flags.RD) | dns.rcode.FORMERR
        return Outcome(_HEADER.pack(qid, out_flags, 0, 0, 0, 0), view=view_name, rcode="FORMERR")

    def _answer(
        self, query: dns.message.Message, source: str, transport: str, destination: str | None
    ) -> Outcome:
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        view = select_view(self._views, source, destination)
        outcome = Outcome(
            None,
            view=view.name if view is not None else "-",
            qname=qname.to_text(),
            qtype=dns.rdatatype.to_text(qtype),
        )
        response = dns.message.make_response(query, our_payload=self.max_udp_payload)
        response.flags &= ~dns.flags.AA
        if query.edns > 0:
            response.use_edns(0, payload=self.max_udp_payload)
            response.set_rcode(dns.rcode.BADVERS)
        elif query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif (
            view is None
            or question.rdclass != dns.rdataclass.IN
            or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
            or (zone := view.zone_for(qname)) is None
        ):
            response.set_rcode(dns.rcode.REFUSED)
        else:
            response.flags |= dns.flags.AA
            self._lookup(self._index[id(zone)], qname, qtype, response)
        outcome.rcode = dns.rcode.to_text(response.rcode())
        outcome.wire, outcome.truncated = self._render(query, response, transport)
        self.log.debug("dns_query", peer=source, view=outcome.view, qname=outcome.qname,
                       qtype=outcome.qtype, rcode=outcome.rcode, transport=transport)
        return outcome

    def _lookup(
        self,
        index: _ZoneIndex,
        qname: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
        response: dns.message.Message,
    ) -> None:
        """RFC 1034 §4.3.2 step 3 within one zone (no delegations, no wildcards)."""
        zone = index.zone
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            node = zone.get_node(name)
            if node is None:
                if name not in index.names:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(index.negative_soa)
                return
            if qtype == dns.rdatatype.ANY:
                for rds in node.rdatasets:
                    response.answer.append(dns.rrset.from_rdata_list(name, rds.ttl, list(rds)))
                return
            rrset = index.rrset(name, qtype)
            if rrset is not None:
                response.answer.append(rrset)
                self._additional(index, rrset, response)
                return
            cname = index.rrset(name, dns.rdatatype.CNAME)
            if cname is None:
                response.authority.append(index.negative_soa)  # NODATA
                return
            response.answer.append(cname)
            target: Any = cname[0]
            name = target.target
            if not name.is_subdomain(index.origin):
                return  # the resolver follows it elsewhere
        response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop in the zone

    def _additional(
        self, index: _ZoneIndex, rrset: dns.rrset.RRset, response: dns.message.Message
    ) -> None:
        seen: set[tuple[dns.name.Name, int]] = {(rrset.name, rrset.rdtype)}

        def add(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
            if (name, rdtype) in seen or not name.is_subdomain(index.origin):
                return None
            seen.add((name, rdtype))
            extra = index.rrset(name, rdtype)
            if extra is not None:
                response.additional.append(extra)
            return extra

        def addresses(name: dns.name.Name) -> None:
            add(name, dns.rdatatype.A)
            add(name, dns.rdatatype.AAAA)

        for rd in rrset:
            r: Any = rd
            if rrset.rdtype == dns.rdatatype.SRV:
                addresses(r.target)
            elif rrset.rdtype == dns.rdatatype.NS:
                addresses(r.target)
            elif rrset.rdtype == dns.rdatatype.NAPTR and r.flags.lower() == b"s":
                srv = add(r.replacement, dns.rdatatype.SRV)
                for srv_rd in srv or ():
                    s: Any = srv_rd
                    addresses(s.target)

    def _render(
        self, query: dns.message.Message, response: dns.message.Message, transport: str
    ) -> tuple[bytes, bool]:
        if transport == "tcp":
            limit = 65535
        elif query.edns >= 0:
            limit = max(512, min(query.payload, self.max_udp_payload))
        else:
            limit = 512
        wire = response.to_wire(max_size=limit, prefer_truncation=True)
        truncated = bool(_HEADER.unpack_from(wire)[1] & dns.flags.TC)
        return wire, truncated

    # ------------------------------------------------------------ sockets

    async def start(self, listen: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on UDP and TCP at each ``(host, port)``; port 0 picks one for both.

        Returns the bound addresses in order.
        """
        loop = asyncio.get_running_loop()
        for host, port in listen:
            # port 0: the OS picks a UDP port, which may be taken for TCP; pick again
            for attempt in range(1 if port else 20):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, port)
                )
                sock = transport.get_extra_info("sockname")
                bound = (str(sock[0]), int(sock[1]))
                self._size_receive_buffer(transport, bound)
                try:
                    server = await asyncio.start_server(
                        self._serve_tcp, bound[0], bound[1], reuse_address=True
                    )
                except OSError:
                    transport.close()
                    if port == 0 and attempt < 19:
                        continue
                    await self.stop()
                    raise
                break
            self._udp.append(transport)
            self._tcp.append(server)
            self.bound.append(bound)
            self.log.info("dns_listening", host=bound[0], port=bound[1])
        return list(self.bound)

    def _size_receive_buffer(self, transport: asyncio.DatagramTransport,
                             bound: tuple[str, int]) -> None:
        """A burst of queries waits in the kernel while the loop answers: give the
        socket room for it (SO_RCVBUFFORCE when allowed, else SO_RCVBUF, which the
        kernel caps at net.core.rmem_max)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        wanted = self.udp_receive_buffer
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with contextlib.suppress(OSError):
            self._inodes.append(os.fstat(sock.fileno()).st_ino)
        level = "info" if got >= wanted else "warning"
        getattr(self.log, level)("dns_receive_buffer", host=bound[0], port=bound[1],
                                 wanted=wanted, bytes=got)

    def _kernel_drops(self) -> float:
        """Sum of the kernel's drop counters of our UDP sockets."""
        if not self._inodes:
            return 0.0
        inodes = {str(i) for i in self._inodes}
        total = 0
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as f:
                    next(f, None)
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 13 and fields[9] in inodes:
                            total += int(fields[12])
            except OSError:
                continue
        return float(total)

    async def stop(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for task in list(self._tcp_tasks):
            task.cancel()
        for task in list(self._tcp_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._udp.clear()
        self._tcp.clear()
        self.bound.clear()
        self._inodes.clear()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766 §6.2: several queries per connection, closed when idle."""
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        local = writer.get_extra_info("sockname")
        destination = str(local[0]) if local else None
        try:
            while True:
                try:
                    async with asyncio.timeout(self.tcp_idle_timeout):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        wire = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                outcome = self.respond(wire, source, "tcp", destination)
                if outcome.wire is None:
                    return  # nothing to answer on a stream: close it
                writer.write(len(outcome.wire).to_bytes(2, "big") + outcome.wire)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            self.log.debug("dns_tcp_closed", peer=source, error=str(exc))
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: GeoDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.destination: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        local = transport.get_extra_info("sockname")
        host = str(local[0]) if local else ""
        # a listener on one address knows where every query reached it
        self.destination = None if host in ("", "0.0.0.0", "::") else host

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        outcome = self.server.respond(data, str(addr[0]), "udp", self.destination)
        if outcome.wire is not None and self.transport is not None:
            self.transport.sendto(outcome.wire, addr)

    def error_received(self, exc: Exception) -> None:
        self.server.log.debug("dns_udp_error", error=str(exc))
