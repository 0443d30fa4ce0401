"""``sipcluster feature-server``: a data centre's feature-server (docs/feature-server.md;
guide: "Configuring SIP Feature Server", "Configuring dial-plan in Feature Server").

    sipcluster feature-server --config cluster.toml --name FS_dc1

One HTTP listener on the application's ``http-port``: the nodes' dial-plan
query (``/dialplan``), the provisioning API (``/api/...``, with the
voicemail's ``/api/mailboxes``), ``/healthz`` and ``/metrics``. With a
``sip-port`` the voicemail service answers SIP there. Options in
``[applications.NAME.options]``: ``state-dir``, ``store``, ``max-body``,
``store-poll-interval`` and the dial plan (``partitions``,
``calling-profiles``, ``assignments``). SIGHUP (or ``POST
/api/dial-plan/reload``) reads the cluster file and the store again; a broken
plan is refused with its reason and the plan in force stays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, Application, ClusterConfig, load_cluster
from daemons.feature_server.api import ProvisioningApi, token_middleware
from daemons.feature_server.dialplan import DialPlanHolder, PlanSources
from daemons.feature_server.store import Store, StoreError, open_store, redacted
from daemons.feature_server.treatments import TreatmentPlayer
from daemons.feature_server.voicemail import OPTIONS as VOICEMAIL_OPTIONS
from daemons.feature_server.voicemail import VoicemailService
from daemons.runtime.config import ConfigError
from daemons.runtime.management import HttpLimits
from daemons.runtime.service import Service, add_daemon_arguments, cancel_and_wait, run_daemon
from protocols.dialplan import DialPlanError

__all__ = ["FeatureServer", "add_parser", "run"]

#: default largest provisioning body (a partition of 100,000 rules fits)
MAX_BODY = 8 * 1024 * 1024
OPTIONS = {"state-dir", "store", "max-body", "store-poll-interval", "api-token", "partitions",
           "calling-profiles", "assignments",
           # read by the voicemail service (daemons/feature_server/voicemail)
           *VOICEMAIL_OPTIONS}


def state_dir_for(app: Application) -> Path:
    """``state-dir``, else ``$SIPCLUSTER_STATE_DIR/NAME`` (the lab), else
    ``/var/lib/sipcluster/NAME`` (the systemd unit's StateDirectory)."""
    given = app.options.get("state-dir")
    if isinstance(given, str) and given:
        return Path(given)
    base = os.environ.get("SIPCLUSTER_STATE_DIR") or "/var/lib/sipcluster"
    return Path(base) / app.name


def _options(config: ClusterConfig, app: Application
             ) -> tuple[str, int, float, str | None]:
    where = f"applications.{app.name}.options"
    for key in app.options:
        if key not in OPTIONS:
            raise ConfigError(config.file, f"{where}.{key}",
                              f"unknown option (known: {', '.join(sorted(OPTIONS))})")
    store = app.options.get("store") or f"sqlite:///{state_dir_for(app) / 'feature-server.db'}"
    if not isinstance(store, str):
        raise ConfigError(config.file, f"{where}.store", "expected a URL")
    try:
        open_store(store)
    except ValueError as exc:
        raise ConfigError(config.file, f"{where}.store", str(exc)) from None
    max_body = app.options.get("max-body", MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1024:
        raise ConfigError(config.file, f"{where}.max-body", "expected bytes, at least 1024")
    poll = app.options.get("store-poll-interval", 2.0)
    if not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0:
        raise ConfigError(config.file, f"{where}.store-poll-interval", "expected seconds > 0")
    token = app.options.get("api-token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ConfigError(config.file, f"{where}.api-token", "expected at least 16 characters")
    try:
        PlanSources.merge(app.options, {}).compile()
    except DialPlanError as exc:
        raise ConfigError(config.file, where, f"dial plan refused: {exc}") from None
    return store, max_body, float(poll), token


class FeatureServer(Service):
    """The feature-server daemon (see module doc)."""

    kind = "feature_server"

    def __init__(self, config: ClusterConfig, name: str) -> None:
        super().__init__(app_name=name)
        self.config = config
        self.app = config.application(name, AppKind.FEATURE_SERVER)
        store_url, max_body, self.poll_interval, self.api_token = _options(config, self.app)
        self.state_dir = state_dir_for(self.app)
        self.store: Store = open_store(store_url)
        self.management.max_body = max_body
        # every node of the data centre keeps a pool of up to 64 connections for its
        # dial-plan look-ups, and a node may share its host address with a proxy
        self.management.limits = HttpLimits(max_connections=4096, max_per_peer=1024)
        self.management_host = self.app.host
        self.management_port = self.app.port("http-port") or 0
        agent_dns = {d.number for d in config.agent_dns()}
        self.holder = DialPlanHolder(is_internal=agent_dns.__contains__)
        sip_port = self.app.port("sip-port")
        self.voicemail_sip = f"{self.app.host}:{sip_port}" if sip_port else None
        self.voicemail: VoicemailService | None = None
        self.treatments: TreatmentPlayer | None = None
        if sip_port:
            self.voicemail = VoicemailService(cluster=config, app=self.app, store_url=store_url,
                                              state_dir=self.state_dir, metrics=self.metrics)
        m = self.metrics
        self._queries = m.tally("feature_server_dialplan_queries",
                                "Dial-plan queries answered, by the action decided", ("action",))
        self._refused = m.counter("feature_server_api_refused",
                                  "Provisioning and query requests refused with 4xx",
                                  ("reason",))
        self._reloads = m.counter("feature_server_dialplan_reloads",
                                  "Dial-plan reloads, by result", ("result",))
        self._rules = m.gauge("feature_server_dialplan_rules", "Rules of the plan in force")
        self.api = ProvisioningApi(self, max_body=max_body)
        if self.api_token is not None:
            self.management.middlewares.append(token_middleware(self.api_token, self))
        self.management.add_routes(self.api.add_routes)
        if self.voicemail is not None:
            self.management.add_routes(self.voicemail.add_routes)
            self.management.add_health_check("voicemail", self.voicemail.health)
            # media treatments share voicemail's SIP port and RTP (docs/feature-server.md)
            self.treatments = TreatmentPlayer(self.voicemail, self.state_dir / "treatments")
            self.voicemail.sip_front = self.treatments.front
        self.management.add_health_check("dial_plan", self._health)
        self.management.add_status_page("/status/dial-plan", self.holder.status)
        self._store_ok = False
        self._generation = 0
        self._poll_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.store.open()
            self._store_ok = True
            self._generation = await self.store.generation()
            await self.reload(reread_config=False, startup=True)
        except StoreError as exc:
            raise OSError(f"store: {exc}") from exc
        except DialPlanError as exc:
            # the cluster file's plan with what the store holds (each checked alone)
            raise OSError(f"dial plan refused: {exc}") from exc
        if self.treatments is not None:
            made = await asyncio.to_thread(self.treatments.prepare)
            if made:
                self.log.info("treatment_files_generated", files=made,
                              directory=str(self.treatments.directory))
        if self.voicemail is not None:
            await self.voicemail.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._poll_task = asyncio.create_task(self._poll_store())
        self.log.info("feature_server_started", store=redacted(self.store.url),
                      state_dir=str(self.state_dir), voicemail_sip=self.voicemail_sip,
                      **self.holder.plan.summary())

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await cancel_and_wait(self._poll_task)
        if self.treatments is not None:
            await self.treatments.close()
        if self.voicemail is not None:
            await self.voicemail.stop()
        await self.store.close()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        return self._store_ok, {"store": redacted(self.store.url),
                                "rules": self.holder.plan.rule_count}

    # ------------------------------------------------------------------ reload

    def _on_sighup(self) -> None:
        self.log.info("signal_received", signal="SIGHUP")
        task = asyncio.ensure_future(self._reload_logged())
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _reload_logged(self) -> None:
        try:
            await self.reload(reread_config=True)
        except (DialPlanError, ValueError, StoreError):
            pass  # logged and counted by reload()

    async def reload(self, *, reread_config: bool, startup: bool = False) -> dict[str, Any]:
        """Read the plan's sources again and put the new plan in force; DialPlanError
        (or ConfigError for the cluster file) leaves the plan in force as it was."""
        started = time.perf_counter()
        try:
            options = self.app.options
            if reread_config:
                config = await asyncio.to_thread(load_cluster, self.config.file)
                app = config.application(self.app_name, AppKind.FEATURE_SERVER)
                options = app.options
            self._generation = await self.store.generation()
            stored = await self.store.all()
            candidate = PlanSources.merge(options, stored)
            read = time.perf_counter() - started
            plan = await self.holder.install(candidate)
        except (DialPlanError, ConfigError) as exc:
            self._reloads.labels("refused").inc()
            self.log.error("dial_plan_refused", reason=str(exc), startup=startup,
                           rules_in_force=self.holder.plan.rule_count)
            raise
        except StoreError as exc:
            self._store_ok = False
            self._reloads.labels("store_unreachable").inc()
            self.log.error("dial_plan_reload_failed", reason=str(exc), startup=startup,
                           rules_in_force=self.holder.plan.rule_count)
            raise
        if reread_config:
            self.app = app
        self._reloads.labels("loaded").inc()
        self._rules.set(plan.rule_count)
        summary = {**plan.summary(), "read_seconds": round(read, 3),
                   "compile_cpu_seconds": round(self.holder.compile_cpu_seconds, 3),
                   "seconds": round(time.perf_counter() - started, 3)}
        self.log.info("dial_plan_loaded", **summary)
        return summary

    async def _poll_store(self) -> None:
        """Another feature-server sharing the store changed it: load its changes."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                generation = await self.store.generation()
            except StoreError as exc:
                if self._store_ok:
                    self.log.warning("store_unreachable", reason=str(exc))
                self._store_ok = False
                continue
            if not self._store_ok:
                self.log.info("store_reachable")
            self._store_ok = True
            if generation != self._generation:
                self._generation = generation
                try:
                    await self.reload(reread_config=False)
                except (DialPlanError, StoreError):
                    pass  # logged and counted by reload()

    # ------------------------------------------------------------------ API host

    def counted_query(self, action: str) -> None:
        self._queries.labels(action).inc()

    def counted_refusal(self, reason: str) -> None:
        self._refused.labels(reason).inc()


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "feature-server",
        help="run a data centre's feature-server (dial plan, provisioning, voicemail)",
        description="The dial plan served over HTTP to the cluster nodes, its store, the "
                    "provisioning API and voicemail, from the application's entry in the "
                    "cluster file.",
    )
    add_daemon_arguments(parser,
                         name_help="this feature-server's application name in the cluster file")


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, "feature-server", lambda config: FeatureServer(config, args.name))
