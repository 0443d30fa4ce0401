"""Real processes for the collective's tests: one rtm-server hub and three
sites (``sipcluster collective``), each site with its own cluster file, on
127.0.210.x-127.0.215.x. Sites Boca (1) and Indy (2) also have a
status-aggregator, each with a private CA, so their t-controllers' agent
states reach the directory.

    hub   127.0.210.10      sites 1, 2, 3 and 4 (4 is no peer of anyone)
    Boca  127.0.211.1       site 1, status-aggregator SA_Boca on 127.0.211.5
    Indy  127.0.212.1       site 2, status-aggregator SA_Indy on 127.0.212.5
    Lyon  127.0.213.1       site 3
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime import certs
from tests.conftest import free_port
from tests.daemons.rtm_server.conftest import Hub, HubSpec, Proc, write_cluster

HUB_HOST = "127.0.210.10"
PASSWORDS = {1: "Boca-Secret", 2: "Indy-Secret", 3: "Lyon-Secret", 4: "Oslo-Secret"}
SITES = {1: ("Boca", "127.0.211.1"), 2: ("Indy", "127.0.212.1"), 3: ("Lyon", "127.0.213.1")}
PHONES = {1: "5615550100", 2: "3175550100", 3: "33472000000"}
#: the sites with a status-aggregator (and its address)
SA_HOSTS = {1: "127.0.211.5", 2: "127.0.212.5"}
SPANNING = "Multisite_RTM1"


def _q(value: str) -> str:
    return json.dumps(value)


def site_cluster(root: Path, site: int, hub: HubSpec, *, http_port: int,
                 password: str | None = None, peer_passwords: dict[int, str] | None = None,
                 sa_ports: tuple[int, int] | None = None, home_id: int | None = None) -> Path:
    """The cluster file of one site: a node, its t-controller, the collective
    application (and at Boca the status-aggregator)."""
    name, host = SITES[site]
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""
[switch]
name = "{name}_Switch"
domain = "{name.lower()}.test"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_{name}"]

[applications.SIPS_{name}]
kind = "sip-server"
host = "{host}"
sip-port = 5060
default-port = 7000
geo-location = "dc1"

[applications.TC_{name}]
kind = "t-controller"
host = "{host}"
sip-server = "SIPS_{name}"
tc-port = 7100

[applications.Collective_{name}]
kind = "collective"
host = "{host}"
http-port = {http_port}

[applications.Collective_{name}.options]
hubs = ["{hub.host}:{hub.rtm_port}"]
spanning-workgroups = [{_q(SPANNING)}]
store = "sqlite:{directory / 'state' / 'collective.db'}"
rtm-state = "{directory / 'state' / 'rtm.db'}"

[applications.Collective_{name}.options.home-site]
site-identifier = {home_id or site}
site-name = "{name}"
phone-number = "{PHONES[site]}"
password = {_q(password or PASSWORDS[site])}
"""
    for peer, (peer_name, _) in SITES.items():
        if peer == site:
            continue
        peer_password = (peer_passwords or {}).get(peer, PASSWORDS[peer])
        text += f"""
[applications.Collective_{name}.options.peer-sites.{peer_name}]
site-identifier = {peer}
phone-number = "{PHONES[peer]}"
password = {_q(peer_password)}
[applications.Collective_{name}.options.peer-sites.{peer_name}.trusted-access]
publish-handlers = true
manage-handlers = {"true" if peer == 1 else "false"}
master-administrator = false
"""
    if sa_ports is not None:
        text += f"""
[applications.SA_{name}]
kind = "status-aggregator"
host = "{SA_HOSTS[site]}"
status-port = {sa_ports[0]}
http-port = {sa_ports[1]}

[applications.SA_{name}.options]
publishers = ["Collective_{name}"]
"""
        if not (directory / "certs" / "ca.pem").exists():
            certs.init_ca(directory / "certs")
            for app in (f"SA_{name}", f"TC_{name}", f"Collective_{name}"):
                certs.issue(directory / "certs", app)
    path = directory / "cluster.toml"
    path.write_text(text)
    return path


class SiteProc(Proc):
    """One ``sipcluster collective`` process and its HTTP API."""

    def __init__(self, site: int, config: Path, http_port: int, log: Path) -> None:
        name, host = SITES[site]
        self.site, self.name, self.host, self.http_port = site, name, host, http_port
        self.config = config
        super().__init__([sys.executable, "-m", "daemons.cli", "collective", "--config",
                          str(config), "--name", f"Collective_{name}", "--log-format", "json"],
                         log)

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.host}:{self.http_port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def get(self, path: str) -> Any:
        status, body = self.http("GET", path)
        assert status == 200, (status, body)
        return body

    def put_user(self, user_id: str, name: str, extension: str,
                 workgroups: list[str]) -> Any:
        status, body = self.http("PUT", f"/users/{user_id}",
                                 {"name": name, "extension": extension,
                                  "workgroups": workgroups})
        assert status == 200, (status, body)
        return body

    def users(self) -> dict[tuple[int, str], dict[str, Any]]:
        return {(u["home_site"], u["id"]): u for u in self.get("/users")}

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.http("GET", "/metrics")
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                         if labels else "")
        for line in str(body).splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def health(self) -> tuple[int, Any]:
        try:
            return self.http("GET", "/healthz")
        except OSError:
            return 0, None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Serving HTTP and linked to the hub."""
        until(lambda: self.health()[0] == 200
              and self.health()[1]["checks"]["collective"]["hub_connected"],
              timeout, f"site {self.name} not ready: {self.tail()}", alive=self)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                out.append(entry)
        return out

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def until(condition: Callable[[], Any], timeout: float = 10.0, message: str = "",
          alive: Proc | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (OSError, KeyError, AssertionError):
            value = None
        if value:
            return value
        if alive is not None and not alive.alive():
            raise AssertionError(f"process exited: {message}")
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met")
        time.sleep(0.05)


@dataclass
class Collective:
    root: Path
    hub: Hub
    http_ports: dict[int, int]
    sa_ports: dict[int, tuple[int, int]]
    sites: dict[int, SiteProc] = field(default_factory=dict)
    extra: list[Proc] = field(default_factory=list)

    def config(self, site: int, **kwargs: Any) -> Path:
        return site_cluster(self.root, site, self.hub.spec, http_port=self.http_ports[site],
                            sa_ports=self.sa_ports.get(site), **kwargs)

    def start_site(self, site: int, *, wait: bool = True, **kwargs: Any) -> SiteProc:
        config = self.config(site, **kwargs)
        proc = SiteProc(site, config, self.http_ports[site],
                        self.root / f"{SITES[site][0]}.log")
        proc.start()
        self.sites[site] = proc
        if wait:
            proc.wait_ready()
        return proc

    def start_aggregator(self, site: int = 1) -> Proc:
        """The status-aggregator of ``site`` (Boca or Indy)."""
        name = SITES[site][0]
        config = self.root / name / "cluster.toml"
        proc = Proc([sys.executable, "-m", "daemons.cli", "status-aggregator", "--config",
                     str(config), "--name", f"SA_{name}", "--log-format", "json"],
                    self.root / f"SA_{name}.log",
                    env={"SIPCLUSTER_STATE_DIR": str(self.root / "sa-state")}).start()
        self.extra.append(proc)
        until(lambda: _http_ok(SA_HOSTS[site], self.sa_ports[site][1]), 30.0,
              "status-aggregator not ready", alive=proc)
        return proc


def _http_ok(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


@pytest.fixture(scope="module")
def collective(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collective]:
    """The hub and the three sites, started once for a test module."""
    root = tmp_path_factory.mktemp("collective")
    spec = HubSpec("RTM1", HUB_HOST, free_port(HUB_HOST), free_port(HUB_HOST))
    hub_config = write_cluster(root / "hub.toml", [spec],
                               {"store": f"sqlite:{root / 'hub' / 'rtm.db'}", "keep-alive": 2},
                               sites=PASSWORDS)
    hub = Hub(hub_config, spec, root / "hub.log").start()
    lab = Collective(root, hub, {s: free_port(h) for s, (_, h) in SITES.items()},
                     {s: (free_port(h), free_port(h)) for s, h in SA_HOSTS.items()})
    try:
        hub.wait_role("active", 30.0)
        for site in SITES:
            lab.config(site)
        for site in SITES:
            lab.start_site(site, wait=False)
        for proc in lab.sites.values():
            proc.wait_ready()
        yield lab
    finally:
        for proc in [*lab.sites.values(), *lab.extra]:
            proc.stop()
        hub.stop()
