"""Fixtures for the T-Controller mesh on real processes (docs/t-controller.md):
the lab of ``sipcluster lab`` with two data centres of two nodes each, SIPp
phones and T-Library desktops.

The lab runs from ``deploy/etc/cluster.toml`` moved to 127.0.41.x (DC1) and
127.0.42.x (DC2), with short ADDP, ``tc-reconnect-timeout``, ``wrap-up-time``
and ``oos-check`` so failures and their recovery are seen in seconds. A phone
is a SIPp process on an address of its own (127.0.4x.1NN, port 5060: the same
contact every time, so a new REGISTER replaces the binding); a desktop is a
:class:`TLibClient` bound to an address of its data centre, so ``sipcluster
lab partition`` cuts it off from the other data centre like the daemons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from protocols.tlib.framing import TMap
from tests.integration.support import (  # type: ignore[import-not-found]
    SCENARIOS as SHARED_SCENARIOS,
)
from tests.integration.support import (  # type: ignore[import-not-found]
    ClusterLab,
    SippPhones,
    SippRun,
    generate_cluster_file,
    http_json,
    phones_fixture,
    poll,
    running_lab,
    until,
)

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
DC1 = "127.0.41."
#: last byte of the PSTN agent's (DN 2001) phone in DC1
PSTN_AGENT_HOST = "45"
DC2 = "127.0.42."
SUBNETS = {"127.0.1.": DC1, "127.0.2.": DC2}
#: ADDP between t-controllers: a cut link is seen after ADDP_TIMEOUT + ADDP_REMOTE s ...
ADDP_TIMEOUT = 2
ADDP_REMOTE_TIMEOUT = 3
#: ... and its DNs go out of service TC_RECONNECT_TIMEOUT s later
TC_RECONNECT_TIMEOUT = 1
WRAP_UP_TIME = 1
#: how long a link loss takes to show, with margin for a busy machine
LOSS_BOUND = ADDP_TIMEOUT + ADDP_REMOTE_TIMEOUT + TC_RECONNECT_TIMEOUT + 6.0


@dataclass
class MeshLab(ClusterLab):
    """A running lab: its directory, lab.json and what the tests ask of it."""

    #: seconds a cut link takes to show (ADDP, then tc-reconnect-timeout), with margin
    loss_bound: float = LOSS_BOUND
    wrap_up_time: float = WRAP_UP_TIME
    until = staticmethod(until)

    async def lab(self, *args: str) -> None:
        """``sipcluster lab ARGS`` (kill, restart, partition, heal); fails the test on error."""
        done = await asyncio.to_thread(self.command, *args)
        assert done.returncode == 0, f"lab {' '.join(args)}: {done.stdout}{done.stderr}"

    def geo_of(self, node: str) -> str:
        return str(next(g for g, c in self.desc["data_centres"].items()
                        if any(n["name"] == node for n in c["nodes"])))

    def node_of(self, dn: str) -> str | None:
        """The node that took ``dn``'s latest REGISTER (the binding that expires
        last: an earlier one may still live on another node)."""
        latest: tuple[int, str] | None = None
        for name, n in self.nodes().items():
            regs = poll(lambda n=n: http_json(n["host"], n["http_port"],
                                              "/status/registrations"))
            for b in (regs or {}).get(dn, []):
                if latest is None or int(b["expires"]) > latest[0]:
                    latest = (int(b["expires"]), name)
        return latest[1] if latest else None

    def replicated(self, dn: str, origin: str, contact: str) -> bool:
        """Every proxy holds ``dn``'s binding to ``contact`` taken by ``origin``."""
        return all((b := self.binding(p, dn)) is not None and b["origin"] == origin
                   and contact in str(b.get("contact", ""))
                   for p in self.proxies())

    def mesh_up(self) -> bool:
        """Every t-controller has both connections up with every peer."""
        for n in self.nodes().values():
            peers = http_json(n["host"], n["tc_http_port"], "/status/peers")["peers"]
            if len(peers) != len(self.nodes()) - 1 or not all(
                    p["client-connection"] == "up" and p["server-connection"] == "up"
                    for p in peers.values()):
                return False
        return True

    def tc_of(self, node: str) -> str:
        return str(self.nodes()[node]["t_controller"])

    def node_by_tc(self, tc: str) -> str:
        return next(name for name, n in self.nodes().items() if n["t_controller"] == tc)

    def tc_status(self, node: str, path: str) -> Any:
        """A status page of the t-controller beside ``node``."""
        n = self.nodes()[node]
        return http_json(n["host"], n["tc_http_port"], path)

    def dn_view(self, node: str, dn: str) -> dict[str, Any]:
        """``dn`` as the t-controller beside ``node`` sees it (``/status/dns``)."""
        n = self.nodes()[node]
        return dict(http_json(n["host"], n["tc_http_port"], "/status/dns")["dns"][dn])

    def owner(self, dn: str, *, seen_from: str) -> str | None:
        return self.dn_view(seen_from, dn).get("owner")

    async def owned(self, dn: str, node: str, among: list[str] | None = None,
                    timeout: float = 10.0) -> None:
        """Every t-controller (of ``among`` nodes) agrees that ``node`` owns ``dn``."""
        names = among or list(self.nodes())
        await until(f"{dn} owned by {node} as seen from {names}",
                    lambda: all(self.owner(dn, seen_from=x) == node for x in names), timeout)


@pytest.fixture(scope="session")
def mesh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    """The whole cluster, started once for the mesh tests; stopped in any case."""
    tmp = tmp_path_factory.mktemp("mesh")
    config = generate_cluster_file(
        tmp / "cluster.toml", SUBNETS,
        options={"tc-reconnect-timeout": TC_RECONNECT_TIMEOUT, "addp-timeout": ADDP_TIMEOUT,
                 "addp-remote-timeout": ADDP_REMOTE_TIMEOUT, "wrap-up-time": WRAP_UP_TIME})
    # the PSTN agent 2001 answers on a SIPp phone of the test's own (.45), not behind
    # the lab's PSTN gateway (.40, SIPp's UAS, which answers every call by itself)
    text = config.read_text()
    assert f"@{DC1}40:5060" in text
    config.write_text(text.replace(f"sip:+15550102001@{DC1}40:5060",
                                   f"sip:+15550102001@{DC1}{PSTN_AGENT_HOST}:5060"))
    yield from running_lab(MeshLab(tmp / "run", {}), config)


# =========================================================================== phones


class AsyncSippRun(SippRun):
    """A SIPp run that the (asyncio) tests await."""

    async def ok(self, timeout: float = 30) -> str:
        """Wait (without blocking the loop) for a successful end; the message log."""
        return await asyncio.to_thread(self.check, timeout)


@dataclass
class Phone:
    """A SIP phone: DN, the address it binds (port 5060), where it registered."""

    dn: str
    address: str
    port: int = 5060


class Phones(SippPhones[AsyncSippRun]):
    """SIPp phones and trunks bound to data centre addresses."""

    run_type = AsyncSippRun
    lab: MeshLab

    @staticmethod
    def phone(dn: str, address: str, port: int = 5060) -> Phone:
        return Phone(dn, address, port)

    def proxy(self, name: str) -> tuple[str, int]:
        p = self.lab.proxies()[name]
        return p["host"], int(p["sip_port"])

    def node(self, name: str) -> tuple[str, int]:
        n = self.lab.nodes()[name]
        return n["host"], int(n["sip_port"])

    async def register(self, dn: str, address: str, via: tuple[str, int],
                       expires: int = 600) -> Phone:
        """REGISTER ``dn`` from ``address``:5060 to ``via`` (a proxy or a node)."""
        await self.run(SHARED_SCENARIOS / "register.xml", address, 5060, via, dn, "-au", dn,
                       "-ap", self.lab.password(dn), "-set", "expires", str(expires)).ok()
        return Phone(dn, address)

    def register_at(self, dn: str, address: str, node: str) -> tuple[Phone, AsyncSippRun]:
        """Start a REGISTER of ``dn`` from ``address``:5060 straight to ``node``
        (no proxy: the node's binding has no Path, only that node reaches it)."""
        run = self.run(SHARED_SCENARIOS / "register.xml", address, 5060, self.node(node), dn,
                       "-au", dn, "-ap", self.lab.password(dn), "-set", "expires", "600")
        return Phone(dn, address), run

    async def register_home(self, dn: str, address: str, geo: str,
                            proxy: str | None = None) -> tuple[Phone, str]:
        """REGISTER through ``proxy`` (default: the first of ``geo``) and wait until
        every proxy holds the binding; the phone and the node that took it."""
        proxy = proxy or next(iter(self.lab.proxies(geo)))
        phone = await self.register(dn, address, self.proxy(proxy))
        await until(f"{dn} replicated to every proxy",
                    lambda: self.lab.replicated(dn, proxy, f"{address}:5060"), 10)
        node = await until(f"a node holds {dn}", lambda: self.lab.node_of(dn), 5)
        return phone, str(node)

    def answer(self, phone: Phone) -> AsyncSippRun:
        """The phone waits for one call, answers it (with an offer when the INVITE
        has none, RFC 3264 §5) and waits for the BYE."""
        return self.run(SHARED_SCENARIOS / "uas_answer.xml", phone.address, phone.port,
                        ("127.0.0.1", 9), phone.dn, timeout=25)

    def trunk(self, address: str, node: str, callee: str, *,
              wait_bye: bool = False) -> AsyncSippRun:
        """An inbound trunk call to ``callee`` sent straight to ``node``: hung up
        by the trunk 200 ms after the answer, or (``wait_bye``) by the cluster."""
        scenario = (SCENARIOS / "trunk_wait_bye.xml" if wait_bye
                    else SHARED_SCENARIOS / "uac_inbound.xml")
        return self.run(scenario, address, self.free_port(address), self.node(node), callee,
                        "-set", "caller", "+15550100", timeout=25)


phones = phones_fixture(Phones, "mesh_lab")


# ========================================================================= desktops


@dataclass
class Desktop:
    """A T-Library client that keeps every event it receives, in arrival order."""

    client: TLibClient
    events: list[TMap] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, event: TMap) -> None:
        self.events.append(event)
        self.changed.set()

    async def _drain(self) -> None:
        async for _ in self.client.events():
            pass

    async def request(self, name: str, **attributes: Any) -> TMap:
        async with asyncio.timeout(10):
            return await self.client.request(name, attributes)

    def of(self, name: str, dn: str | None = None) -> list[TMap]:
        return [e for e in self.events if e["message"] == name
                and (dn is None or e.get("AttributeThisDN") == dn)]

    def names(self, dn: str | None = None) -> list[str]:
        return [e["message"] for e in self.events
                if dn is None or e.get("AttributeThisDN") == dn]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 10.0,
                       **match: Any) -> TMap:
        """The ``count``-th event named ``name`` (matching ``match``)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = [e for e in self.events if e["message"] == name
                             and all(e.get(k) == v for k, v in match.items())]
                    if len(found) >= count:
                        return found[count - 1]
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            got = [(e["message"], e.get("AttributeThisDN")) for e in self.events]
            raise AssertionError(f"no {name} #{count} {match} within {timeout:g} s; "
                                 f"got {got}") from None

    async def close(self) -> None:
        await self.client.close()


class Desktops:
    """Opens desktops on the t-controllers of the lab; closes them at the end."""

    def __init__(self, lab: MeshLab) -> None:
        self.lab = lab
        self.opened: list[Desktop] = []

    async def connect(self, node: str, app: str = "wwe", *, smart_proxy: bool = False,
                      address: str | None = None) -> Desktop:
        """A desktop on the t-controller beside ``node`` (its TCport, or its Smart
        Proxy port), bound to ``address`` (default: .150 of the node's data centre)."""
        n = self.lab.nodes()[node]
        port = n["smart_proxy_port"] if smart_proxy else n["tc_port"]
        return await self._open(n["host"], int(port), app,
                                address or n["host"].rsplit(".", 1)[0] + ".150")

    async def connect_node(self, node: str, app: str = "router") -> Desktop:
        """A routing client on ``node``'s sip-server ``default-port``."""
        n = self.lab.nodes()[node]
        return await self._open(n["host"], int(n["default_port"]), app,
                                n["host"].rsplit(".", 1)[0] + ".151")

    async def _open(self, host: str, port: int, app: str, local: str) -> Desktop:
        """A T-Library client of ``host``:``port`` named ``app``, bound to ``local``."""
        client = await TLibClient.connect(host, port, app, "legacy", addp_timeout=None,
                                          local_addr=(local, 0))
        desk = Desktop(client)
        client.add_listener(desk._record)
        asyncio.get_running_loop().create_task(desk._drain())
        self.opened.append(desk)
        return desk

    async def close(self) -> None:
        for desk in self.opened:
            try:
                await desk.close()
            except Exception:  # closing what is left, whatever its state
                pass


@pytest.fixture
async def desktops(mesh_lab: MeshLab) -> Any:
    kit = Desktops(mesh_lab)
    yield kit
    await kit.close()
