"""``workers = N``: one sip-proxy on N processes, as Kamailio's ``children``
(docs/sip-proxy.md, "Workers").

The daemon started by systemd is the *supervisor*: it reads the one cluster
file, starts N worker processes (``sipcluster sip-proxy ... --worker I``),
serves ``/healthz`` and ``/metrics`` on the proxy's management port for all of
them, restarts a worker that dies (logged and counted) and stops them all on
SIGTERM. It opens no SIP socket itself.

Each worker is a whole proxy core (:class:`~.worker_core.WorkerCore`) with state of its own
(transactions, TCP/TLS connections, rate-limit buckets) and a copy of every
binding. What keeps the state where it is needed:

* the proxy's ``sip-port`` (UDP, TCP, and ``sip-tls-port``) is shared with
  SO_REUSEPORT: the kernel hands a phone's datagrams (by source address and
  port) and its connections to one worker, so a phone's requests, their
  retransmissions, its CANCEL and ACK reach the worker that holds the server
  transaction;
* worker I also listens on a port of its own, ``worker-port-base + I``: its
  Via, Record-Route and Path carry that port and its requests leave from it,
  so the answers to its client transactions and the in-dialog requests of
  dialogs it record-routed come back to it, not to a sibling;
* bindings: every worker is a replication peer of the others
  (:mod:`.replication`, links on ``worker-port-base + workers + I``), under the
  name ``APP~wI``; the shared ``replication-port`` serves the other proxies, who
  see every worker's bindings as this proxy's;
* a request for a phone whose binding another worker made goes to that worker
  (the same rule as for a binding of another proxy): it owns the phone's TCP or
  TLS connection, and the kernel sends the phone's UDP answers to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.runtime.management import ManagementServer, Metrics
from daemons.runtime.service import Service
from daemons.sip_proxy.worker_core import WorkerCore

__all__ = ["WorkerCore", "WorkerLayout", "WorkerSupervisor", "die_with_parent", "worker_argv"]

#: Offset of the first worker's own SIP port from sip-port while worker-port-base is 0.
WORKER_PORT_OFFSET = 100
#: A worker that lived less than this was failing at start: wait longer before the next.
_QUICK_DEATH = 2.0


@dataclass(frozen=True, slots=True)
class WorkerLayout:
    """Names and ports of the workers of one proxy entry."""

    app: str
    count: int
    port_base: int

    @classmethod
    def of(cls, app: Application) -> WorkerLayout:
        count = int(app.options.get("workers", 1))
        base = int(app.options.get("worker-port-base", 0)) or \
            int(app.ports["sip-port"]) + WORKER_PORT_OFFSET
        return cls(app.name, count, base)

    def name(self, index: int) -> str:
        """The worker's name: its bindings' origin, its replication identity."""
        return f"{self.app}~w{index}"

    def sip_port(self, index: int) -> int:
        return self.port_base + index

    def replication_port(self, index: int) -> int:
        return self.port_base + self.count + index


#: The supervisor's process id, in each worker's environment.
SUPERVISOR_ENV = "SIPCLUSTER_PROXY_SUPERVISOR"


def die_with_parent() -> None:
    """A worker ends with its supervisor, even when that one is killed (Linux
    PR_SET_PDEATHSIG): no orphan keeps the shared port. A supervisor that ended
    before this call (while the worker was starting) ends the worker here."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    parent = os.environ.get(SUPERVISOR_ENV)
    if parent is not None and parent.isdigit() and os.getppid() != int(parent):
        raise SystemExit(f"sip-proxy worker: supervisor {parent} has ended")


# --------------------------------------------------------------------------- supervisor

#: sip-proxy options passed on to every worker: (attribute, flag)
_PASSED = (("log_level", "--log-level"), ("log_format", "--log-format"),
           ("replication_port", "--replication-port"),
           ("feature_server_address", "--feature-server-address"),
           ("oos_check", "--oos-check"), ("oos_force", "--oos-force"),
           ("rate_limit", "--rate-limit"), ("rate_burst", "--rate-burst"),
           ("auth_slow_after", "--auth-slow-after"), ("auth_block_after", "--auth-block-after"),
           ("auth_block_seconds", "--auth-block-seconds"), ("sync_timeout", "--sync-timeout"),
           ("replication_batch_ms", "--replication-batch-ms"))


def worker_argv(args: argparse.Namespace, index: int, http_port: int) -> list[str]:
    """The command line of worker ``index``: the supervisor's own options."""
    argv = [sys.executable, "-m", "daemons.cli", "sip-proxy", "--config",
            os.path.abspath(args.config), "--name", args.name, "--worker", str(index),
            "--http-port", str(http_port)]
    for attr, flag in _PASSED:
        value = getattr(args, attr, None)
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class _Worker:
    index: int
    http_port: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    starts: int = 0


class _WorkerFamilies(Collector):
    """The workers' metrics, each sample labelled ``worker``, as one registry."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def collect(self) -> Any:
        merged: dict[str, Metric] = {}
        for worker, text in self.texts.items():
            for family in text_string_to_metric_families(text):
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type, family.unit)
                for s in family.samples:
                    labels = dict(s.labels)
                    if worker:
                        labels["worker"] = worker
                    out.samples.append(Sample(s.name, labels, s.value, s.timestamp,
                                              s.exemplar))
        return iter(merged.values())


class _SupervisorManagement(ManagementServer):
    """``/healthz`` and ``/metrics`` of the supervisor: every worker's, asked at
    the moment of the request on the worker's own management port."""

    supervisor: WorkerSupervisor

    async def _fetch(self, worker: _Worker, path: str) -> tuple[int, str] | None:
        url = f"http://{self.supervisor.http_host}:{worker.http_port}{path}"
        try:
            async with self.supervisor.http.get(url) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _healthz(self, request: web.Request) -> web.Response:
        sup = self.supervisor
        answers = await asyncio.gather(*(self._fetch(w, "/healthz") for w in sup.workers))
        ok = True
        workers: dict[str, Any] = {}
        for w, answer in zip(sup.workers, answers, strict=True):
            alive = w.proc is not None and w.proc.returncode is None
            healthy = alive and answer is not None and answer[0] == 200
            ok = ok and healthy
            detail: Any = None
            if answer is not None:
                with contextlib.suppress(ValueError):
                    detail = json.loads(answer[1]).get("checks")
            workers[str(w.index)] = {"ok": healthy, "pid": w.proc.pid if w.proc else None,
                                     "starts": w.starts, "http_port": w.http_port,
                                     "sip_port": sup.layout.sip_port(w.index),
                                     "checks": detail}
        body = {"status": "ok" if ok else "unhealthy", "application": self.app_name,
                "checks": {"workers": {"ok": ok, "count": len(sup.workers),
                                       "workers": workers}}}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        sup = self.supervisor
        answers = await asyncio.gather(*(self._fetch(w, "/metrics") for w in sup.workers))
        texts = {"": self.metrics.render().decode()}
        for w, answer in zip(sup.workers, answers, strict=True):
            if answer is not None and answer[0] == 200:
                texts[str(w.index)] = answer[1]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_WorkerFamilies(texts))
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp


class WorkerSupervisor(Service):
    """The sip-proxy daemon with ``workers > 1`` (see module docstring)."""

    kind = "sip_proxy"

    def __init__(self, args: argparse.Namespace, cfg: ClusterConfig,
                 management_port: int) -> None:
        super().__init__(app_name=args.name)
        # the base class's management server is replaced: a registry of our own
        self.metrics = Metrics(namespace="sipcluster")
        self.args = args
        self.app = cfg.application(args.name, AppKind.SIP_PROXY)
        self.layout = WorkerLayout.of(self.app)
        self.management_host = self.app.host
        self.management_port = management_port
        self.http_host = self.app.host
        self.log = self.log.bind(workers=self.layout.count)
        management = _SupervisorManagement(self.metrics, app_name=args.name)
        management.supervisor = self
        self.management = management
        self.workers = [_Worker(i, _free_port(self.app.host)) for i in range(self.layout.count)]
        self.http: aiohttp.ClientSession
        self._tasks: list[asyncio.Task[None]] = []
        self._up = self.metrics.gauge("proxy_workers_running", "Worker processes running")
        self._restarts = self.metrics.counter(
            "proxy_worker_restarts", "Workers started again after they ended", ("worker",))

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0))
        for w in self.workers:
            await self._spawn(w)
            self._tasks.append(asyncio.create_task(self._watch(w)))
        await asyncio.gather(*(self._wait_listening(w) for w in self.workers))
        self.log.info("sip_proxy_workers_started", sip_port=self.app.ports["sip-port"],
                      worker_ports=[self.layout.sip_port(w.index) for w in self.workers],
                      pids=[w.proc.pid for w in self.workers if w.proc is not None])

    async def _spawn(self, w: _Worker) -> None:
        w.proc = await asyncio.create_subprocess_exec(
            *worker_argv(self.args, w.index, w.http_port),
            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
        w.started = time.monotonic()
        w.starts += 1
        self._up.set(sum(1 for x in self.workers if x.proc and x.proc.returncode is None))
        self.log.info("sip_proxy_worker_started", worker=w.index, pid=w.proc.pid,
                      sip_port=self.layout.sip_port(w.index), http_port=w.http_port)

    async def _wait_listening(self, w: _Worker, timeout: float = 20.0) -> None:
        """Until the worker's management port answers (its sockets are open then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if w.proc is None or w.proc.returncode is not None:
                return
            try:
                async with self.http.get(
                        f"http://{self.http_host}:{w.http_port}/healthz"):
                    return
            except (aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.1)

    async def _watch(self, w: _Worker) -> None:
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            self._up.set(sum(1 for x in self.workers if x.proc and x.proc.returncode is None))
            if self.stopping.is_set():
                return
            lived = time.monotonic() - w.started
            self._restarts.labels(str(w.index)).inc()
            self.log.warning("sip_proxy_worker_exited", worker=w.index, pid=w.proc.pid,
                             returncode=code, lived_seconds=round(lived, 1))
            await asyncio.sleep(1.0 if lived < _QUICK_DEATH else 0.1)
            if self.stopping.is_set():
                return
            await self._spawn(w)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                self.log.warning("sip_proxy_worker_killed", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._up.set(0)
        await self.http.close()
        self.log.info("sip_proxy_workers_stopped", count=len(live))
