"""The SIP Proxies as a node sees them (guide: "Configuring the SIP Outbound
Proxy DN", "Configuring DNS Records"; docs/node.md, "Reaching phones").

The SIP Outbound Proxy DN's ``contact`` is the geo-aware SRV name of the
proxies. A node resolves it by RFC 3263 (§4.1-§4.2: SRV priority, then
weight) with queries sent *from the node's own address*, so the geo-aware DNS
answers with the node's data centre's proxies first (priority 10) and the
other data centres' last (priority 200). Every ``oos-check`` seconds it sends
OPTIONS to each target; a target with no answer ``oos-force`` seconds after
a check is out of service, the first answer puts it back (the guide's
active out-of-service detection, the same rule as the proxies apply to the
nodes: :class:`protocols.sip.oos.OosMonitor`). :meth:`OutboundProxies.choose`
gives the first target in RFC 3263 order that is in service.

The same watch keeps the Trunk DNs' service state (:class:`Trunks`: guide,
"Configuring Trunk DNs", ``find-trunk-by-location``).

Requests go over the transport the contact names (``;transport=tcp`` in the
lab; UDP without one, RFC 3263 §4.1 otherwise): a proxy recognises a node by
the source address of its requests, and both the node's UDP socket and its
outgoing TCP connections leave from the node's host.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemons.cluster.config import ClusterConfig, DnType
from daemons.cluster.model import NODE_HEADER
from daemons.runtime.dns import SipResolver
from daemons.runtime.sip_endpoint import Destination, SipEndpoint
from protocols.sip.errors import ParseError, SipError
from protocols.sip.message import Request, Response
from protocols.sip.oos import NodeHealth, NodeInput, NodeState, OosMonitor
from protocols.sip.uri import format_host, parse_uri

__all__ = ["NODE_HEADER", "OutboundProxies", "PeerWatch", "Trunk", "Trunks", "answered"]


#: Transport of node -> proxy requests when the contact names none.
DEFAULT_TRANSPORT = "UDP"


def answered(response: Response) -> bool:
    """A response that came from the peer, not one the endpoint made up after a
    timeout or a transport failure (those carry no To tag, RFC 3261 §8.1.3.1)."""
    return response.to.tag is not None or response.status not in (408, 503)


def _options(target: Destination, name: str, host: str) -> Request:
    uri = f"sip:{format_host(target.host)}:{target.port}"
    tag = hashlib.blake2b(f"{name}{target}{asyncio.get_running_loop().time()}".encode(),
                          digest_size=5).hexdigest()
    req = Request("OPTIONS", uri)
    h = req.headers
    h.add("From", f"<sip:{name}@{format_host(host)}>;tag={tag}")
    h.add("To", f"<{uri}>")
    h.add("Call-ID", f"oos-{tag}@{host}")
    h.add("CSeq", "1 OPTIONS")
    return req


class PeerWatch:
    """OPTIONS every ``oos_check`` s to a changing set of destinations, with an
    :class:`OosMonitor` deciding who is in service (sans-I/O rules, asyncio here)."""

    def __init__(self, endpoint: Callable[[], SipEndpoint], *, name: str, host: str,
                 oos_check: float, oos_force: float, log: Any) -> None:
        self._endpoint = endpoint
        self.name = name
        self.host = host
        self.monitor = OosMonitor([], oos_check=oos_check, oos_force=oos_force)
        self.destinations: dict[str, Destination] = {}
        self.log = log
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def key(dest: Destination) -> str:
        return f"{dest.transport.lower()}:{format_host(dest.host)}:{dest.port}"

    def watch(self, dests: list[Destination]) -> None:
        """Watch exactly ``dests`` from now on (states of known ones are kept)."""
        keys = {self.key(d): d for d in dests}
        for key in list(self.monitor.nodes):
            if key not in keys:
                del self.monitor.nodes[key]
        for key in keys:
            self.monitor.nodes.setdefault(key, NodeHealth(key))
        self.destinations = keys

    def state(self, dest: Destination) -> NodeState | None:
        h = self.monitor.nodes.get(self.key(dest))
        return h.state if h is not None else None

    def usable(self, dest: Destination) -> bool:
        return self.monitor.usable(self.key(dest))

    def step(self, now: float) -> float:
        """Send the checks that are due, apply oos-force; seconds to the next step."""
        for key in self.monitor.due(now):
            dest = self.destinations.get(key)
            if dest is not None:
                task = asyncio.ensure_future(self._probe(key, dest))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for key in self.monitor.tick(now):
            self.log.warning("sip_peer_out_of_service", peer=key, node=self.name)
        return max(0.05, min(1.0, self.monitor.next_deadline(now) - now))

    async def _probe(self, key: str, dest: Destination) -> None:
        """One check. Over UDP the OPTIONS transaction retransmits until it is
        answered or times out; over TCP/TLS a refused or reset connection fails at
        once, so the check is tried again (0.5 s, doubling to 2 s) while its
        ``oos-force`` window is open: a proxy that starts listening a moment after
        the node is in service at once, as over UDP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.monitor.oos_force
        delay = 0.5
        while True:
            resp: Response | None = None
            try:
                resp = await self._endpoint().request(_options(dest, self.name, self.host), dest)
            except (SipError, OSError, ParseError) as exc:
                self.log.debug("sip_peer_check_failed", peer=key, reason=str(exc))
            if key not in self.monitor.nodes:
                return
            if resp is not None and answered(resp):
                break
            if dest.transport == "UDP" or loop.time() + delay > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)
        was = self.monitor.nodes[key].state
        if self.monitor.answered(key, resp.status, asyncio.get_running_loop().time()) \
                and was is NodeState.OUT_OF_SERVICE:
            self.log.info("sip_peer_back_in_service", peer=key, status=resp.status)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class OutboundProxies:
    """The SIP Outbound Proxy DN's targets, in RFC 3263 order, with their service state."""

    def __init__(self, contact: str, resolver: SipResolver, watch: PeerWatch, *,
                 log: Any) -> None:
        uri = parse_uri(contact if contact.startswith(("sip:", "sips:")) else f"sip:{contact}")
        self.uri = uri
        #: what the requests to the proxies go over (the contact's transport parameter)
        self.transport = (uri.params.get("transport") or DEFAULT_TRANSPORT).upper()
        self.resolver = resolver
        self.watch = watch
        self.targets: list[Destination] = []
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._resolved_at: float | None = None

    async def refresh(self) -> list[Destination]:
        """Resolve the contact again (the resolver caches by TTL); keep the old
        targets when DNS fails."""
        try:
            found = await self.resolver.resolve(
                self.uri.host, port=self.uri.port, transport=self.transport)
        except (OSError, ValueError, ParseError) as exc:
            self.log.warning("outbound_proxy_resolve_failed", host=self.uri.host,
                             reason=str(exc))
            return self.targets
        targets = [Destination(self.transport, t.host_ip, t.port) for t in found]
        if not targets:
            self.log.warning("outbound_proxy_no_targets", host=self.uri.host)
            return self.targets
        # RFC 2782 weights reshuffle equal priorities on every resolution: keep the
        # order we have while the set is the same, so a node does not flap between proxies
        if set(targets) != set(self.targets):
            self.log.info("outbound_proxy_targets", host=self.uri.host,
                          targets=[PeerWatch.key(t) for t in targets])
            self.targets = targets
            self.watch.watch(targets)
        return self.targets

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self._resolved_at is None or now - self._resolved_at >= \
                    self.watch.monitor.oos_check or not self.targets:
                await self.refresh()
                self._resolved_at = loop.time()
            await asyncio.sleep(self.watch.step(loop.time()))

    async def choose(self) -> Destination | None:
        """The first in-service target in RFC 3263 order; before any check has been
        answered, the first that is not known to be out of service."""
        if not self.targets:
            await self.refresh()
        for dest in self.targets:
            if self.watch.usable(dest):
                return dest
        for dest in self.targets:
            if self.watch.state(dest) is not NodeState.OUT_OF_SERVICE:
                return dest
        return None

    def out_of_service(self, host: str, port: int) -> bool:
        """True when ``host:port`` is a target known to be out of service (or alive
        but refusing traffic)."""
        for dest in self.targets:
            if dest.host == host and dest.port == port:
                state = self.watch.state(dest)
                return state is NodeState.OUT_OF_SERVICE or (
                    state is NodeState.IN_SERVICE and not self.watch.usable(dest))
        return False

    def status(self) -> dict[str, Any]:
        return {"contact": str(self.uri), "transport": self.transport, "targets": [
            {"target": PeerWatch.key(d), "usable": self.watch.usable(d),
             **self.watch.monitor.nodes[PeerWatch.key(d)].as_dict()}
            for d in self.targets if PeerWatch.key(d) in self.watch.monitor.nodes]}

    async def close(self) -> None:
        self.watch.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


@dataclass(frozen=True)
class Trunk:
    """A Trunk (or Trunk Group) DN as a node uses it (guide: "Configuring Trunk DNs")."""

    name: str
    contact: str
    destination: Destination | None  # None: the contact's host is a name (RFC 3263)
    geo_location: str | None
    prefix: str
    priority: int
    oos_error_check: bool
    watch: PeerWatch | None  # active out-of-service detection (oos-check > 0)

    def uri(self, number: str) -> str:
        """The Request-URI of a call to ``number`` through this trunk."""
        if self.destination is not None:
            d = self.destination
            params = f";transport={d.transport.lower()}" if d.transport != "UDP" else ""
            return f"sip:{number}@{format_host(d.host)}:{d.port}{params}"
        text = self.contact if self.contact.startswith(("sip:", "sips:")) else \
            f"sip:{self.contact}"
        uri = parse_uri(text)
        return text.replace(f"sip:{uri.user}@" if uri.user else "sip:", f"sip:{number}@", 1)

    def state(self) -> NodeState | None:
        if self.watch is None or self.destination is None:
            return None
        return self.watch.state(self.destination)


class Trunks:
    """The switch's trunks and the order a call to an external number tries them.

    ``@NAME`` in a dial-plan answer names one trunk (or trunk group). ``@trunk``
    takes every Trunk DN whose ``prefix`` begins the number (no prefix: any
    number) and is not out of service; with ``find-trunk-by-location`` those of
    the node's geo-location come first, then the others (none of them with
    ``enable-strict-location-match``); then by ``priority`` (lower first) and the
    longer prefix. ``oos-check`` / ``oos-force`` watch each trunk with OPTIONS
    (:class:`PeerWatch`); with ``oos-error-check`` a 408 or 5xx to a call puts the
    trunk out of service at once, until it answers a check again.
    """

    def __init__(self, config: ClusterConfig, app_name: str, endpoint: Callable[[], SipEndpoint],
                 *, host: str, log: Any) -> None:
        tserver = config.tserver_for(app_name)
        self.geo_location = config.applications[app_name].geo_location
        self.by_location = tserver.find_trunk_by_location
        self.strict = tserver.enable_strict_location_match
        self.log = log
        self.trunks: dict[str, Trunk] = {}
        self.kinds: dict[str, DnType] = {}
        self._task: asyncio.Task[None] | None = None
        for dn in config.dns.values():
            if dn.type not in (DnType.TRUNK, DnType.TRUNK_GROUP) or not dn.contact:
                continue
            destination = _ip_destination(dn.contact)
            check = int(dn.options.get("oos-check") or 0)
            watch: PeerWatch | None = None
            if check > 0 and destination is not None:
                watch = PeerWatch(endpoint, name=app_name, host=host, oos_check=float(check),
                                  oos_force=float(dn.options.get("oos-force") or check), log=log)
                watch.watch([destination])
            self.trunks[dn.number] = Trunk(
                name=dn.number, contact=dn.contact, destination=destination,
                geo_location=dn.geo_location, prefix=str(dn.options.get("prefix") or ""),
                priority=int(dn.options.get("priority") or 0),
                oos_error_check=bool(dn.options.get("oos-error-check")), watch=watch)
            self.kinds[dn.number] = dn.type

    def candidates(self, number: str, via: str | None) -> list[Trunk]:
        """The trunks a call to ``number`` tries, in order (see the class doc)."""
        if via and via != "trunk":
            trunk = self.trunks.get(via)
            if trunk is None or trunk.state() is NodeState.OUT_OF_SERVICE:
                return []
            return [trunk]
        found = [t for t in self.trunks.values()
                 if self.kinds[t.name] is DnType.TRUNK and number.startswith(t.prefix)
                 and t.state() is not NodeState.OUT_OF_SERVICE]
        if self.strict and self.geo_location is not None:
            found = [t for t in found if t.geo_location == self.geo_location]

        def rank(t: Trunk) -> tuple[bool, bool, int, int, str]:
            elsewhere = self.by_location and t.geo_location != self.geo_location
            unknown = t.state() is not NodeState.IN_SERVICE and t.watch is not None
            return (elsewhere, unknown, t.priority, -len(t.prefix), t.name)

        return sorted(found, key=rank)

    def by_address(self, host: str, kind: DnType = DnType.TRUNK) -> Trunk | None:
        """The Trunk DN (or, with ``kind``, Trunk Group DN) whose contact is
        ``host``: where a call from that address came in (its calling profile
        applies to the call's dial-plan query)."""
        for trunk in self.trunks.values():
            if trunk.destination is not None and trunk.destination.host == host \
                    and self.kinds[trunk.name] is kind:
                return trunk
        return None

    def failed(self, trunk: Trunk, status: int, now: float) -> None:
        """A call through ``trunk`` got ``status`` (408 / 5xx): with ``oos-error-check``
        the trunk is out of service until it answers a check again."""
        if not trunk.oos_error_check or trunk.watch is None or trunk.destination is None:
            return
        health = trunk.watch.monitor.nodes.get(PeerWatch.key(trunk.destination))
        if health is not None and health.state is not NodeState.OUT_OF_SERVICE:
            health.apply(NodeInput.OOS_FORCE, now)
            self.log.warning("trunk_out_of_service", trunk=trunk.name, status=status,
                             reason="oos-error-check")

    def start(self) -> None:
        if any(t.watch is not None for t in self.trunks.values()):
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = 1.0
            for trunk in self.trunks.values():
                if trunk.watch is not None:
                    delay = min(delay, trunk.watch.step(loop.time()))
            await asyncio.sleep(delay)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for t in self.trunks.values():
            state = t.state()
            out.append({"trunk": t.name, "type": self.kinds[t.name].value, "contact": t.contact,
                        "geo_location": t.geo_location, "prefix": t.prefix,
                        "priority": t.priority,
                        "state": state.value if state is not None else "not-checked"})
        return out

    async def close(self) -> None:
        for trunk in self.trunks.values():
            if trunk.watch is not None:
                trunk.watch.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def _ip_destination(contact: str) -> Destination | None:
    """``HOST[:PORT]`` or a SIP URI whose host is an IP address, as a Destination."""
    text = contact if contact.startswith(("sip:", "sips:")) else f"sip:{contact}"
    try:
        uri = parse_uri(text)
        ipaddress.ip_address(uri.host)
    except (ParseError, ValueError):
        return None
    transport = (uri.params.get("transport") or "udp").upper()
    return Destination(transport, uri.host, uri.port or 5060)
