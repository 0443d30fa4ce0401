"""Fixtures for end-to-end tests of the whole cluster: phones -> SIP Proxies ->
cluster nodes -> SIP Proxies -> phones, with the real daemons of ``sipcluster lab``.

The lab runs from ``deploy/etc/cluster.toml`` moved to 127.0.21.x (DC1) and
127.0.22.x (DC2), with short out-of-service detection so failures are seen
quickly. Phones are SIPp processes bound to an address of their data centre;
like a phone that supports SRV (RFC 3263) they resolve the SIP Cluster FQDN
from their own address, so the geo-aware DNS gives their data centre's proxies
first, and they fail over to the next target when one does not answer.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemons.runtime.dns import SipResolver
from tests.integration import support  # type: ignore[import-not-found]
from tests.support.sip_probe import answers_options

SUBNETS = {"127.0.1.": "127.0.21.", "127.0.2.": "127.0.22."}


@dataclass
class Lab(support.ClusterLab):
    """A running lab: its directory, lab.json and the applications' addresses."""

    proxy_oos_check: float = support.PROXY_OOS_CHECK
    proxy_oos_force: float = support.PROXY_OOS_FORCE
    node_oos_check: float = support.NODE_OOS_CHECK
    node_oos_force: float = support.NODE_OOS_FORCE
    wait_for = staticmethod(support.wait_for)

    def kill(self, name: str) -> None:
        done = self.command("kill", name)
        assert done.returncode == 0, done.stdout + done.stderr

    def restart(self, name: str) -> None:
        done = self.command("restart", name)
        assert done.returncode == 0, done.stdout + done.stderr

    def proxy_at(self, host: str) -> str:
        return next(name for name, p in self.proxies().items() if p["host"] == host)

    def status(self, name: str, path: str) -> Any:
        app = {**self.nodes(), **self.proxies()}[name]
        return support.http_json(app["host"], app["http_port"], path)

    def node_of(self, dn: str) -> str | None:
        """The node that holds ``dn``'s registration (the one its REGISTER went to)."""
        for name in self.nodes():
            try:
                if self.status(name, "/status/registrations").get(dn):
                    return name
            except (urllib.error.URLError, OSError):
                continue
        return None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The whole cluster, started once for the integration tests (the phones
    fixture checks for SIPp)."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = support.generate_cluster_file(tmp / "cluster.toml", SUBNETS)
    yield from support.running_lab(Lab(tmp / "run", {}), config)


# =========================================================================== phones


def resolve_proxies(lab: Lab, address: str) -> list[tuple[str, int]]:
    """RFC 3263 targets of the SIP Cluster FQDN as a phone at ``address`` gets them."""
    async def run() -> list[tuple[str, int]]:
        resolver = SipResolver([lab.dns], source=address, timeout=1.0)
        targets = await resolver.resolve(lab.srv_fqdn, transport="udp")
        return [(t.host_ip, t.port) for t in targets]
    return asyncio.run(run())


@dataclass
class Phone:
    """A SIP phone: DN, the address and port it binds, the proxy it uses."""

    dn: str
    address: str
    port: int
    proxy: tuple[str, int]


class SyncSippRun(support.SippRun):
    """A SIPp run that the (synchronous) tests wait for."""

    def ok(self, timeout: float = 30) -> str:
        """Wait for a successful end; the message log."""
        return self.check(timeout)


class Phones(support.SippPhones[SyncSippRun]):
    """SIPp phones bound to data centre addresses."""

    run_type = SyncSippRun
    lab: Lab

    def choose_proxy(self, address: str) -> tuple[str, int]:
        """The phone's RFC 3263 choice: the SRV targets in order, the first that answers."""
        for target in resolve_proxies(self.lab, address):
            if answers_options(address, target):
                return target
        raise AssertionError(f"no SIP Proxy answers a phone at {address}")

    def register(self, dn: str, address: str, proxy: tuple[str, int] | None = None,
                 port: int | None = None, expires: int = 600) -> Phone:
        """REGISTER ``dn`` from ``address`` (through ``proxy``, else the SRV choice)."""
        proxy = proxy or self.choose_proxy(address)
        port = port or self.free_port(address)
        self.run(support.SCENARIOS / "register.xml", address, port, proxy, dn, "-au", dn, "-ap",
                 self.lab.password(dn), "-set", "expires", str(expires)).ok()
        return Phone(dn, address, port, proxy)

    def answer(self, phone: Phone) -> SyncSippRun:
        """The phone waits for one call, answers it and waits for the BYE."""
        return self.run(support.SCENARIOS / "uas_answer.xml", phone.address, phone.port,
                        phone.proxy, phone.dn)

    def call(self, caller: Phone, callee: str,
             via: tuple[str, int] | None = None) -> SyncSippRun:
        """``caller`` calls DN ``callee`` through its proxy (or ``via``)."""
        port = self.free_port(caller.address)
        return self.run(support.SCENARIOS / "uac_call.xml", caller.address, port,
                        via or caller.proxy, callee, "-set", "caller", caller.dn, "-au",
                        caller.dn, "-ap", self.lab.password(caller.dn))

    def inbound(self, address: str, node: str, callee: str) -> SyncSippRun:
        """A trunk call to ``callee`` sent straight to cluster node ``node``."""
        n = self.lab.nodes()[node]
        return self.run(support.SCENARIOS / "uac_inbound.xml", address, self.free_port(address),
                        (n["host"], n["sip_port"]), callee, "-set", "caller", "+15550100")

    def call_and_answer(self, caller: Phone, callee: Phone,
                        via: tuple[str, int] | None = None) -> tuple[str, str]:
        """One complete call; the two SIPp message logs (callee, caller)."""
        uas = self.answer(callee)
        time.sleep(0.2)  # the UAS socket is bound before the INVITE comes
        uac = self.call(caller, callee.dn, via)
        caller_log = uac.ok()
        return uas.ok(), caller_log


phones = support.phones_fixture(Phones, "lab")
