"""A call outlives the SIP Proxy it was record-routed through.

Two baresip phones of DC1 call each other through the lab (their outbound
proxy is the SRV name). The proxy at the callee's side of the call (the top
Record-Route of the INVITE the callee got) is then killed. The call is ended
from the node (RequestReleaseCall on a desktop, as an agent's desktop does):
the node's BYE to the callee finds that proxy dead, goes through another
proxy of the cluster, which takes the dead proxy's dialog over (its Route
names a peer whose replication link is gone) and delivers the BYE. Both
phones see the call end.

The other way round: a phone that reached the proxy by the data centre's
proxy name (its outbound proxy is the SRV name) finds that name in the
Record-Route on its side. The proxy the caller's INVITE went through is
killed and the caller hangs up: its BYE, sent by SRV to a proxy of the data
centre that is alive (baresip tries the next SRV target when the first does
not answer), reaches the node and the callee.

And the called phone: it registered by the name, so the proxy that delivers
the INVITE record-routes the callee's side by the name too (the binding
records how the phone registered). That proxy is killed and the callee hangs
up: its BYE finds a live proxy by SRV, the node and the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient

LAB_SUBNETS = {"127.0.1.": "127.0.165.", "127.0.2.": "127.0.166."}

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(120)


def the_call(lab: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(node entry, call) of the one call in progress."""
    for node in lab.nodes():
        for call in lab.http_json(node["host"], node["http_port"], "/status/calls"):
            return node, call
    raise AssertionError("no call on any node")


def record_routes(log: str, start: str) -> list[str]:
    """The Record-Route entries, top first, of the last message of an INVITE
    transaction (its CSeq) in a baresip SIP trace that begins with ``start``."""
    heads = [re.split(r"\r?\n\r?\n", part, maxsplit=1)[0] for part in log.split(start)[1:]]
    heads = [h for h in heads if re.search(r"(?mi)^CSeq:\s*\d+\s+INVITE", h)]
    assert heads, f"no {start!r} of an INVITE in the trace"
    entries: list[str] = []
    for line in heads[-1].splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "record-route":
            entries += [e.strip() for e in value.split(",") if e.strip()]
    return entries


def lab_command(lab: Any, action: str, name: str) -> None:
    """``sipcluster lab kill|restart NAME`` on the running lab."""
    done = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "--dir",
                           str(lab.directory), action, name],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def killed(lab: Any, proxy: dict[str, Any]) -> Iterator[None]:
    """``proxy`` killed (SIGKILL) for the block, restarted after it, whatever the
    block did: the module's next test finds every proxy up."""
    lab_command(lab, "kill", proxy["name"])
    try:
        yield
    finally:
        lab_command(lab, "restart", proxy["name"])


def received(phone: Any, method: str) -> bool:
    """``phone``'s SIP trace shows a ``method`` request that came to it (not one
    it sent): a ``UDP FROM -> PHONE`` line, then the request line."""
    lines = phone.log_path.read_text(errors="replace").splitlines()
    to_phone = f"-> {phone.address}:{phone.sip_port}"
    return any(line.rstrip().endswith(to_phone) and nxt.startswith(f"{method} sip:")
               for line, nxt in itertools.pairwise(lines))


@dataclass
class EstablishedCall:
    """Two baresip phones of dc1 (outbound proxy: the SRV name) in a call."""

    lab: Any
    caller: Any
    callee: Any
    caller_mark: int
    callee_mark: int

    def proxy(self, side: str) -> dict[str, Any]:
        """The lab's entry of the proxy on ``side`` ("caller" or "callee") of the
        call: the phone's side is record-routed by the data centre's proxy name,
        the proxy's own address right beside it (RFC 5658 double Record-Route):
        in the caller's 200 OK the bottom two entries, in the callee's INVITE the
        top two."""
        if side == "caller":
            routes = record_routes(self.caller.log_path.read_text(errors="replace"),
                                   "SIP/2.0 200 OK")
            named, beside = len(routes) - 1, len(routes) - 2
        else:
            routes = record_routes(self.callee.log_path.read_text(errors="replace"),
                                   "INVITE sip:")
            named, beside = 0, 1
        assert len(routes) >= 2, routes
        assert routes[named].startswith(f"<sip:{self.lab.srv_fqdn};transport=udp;lr;"), routes
        assert ";sc-node=" in routes[named], routes
        address = re.match(r"<sip:([0-9.]+):(\d+)", routes[beside])
        assert address, routes
        host, port = address.group(1), int(address.group(2))
        [proxy] = [p for p in self.lab.proxies() if p["host"] == host and p["sip_port"] == port]
        return proxy


def established_call(lab: Any, baresip_phone: Callable[..., Any], caller_dn: str,
                     callee_dn: str) -> EstablishedCall:
    """``caller_dn`` calls ``callee_dn`` (both of dc1, by the SRV name); both answered.
    The phones play for longer than a test waits (a BYE to a dead proxy waits
    for its 32 s timeout before the next SRV target), so neither ends the call
    because its audio ran out."""
    caller = baresip_phone(caller_dn, "dc1", route="srv", tone_seconds=120)
    callee = baresip_phone(callee_dn, "dc1", route="srv", tone_seconds=120)
    call = EstablishedCall(lab, caller, callee, caller.mark(), callee.mark())
    caller.dial(f"sip:{callee_dn}@{lab.domain}")
    caller.wait_event("CALL_ESTABLISHED", after=call.caller_mark)
    callee.wait_event("CALL_ESTABLISHED", after=call.callee_mark)
    return call


async def release_call(node: dict[str, Any], conn_id: str) -> dict[str, Any]:
    """RequestReleaseCall from a desktop of 1003 on ``node`` (as an agent's does)."""
    desk = await TLibClient.connect(node["host"], node["tc_port"], "desk-1003", "legacy")
    try:
        await desk.request("RequestRegisterAddress", AttributeThisDN="1003")
        await asyncio.sleep(1.0)  # the other proxies see the replication link gone
        return await desk.request("RequestReleaseCall", AttributeThisDN="1003",
                                  AttributeConnID=conn_id)
    finally:
        await desk.close()


def wait_out_of_service(lab: Any, node: dict[str, Any], proxy: dict[str, Any]) -> None:
    """Until the node's checks of the proxies (oos-check / oos-force) see ``proxy`` gone."""
    target = f"{proxy['host']}:{proxy['sip_port']}"

    def out_of_service() -> bool:
        page = lab.http_json(node["host"], node["http_port"], "/status/outbound")
        targets = (page.get("proxies") or {}).get("targets", [])
        return any(target in str(t.get("target")) and not t.get("usable") for t in targets)

    deadline = time.monotonic() + 40
    while not out_of_service():
        assert time.monotonic() < deadline, lab.http_json(node["host"], node["http_port"],
                                                          "/status/outbound")
        time.sleep(0.5)


def test_the_node_ends_a_call_whose_proxy_died(
    lab: Any, baresip_phone: Callable[..., Any],
) -> None:
    call = established_call(lab, baresip_phone, "1003", "1004")
    proxy = call.proxy("callee")
    node, node_call = the_call(lab)
    with killed(lab, proxy):
        wait_out_of_service(lab, node, proxy)
        answer = asyncio.run(release_call(node, node_call["conn_id"]))
        assert answer["message"] == "EventReleased", answer
        call.callee.wait_event("CALL_CLOSED", after=call.callee_mark, timeout=20)
        call.caller.wait_event("CALL_CLOSED", after=call.caller_mark, timeout=20)
        assert received(call.callee, "BYE") and received(call.caller, "BYE")
        assert '"sip_in_dialog_via_another_proxy"' in lab.log(node["name"])


def test_the_phone_hangs_up_a_call_whose_proxy_died(
    lab: Any, baresip_phone: Callable[..., Any],
) -> None:
    call = established_call(lab, baresip_phone, "1005", "1006")
    # the caller's 200 OK: the caller's side is record-routed by the name every
    # proxy of dc1 answers for, the node's side by the proxy's address above it
    proxy = call.proxy("caller")
    with killed(lab, proxy):
        time.sleep(1.0)  # the other proxies see the replication link gone
        call.caller.hangup()
        # a BYE to the dead proxy first waits for its transaction timeout (32 s)
        call.callee.wait_event("CALL_CLOSED", after=call.callee_mark, timeout=60)
        call.caller.wait_event("CALL_CLOSED", after=call.caller_mark, timeout=20)
        assert received(call.callee, "BYE")


def test_the_called_phone_hangs_up_a_call_whose_proxy_died(
    lab: Any, baresip_phone: Callable[..., Any],
) -> None:
    call = established_call(lab, baresip_phone, "1007", "1008")
    # the callee's INVITE: the callee's side is record-routed by the name (it
    # registered by it), the node's side by the address of the proxy that
    # delivered the call, right below it
    proxy = call.proxy("callee")
    with killed(lab, proxy):
        time.sleep(1.0)  # the other proxies see the replication link gone
        call.callee.hangup()
        # a BYE to the dead proxy first waits for its transaction timeout (32 s)
        call.caller.wait_event("CALL_CLOSED", after=call.caller_mark, timeout=60)
        call.callee.wait_event("CALL_CLOSED", after=call.callee_mark, timeout=20)
        assert received(call.caller, "BYE")
