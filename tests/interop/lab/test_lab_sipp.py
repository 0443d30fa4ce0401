"""SIPp phones and a T-Library desktop through the two-data-centre lab.

Phones register and call through a SIP Proxy of their data centre (the proxy
picks the node); a desktop on the node's TCport drives calls with
RequestMakeCall and RequestSingleStepTransfer. The lab has one node and two
proxies per data centre, so the phones of one data centre meet on one node,
and a short extn-no-answer-timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient

LAB_SUBNETS = {"127.0.1.": "127.0.13.", "127.0.2.": "127.0.14."}
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")
NO_ANSWER_TIMEOUT = 2
LAB_TSERVER = {"extn-no-answer-timeout": NO_ANSWER_TIMEOUT, "wrap-up-time": 0}

pytestmark = pytest.mark.timeout(60)



class Phones:
    """SIPp phones of the lab: register through a proxy, then run a scenario."""

    def __init__(self, lab: Any, sipp: Any) -> None:
        self.lab = lab
        self.sipp = sipp

    def proxy(self, geo: str) -> dict[str, Any]:
        return self.lab.proxies(geo)[0]  # type: ignore[no-any-return]

    def register(self, dn: str, geo: str, address: str, port: int, expires: int = 120) -> Any:
        run = self.sipp.run("lab_register.xml", address=address, proxy=self.proxy(geo),
                            port=port, args=["-s", dn, "-au", dn, "-ap", self.lab.password(dn),
                                             "-set", "expires", str(expires)])
        assert run.ok(), run.errors()
        return run

    def phone(self, dn: str, geo: str, scenario: str, *, ring_ms: int = 200,
              args: tuple[str, ...] = ()) -> Any:
        """``dn`` registered from a fresh address, then running UAS ``scenario`` there."""
        address = self.sipp.address(geo)
        port = self.sipp.free_port(address)
        self.register(dn, geo, address, port)
        return self.sipp.run(scenario, address=address, proxy=self.proxy(geo), port=port,
                             args=["-d", str(ring_ms), *args])

    def call(self, caller: str, callee: str, geo: str, scenario: str = "lab_uac_call.xml",
             *, talk_ms: int = 300) -> Any:
        return self.sipp.run(scenario, address=self.sipp.address(geo), proxy=self.proxy(geo),
                             args=["-s", callee, "-set", "caller", caller, "-au", caller,
                                   "-ap", self.lab.password(caller), "-d", str(talk_ms)])


@pytest.fixture
def phones(lab: Any, sipp_lab: Any) -> Phones:
    return Phones(lab, sipp_lab)


async def ok(run: Any, timeout: float = 30.0) -> bool:
    return bool(await asyncio.to_thread(run.ok, timeout))


def node_of(lab: Any, dn: str) -> str | None:
    entry = lab.registrations().get(dn)
    return entry[0] if entry else None


# --------------------------------------------------------------------------- T-Library


class Desktop:
    """An agent desktop on a t-controller's TCport, collecting unsolicited events."""

    def __init__(self, client: TLibClient) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    async def wait_for(self, name: str, dn: str | None = None,
                       timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event["message"] == name and dn in (None, event.get("AttributeThisDN")):
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} on {dn}: "
                             f"{[(e['message'], e.get('AttributeThisDN')) for e in self.events]}")


@contextlib.asynccontextmanager
async def desktop(lab: Any, geo: str, name: str, *dns: str) -> AsyncIterator[Desktop]:
    node = lab.nodes(geo)[0]
    client = await TLibClient.connect(node["host"], node["tc_port"], name, "legacy")
    desk = Desktop(client)
    try:
        for dn in dns:
            registered = await client.request("RequestRegisterAddress", AttributeThisDN=dn)
            assert registered["message"] == "EventRegistered", registered
        yield desk
    finally:
        await client.close()
        desk.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await desk.task


# =========================================================================== tests


async def test_register_and_unregister_through_a_proxy(lab: Any, phones: Phones,
                                                       sipp_lab: Any) -> None:
    address = sipp_lab.address("dc2")
    port = sipp_lab.free_port(address)
    run = await asyncio.to_thread(phones.register, "1010", "dc2", address, port)
    assert f"sip:1010@{address}:{port}" in run.logs(), run.logs()
    assert node_of(lab, "1010") == lab.nodes("dc2")[0]["name"]
    # every proxy holds the binding (replication); its origin is the DC2 proxy that took it
    dc2_proxies = {p["name"] for p in lab.proxies("dc2")}
    for proxy in lab.proxies():
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5  # replication is asynchronous
        while not found and time.monotonic() < deadline:
            regs = lab.http_json(proxy["host"], proxy["http_port"], "/status/registrations")
            found = [b for b in regs["bindings"] if b["aor"] == f"1010@{lab.domain}"]
            if not found:
                await asyncio.sleep(0.1)
        assert found, (proxy["name"], regs)
        assert found[0]["contact"].startswith(f"sip:1010@{address}:{port}")
        assert found[0]["origin"] in dc2_proxies
    await asyncio.to_thread(phones.register, "1010", "dc2", address, port, 0)
    assert node_of(lab, "1010") is None


async def test_call_answered_and_released(phones: Phones) -> None:
    callee = await asyncio.to_thread(phones.phone, "1002", "dc1", "lab_uas_answer.xml")
    caller = phones.call("1001", "1002", "dc1")
    assert await ok(caller), caller.errors()
    assert await ok(callee), callee.errors()


async def test_cancel_before_answer(phones: Phones) -> None:
    callee = await asyncio.to_thread(phones.phone, "1003", "dc1", "lab_uas_ring.xml")
    caller = phones.call("1001", "1003", "dc1", "lab_uac_cancel.xml", talk_ms=500)
    assert await ok(caller), caller.errors()
    assert await ok(callee), callee.errors()


def forwarded(lab: Any, dn: str, reason: str) -> list[dict[str, Any]]:
    """The nodes' ``call_forwarded`` lines for ``dn`` (its calling profile at work)."""
    found = []
    for node in lab.nodes():
        for line in lab.log(node["name"]).splitlines():
            if '"call_forwarded"' in line:
                entry = json.loads(line)
                if entry.get("dn") == dn and entry.get("reason") == reason:
                    found.append(entry)
    return found


async def test_busy(lab: Any, phones: Phones) -> None:
    """The shipped lab forwards a busy extension to its mailbox (calling profile
    forward-busy => gcti::voicemail): the caller's call is answered by the
    feature-server's voicemail."""
    callee = await asyncio.to_thread(phones.phone, "1004", "dc1", "lab_uas_busy.xml")
    caller = phones.call("1001", "1004", "dc1")
    assert await ok(caller), caller.errors()
    assert await ok(callee), callee.errors()
    [entry] = forwarded(lab, "1004", "busy")
    assert entry["action"] == "voicemail", entry


async def test_no_answer(lab: Any, phones: Phones) -> None:
    """extn-no-answer-timeout: the node stops the ringing phone (CANCEL) and the
    call goes to the extension's mailbox (forward-no-answer), which answers."""
    callee = await asyncio.to_thread(phones.phone, "1005", "dc1", "lab_uas_ring.xml")
    caller = phones.call("1001", "1005", "dc1")
    assert await ok(caller, NO_ANSWER_TIMEOUT + 20), caller.errors()
    assert await ok(callee), callee.errors()
    [entry] = forwarded(lab, "1005", "no-answer")
    assert entry["action"] == "voicemail", entry


async def test_busy_across_data_centres(lab: Any, phones: Phones) -> None:
    callee = await asyncio.to_thread(phones.phone, "1006", "dc2", "lab_uas_busy.xml")
    caller = phones.call("1001", "1006", "dc1")
    assert await ok(caller), caller.errors()
    assert await ok(callee, 3), callee.errors()
    [entry] = forwarded(lab, "1006", "busy")
    assert entry["action"] == "voicemail", entry


async def test_make_call_from_a_desktop(lab: Any, phones: Phones) -> None:
    """RequestMakeCall on TCport: the agent's phone rings and answers, then the
    other party's; the desktop sees EventDialing then EventEstablished."""
    agent = await asyncio.to_thread(phones.phone, "1007", "dc1", "lab_uas_stay.xml")
    other = await asyncio.to_thread(phones.phone, "1008", "dc1", "lab_uas_stay.xml")
    async with desktop(lab, "dc1", "desk-1007", "1007") as desk:
        dialing = await desk.client.request("RequestMakeCall", AttributeThisDN="1007",
                                            AttributeOtherDN="1008")
        assert dialing["message"] == "EventDialing", dialing
        conn_id = dialing["AttributeConnID"]
        established = await desk.wait_for("EventEstablished", "1007")
        assert established["AttributeConnID"] == conn_id
        assert established["AttributeOtherDN"] == "1008"
        released = await desk.client.request("RequestReleaseCall", AttributeThisDN="1007",
                                             AttributeConnID=conn_id)
        assert released["message"] == "EventReleased", released
    assert await ok(agent), agent.errors()
    assert await ok(other), other.errors()


async def test_single_step_transfer_from_a_desktop(lab: Any, phones: Phones) -> None:
    """RequestSingleStepTransfer: the caller, talking to the agent, ends up talking
    to the target (re-INVITEd with the target's media); the agent's phone is
    released; RequestReleaseCall on the target ends the call for both."""
    agent = await asyncio.to_thread(phones.phone, "1009", "dc1", "lab_uas_stay.xml")
    target = await asyncio.to_thread(phones.phone, "1002", "dc1", "lab_uas_stay.xml")
    async with desktop(lab, "dc1", "desk-1009", "1009", "1002") as desk:
        caller = phones.call("1001", "1009", "dc1", "lab_uac_stay.xml")
        established = await desk.wait_for("EventEstablished", "1009")
        conn_id = established["AttributeConnID"]
        moved = await desk.client.request("RequestSingleStepTransfer", AttributeThisDN="1009",
                                          AttributeConnID=conn_id, AttributeOtherDN="1002")
        assert moved["message"] in ("EventReleased", "EventACK"), moved
        if moved["message"] == "EventACK":
            await desk.wait_for("EventReleased", "1009")
        assert await ok(agent), agent.errors()  # the node hung up the agent's phone
        talking = await desk.wait_for("EventEstablished", "1002")
        assert talking["AttributeOtherDN"] == "1001", talking
        released = await desk.client.request("RequestReleaseCall", AttributeThisDN="1002",
                                             AttributeConnID=talking["AttributeConnID"])
        assert released["message"] == "EventReleased", released
        assert await ok(caller), caller.errors()
        assert await ok(target), target.errors()
    assert "reinvite dir=" in caller.logs(), caller.logs()
