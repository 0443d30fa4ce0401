"""``sipcluster sip-proxy --config FILE --name APP``: the SIP edge of a data
centre (docs/sip-proxy.md; guide: "SIP Proxy", "Configuring SIP Proxy").

The daemon reads its entry in the cluster file (host, ``sip-port``,
``replication-port``, ``geo-location``, ``[sipproxy]`` options ``oos-check``,
``oos-force``, ``registrar-default-timeout``, ``feature-server-address``),
the cluster nodes (primaries listed in the SIP Cluster Node DN and their HA
``backup``), the other SIP Proxies (``siproxy-applications``) and the
feature-server of its geo-location, then:

* listens for SIP on ``sip-port`` (UDP + TCP) -- :mod:`.proxy` -- and, with
  ``sip-tls-port``, for SIP over TLS there (certificate, key and client CA
  from ``tls-cert``, ``tls-key``, ``tls-ca``, checked at load -- :mod:`.tls`);
* replicates bindings with every other proxy -- :mod:`.replication`
  (``replication-port``; an entry without it uses ``sip-port + 1000``);
* checks every node with OPTIONS -- :mod:`.oos`;
* serves ``/healthz`` (fails until the bindings are synced), ``/metrics``,
  ``/status/nodes``, ``/status/replication``, ``/status/registrations`` on
  ``http-port`` (else ``mgmt-port``).

With ``workers = N`` (N > 1) the daemon is the supervisor of N processes that
each do all of the above on the shared ports -- :mod:`.workers`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import daemons.sip_proxy as proxy_package
from daemons.cluster.config import AppKind, Application, ClusterConfig, load_cluster
from daemons.runtime.service import (
    Service,
    add_daemon_arguments,
    cancel_and_wait,
    run_daemon,
)
from daemons.sip_proxy.proxy import ProxyCore, ProxySettings
from daemons.sip_proxy.registrar import BindingStore
from daemons.sip_proxy.replication import PeerAddress, Replicator
from daemons.sip_proxy.routing import NodeTarget, Router
from daemons.sip_proxy.security import AuthGuard, RateLimiter
from daemons.sip_proxy.tls import proxy_tls_context
from daemons.sip_proxy.workers import WorkerCore, WorkerLayout, WorkerSupervisor, die_with_parent
from protocols.sip.oos import OosMonitor

__all__ = ["SipProxy", "add_parser", "replication_port", "run"]

#: Offset of the replication port from sip-port while the cluster file has no key for it.
REPLICATION_PORT_OFFSET = 1000


def replication_port(app: Application) -> int:
    """The replication port of a sip-proxy entry: its ``replication-port``
    (0: the OS picks one, for tests), else ``sip-port + 1000``."""
    port = app.ports.get("replication-port")
    if port is not None:
        return int(port)
    return int(app.ports["sip-port"]) + REPLICATION_PORT_OFFSET


def outbound_proxy_names(cfg: ClusterConfig) -> frozenset[str]:
    """Host names of the SIP Outbound Proxy DN's contact and external-contact."""
    proxy = cfg.outbound_proxy
    if proxy is None:
        return frozenset()
    names = set()
    for value in (proxy.contact, proxy.external_contact):
        if not value:
            continue
        text = value.split(":", 1)[1] if value.lower().startswith("sip:") else value
        host = text.split(";", 1)[0].split(">", 1)[0].rsplit("@", 1)[-1]
        if host and ":" not in host:  # a name without a port: the SRV FQDN
            names.add(host.lower())
    return frozenset(names)


def nodes_of(cfg: ClusterConfig) -> list[NodeTarget]:
    """Every cluster node and its HA backup as routing targets."""
    out: list[NodeTarget] = []
    for node in cfg.cluster_nodes():
        geo = node.geo_location or ""
        port = node.ports["sip-port"]
        out.append(NodeTarget(node.name, geo, node.host, port, pair=node.backup,
                              primary=True, group=node.name))
        if node.backup:
            b = cfg.applications[node.backup]
            out.append(NodeTarget(b.name, b.geo_location or geo, b.host, b.ports["sip-port"],
                                  pair=node.name, primary=False, group=node.name))
    return out


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class SipProxy(Service):
    """The sip-proxy daemon (see module docstring)."""

    kind = "sip_proxy"

    def __init__(self, args: argparse.Namespace, cfg: ClusterConfig | None = None) -> None:
        super().__init__(app_name=args.name)
        self.cfg = cfg if cfg is not None else load_cluster(args.config)
        self.app = self.cfg.application(args.name, AppKind.SIP_PROXY)
        app = self.app
        #: ``--worker I`` of a proxy with ``workers > 1`` (:mod:`.workers`)
        self.worker: int | None = getattr(args, "worker", None)
        layout = WorkerLayout.of(app)
        own_name = app.name if self.worker is None else layout.name(self.worker)
        if self.worker is not None:
            die_with_parent()
            self.log = self.log.bind(worker=self.worker)
        opts = app.options
        self.geo = app.geo_location or ""
        #: SIP over TLS for phones on sip-tls-port; a bad file refuses the config
        self.ssl_context = proxy_tls_context(self.cfg, app)
        self.oos_check = float(args.oos_check if args.oos_check is not None
                               else opts.get("oos-check", 5))
        self.oos_force = float(args.oos_force if args.oos_force is not None
                               else opts.get("oos-force", 5))
        self.management_host = app.host
        self.management_port = args.http_port if args.http_port is not None else \
            app.ports.get("http-port", app.ports.get("mgmt-port", 0))
        fs: tuple[str, int] | None = None
        if args.feature_server_address:
            fs = _hostport(args.feature_server_address)
        elif opts.get("feature-server-address") is not None:
            host, port = opts["feature-server-address"]
            fs = (str(host), int(port))
        else:
            for f in self.cfg.by_kind(AppKind.FEATURE_SERVER, self.geo):
                if f.ports.get("sip-port"):
                    fs = (f.host, f.ports["sip-port"])
                    break
        peers = [a for a in self.cfg.by_kind(AppKind.SIP_PROXY) if a.name != app.name]
        self.peer_addresses = [PeerAddress(p.name, p.host, replication_port(p)) for p in peers]
        peer_sip = {p.name: (p.host, p.ports["sip-port"]) for p in peers}
        sip_port = app.ports["sip-port"]
        if self.worker is not None:
            # the other workers are peers like the other proxies, on their own ports
            siblings = [i for i in range(layout.count) if i != self.worker]
            self.peer_addresses += [PeerAddress(layout.name(i), app.host,
                                                layout.replication_port(i)) for i in siblings]
            peer_sip.update({layout.name(i): (app.host, layout.sip_port(i)) for i in siblings})
            sip_port = layout.sip_port(self.worker)
        self.layout = layout
        self.settings = ProxySettings(
            name=own_name, host=app.host, port=sip_port, geo_location=self.geo,
            domain=self.cfg.switch.domain,
            registrar_default_timeout=int(opts.get("registrar-default-timeout", 140)),
            feature_server=fs,
            peers=peer_sip,
            own_names=outbound_proxy_names(self.cfg),
            tls_port=app.port("sip-tls-port") if self.ssl_context is not None else None)
        self.repl_port = args.replication_port if args.replication_port is not None else \
            replication_port(app)
        self.nodes = nodes_of(self.cfg)
        self.store = BindingStore()
        self.monitor = OosMonitor([n.name for n in self.nodes], oos_check=self.oos_check,
                                  oos_force=self.oos_force)
        self.router = Router(self.nodes, self.geo, self.monitor.usable)
        self.rate_limiter = RateLimiter(args.rate_limit, args.rate_burst)
        self.auth_guard = AuthGuard(slow_after=args.auth_slow_after,
                                    block_after=args.auth_block_after,
                                    block_seconds=args.auth_block_seconds)
        self.sync_timeout = args.sync_timeout
        self.batch_ms: float = args.replication_batch_ms
        if not 0 <= self.batch_ms <= 1000:
            raise ValueError(f"--replication-batch-ms must be 0 to 1000, got {self.batch_ms:g}")
        self.core: ProxyCore | None = None
        self.replicator: Replicator | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._node_state = self.metrics.gauge(
            "proxy_node_in_service", "1 when the node gets traffic (in service and primary)",
            ("node", "geo_location"))
        self._node_checks = self.metrics.counter(
            "proxy_node_checks", "OPTIONS checks sent (oos-check)", ("node",))
        self._node_answers = self.metrics.counter(
            "proxy_node_answers", "Answers to OPTIONS checks", ("node",))
        self._node_transitions = self.metrics.counter(
            "proxy_node_transitions", "Service state changes", ("node", "state"))
        self._rate_limited = self.metrics.gauge(
            "proxy_rate_limited_sources", "Sources with a rate-limit bucket")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        worker = self.worker
        self.replicator = Replicator(
            self.settings.name, self.app.host, self.repl_port, self.store, self.peer_addresses,
            log=self.log, metrics=self.metrics, sync_timeout=self.sync_timeout,
            family=None if worker is None else self.app.name,
            sibling_port=None if worker is None else self.layout.replication_port(worker),
            # a sibling worker restarts in a moment: catch it quickly
            retry_interval=1.0 if worker is None else 0.1,
            batch_interval=self.batch_ms / 1000.0)
        replicator = self.replicator
        kwargs: dict[str, Any] = dict(
            router=self.router, store=self.store, metrics=self.metrics,
            log=self.log, on_binding=replicator.publish, synced=lambda: replicator.synced,
            peer_alive=replicator.peer_alive, rate_limiter=self.rate_limiter,
            auth_guard=self.auth_guard, ssl_context=self.ssl_context)
        self.core = ProxyCore(self.settings, **kwargs) if worker is None else \
            WorkerCore(self.settings, shared_port=self.app.ports["sip-port"], **kwargs)
        await self.core.start()
        self.repl_port = await replicator.start()
        self.management.add_health_check("replication", lambda: (
            replicator.synced, {"bindings": len(self.store), "peers_connected": sum(
                1 for p in replicator.links.values() if p.connected)}))
        # a proxy with no node in service anywhere can only answer 503: not healthy
        self.management.add_health_check("nodes", self._nodes_health)
        if worker is not None:
            # until every sibling streams to us, a phone it registered is not ours to find
            siblings = [self.layout.name(i) for i in range(self.layout.count) if i != worker]
            self.management.add_health_check("workers", lambda: (
                all(replicator.peer_alive(n) for n in siblings),
                {"connected": [n for n in siblings if replicator.peer_alive(n)]}))
        self.management.add_status_page("/status/nodes", self.nodes_status)
        self.management.add_status_page("/status/replication", replicator.status)
        self.management.add_status_page("/status/registrations", self.registrations_status)
        self.management.add_status_page("/status/security", lambda: {
            "rate_limited": self.rate_limiter.refused,
            "blocked_sources": self.auth_guard.blocked(time.monotonic())})
        self._tasks.append(asyncio.create_task(self._oos_loop()))
        self._tasks.append(asyncio.create_task(self._purge_loop()))
        self.log.info("sip_proxy_started", sip_port=self.core.port,
                      sip_tls_port=self.core.settings.tls_port,
                      replication_port=self.repl_port, geo_location=self.geo,
                      proxy_core="compiled" if proxy_package.COMPILED else "pure-python",
                      nodes=[n.name for n in self.nodes], oos_check=self.oos_check,
                      oos_force=self.oos_force)
        # Everything built so far lives as long as the daemon: keep it out of the
        # collector's way; per-message garbage is acyclic and freed by reference
        # counting, so the youngest generation can be collected less often.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self.replicator is not None:
            await self.replicator.close()
        if self.core is not None:
            await self.core.close()

    # ------------------------------------------------------------ oos-check

    async def _oos_loop(self) -> None:
        assert self.core is not None
        by_name = {n.name: n for n in self.nodes}
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for name in self.monitor.due(now):
                self._node_checks.labels(name).inc()
                self.core.probe(by_name[name], self._answer_callback(name))
            for name in self.monitor.tick(now):
                self._report(name)
            delay = max(0.02, self.monitor.next_deadline(loop.time()) - loop.time())
            await asyncio.sleep(min(delay, 1.0))

    def _answer_callback(self, name: str) -> Callable[[int | None], None]:
        return lambda status: self._answered(name, status)

    def _answered(self, name: str, status: int | None) -> None:
        if status is None:
            return  # no answer: oos-force decides
        self._node_answers.labels(name).inc()
        if self.monitor.answered(name, status, asyncio.get_running_loop().time()):
            self._report(name)

    def _report(self, name: str) -> None:
        h = self.monitor.nodes[name]
        node = self.router.nodes[name]
        usable = self.monitor.usable(name)
        self._node_state.labels(name, node.geo_location).set(1 if usable else 0)
        state = h.state.value if (usable or h.state.value != "in-service") else "standby"
        self._node_transitions.labels(name, state).inc()
        self.log.info("node_state_changed", node=name, state=state,
                      geo_location=node.geo_location, last_status=h.last_status)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(10.0)
            dropped = self.store.purge(time.time())
            if dropped:
                self.log.debug("bindings_purged", count=dropped)

    # ------------------------------------------------------------ status pages

    def _nodes_health(self) -> tuple[bool, dict[str, Any]]:
        usable = [n.name for n in self.nodes if self.monitor.usable(n.name)]
        return bool(usable) or not self.nodes, {"usable": usable}

    def nodes_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.nodes:
            out[n.name] = {"geo_location": n.geo_location, "host": n.host, "port": n.port,
                           "primary": n.primary, "pair": n.pair,
                           "local": n.geo_location == self.geo,
                           "usable": self.monitor.usable(n.name),
                           **self.monitor.nodes[n.name].as_dict()}
        return {"geo_location": self.geo, "oos_check": self.oos_check,
                "oos_force": self.oos_force, "nodes": out}

    def registrations_status(self) -> dict[str, Any]:
        now = time.time()
        live = [b for b in self.store.all() if not b.removed and b.expires_at > now]
        return {"count": len(live), "aors": self.store.aor_count(),
                "bindings": [b.as_dict(now) for b in live[:1000]]}


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sip-proxy", help="run a SIP Proxy: the SIP edge of a data centre",
        description=(
            "SIP Proxy of a SIP Cluster: registrar front for the cluster nodes, bindings "
            "replicated to every proxy, Call-ID load balancing over the in-service nodes of "
            "its geo-location, active out-of-service detection (oos-check / oos-force), MWI "
            "SUBSCRIBEs to the feature-server. See docs/sip-proxy.md."))
    add_daemon_arguments(p, name_help="this proxy's application name in the cluster file")
    p.add_argument("--replication-port", type=int, default=None,
                   help="override the replication port (default: replication-port of the "
                        "entry, else sip-port + 1000)")
    p.add_argument("--feature-server-address", default=None, metavar="HOST:PORT",
                   help="where MWI SUBSCRIBEs go (default: feature-server-address of the "
                        "entry, else the feature-server of the geo-location)")
    p.add_argument("--http-port", type=int, default=None,
                   help="management HTTP port (default: http-port of the entry)")
    p.add_argument("--oos-check", type=float, default=None, help="override oos-check, s")
    p.add_argument("--oos-force", type=float, default=None, help="override oos-force, s")
    p.add_argument("--rate-limit", type=float, default=200.0,
                   help="requests per second allowed per source IP (0: no limit)")
    p.add_argument("--rate-burst", type=float, default=400.0,
                   help="burst size of the per-source token bucket")
    p.add_argument("--auth-slow-after", type=int, default=3,
                   help="failed authentications from one IP before its answers are delayed")
    p.add_argument("--auth-block-after", type=int, default=10,
                   help="failed authentications from one IP before it is refused (403)")
    p.add_argument("--auth-block-seconds", type=float, default=60.0,
                   help="how long a source is refused")
    p.add_argument("--sync-timeout", type=float, default=30.0,
                   help="serve anyway after this many seconds without a full snapshot")
    p.add_argument("--replication-batch-ms", type=float, default=5.0,
                   help="a binding waits up to this long to share a replication frame with "
                        "the next ones (0: each at once)")
    p.add_argument("--worker", type=int, default=None, metavar="I",
                   help="run as worker I of a proxy with workers > 1 (started by the "
                        "proxy itself, see docs/sip-proxy.md)")


def build(args: argparse.Namespace, config: ClusterConfig) -> Service:
    """The daemon for ``args``: the proxy itself, or with ``workers > 1`` (and no
    ``--worker``) the supervisor of its worker processes."""
    proxy = SipProxy(args, config)  # checks the whole entry, for either role
    if proxy.worker is None and proxy.layout.count > 1:
        return WorkerSupervisor(args, config, proxy.management_port)
    return proxy


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "sip-proxy", lambda config: build(args, config))
