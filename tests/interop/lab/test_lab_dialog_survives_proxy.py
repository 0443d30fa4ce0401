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
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
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


def test_the_node_ends_a_call_whose_proxy_died(
    lab: Any, baresip_phone: Callable[..., Any],
) -> None:
    caller = baresip_phone("1003", "dc1", route="srv")
    callee = baresip_phone("1004", "dc1", route="srv")
    a_mark, b_mark = caller.mark(), callee.mark()
    caller.dial(f"sip:1004@{lab.domain}")
    caller.wait_event("CALL_ESTABLISHED", after=a_mark)
    callee.wait_event("CALL_ESTABLISHED", after=b_mark)
    log = callee.log_path.read_text(errors="replace")
    invite = log[log.rindex("INVITE sip:1004"):]
    rr = re.search(r"Record-Route: <sip:([0-9.]+):(\d+)", invite)
    assert rr, invite[:2000]
    host, port = rr.group(1), int(rr.group(2))
    [proxy] = [p for p in lab.proxies() if p["host"] == host and p["sip_port"] == port]
    node, call = the_call(lab)
    killed = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "--dir",
                             str(lab.directory), "kill", proxy["name"]],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0, killed.stdout + killed.stderr

    async def release() -> dict[str, Any]:
        desk = await TLibClient.connect(node["host"], node["tc_port"], "desk-1003", "legacy")
        try:
            await desk.request("RequestRegisterAddress", AttributeThisDN="1003")
            await asyncio.sleep(1.0)  # the other proxies see the replication link gone
            return await desk.request("RequestReleaseCall", AttributeThisDN="1003",
                                      AttributeConnID=call["conn_id"])
        finally:
            await desk.close()

    # the node's out-of-service checks of the proxies (oos-check / oos-force) see it gone
    def out_of_service() -> bool:
        page = lab.http_json(node["host"], node["http_port"], "/status/outbound")
        targets = (page.get("proxies") or {}).get("targets", [])
        return any(f"{host}:{port}" in str(t.get("target")) and not t.get("usable")
                   for t in targets)

    deadline = time.monotonic() + 40
    while not out_of_service():
        assert time.monotonic() < deadline, lab.http_json(node["host"], node["http_port"],
                                                          "/status/outbound")
        time.sleep(0.5)
    answer = asyncio.run(release())
    assert answer["message"] == "EventReleased", answer
    callee.wait_event("CALL_CLOSED", after=b_mark, timeout=20)
    caller.wait_event("CALL_CLOSED", after=a_mark, timeout=20)
    node_log = lab.log(node["name"])
    assert '"sip_in_dialog_via_another_proxy"' in node_log
    restarted = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "--dir",
                                str(lab.directory), "restart", proxy["name"]],
                               cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def _record_routes(log: str, start: str) -> list[str]:
    """The Record-Route entries, top first, of the last message in a baresip SIP
    trace that begins with ``start``."""
    message = log[log.rindex(start):]
    head = re.split(r"\r?\n\r?\n", message, maxsplit=1)[0]
    entries: list[str] = []
    for line in head.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "record-route":
            entries += [e.strip() for e in value.split(",") if e.strip()]
    return entries


def test_the_phone_hangs_up_a_call_whose_proxy_died(
    lab: Any, baresip_phone: Callable[..., Any],
) -> None:
    caller = baresip_phone("1005", "dc1", route="srv")
    callee = baresip_phone("1006", "dc1", route="srv")
    a_mark, b_mark = caller.mark(), callee.mark()
    caller.dial(f"sip:1006@{lab.domain}")
    caller.wait_event("CALL_ESTABLISHED", after=a_mark)
    callee.wait_event("CALL_ESTABLISHED", after=b_mark)
    # the caller's 200 OK: the caller's side is record-routed by the name every
    # proxy of dc1 answers for, the node's side by the proxy's address above it
    routes = _record_routes(caller.log_path.read_text(errors="replace"), "SIP/2.0 200 OK")
    named = [i for i, e in enumerate(routes) if e.startswith("<sip:spx-srv.cluster.lab;")]
    assert named and named[-1] == len(routes) - 1 and named[-1] > 0, routes
    by_address = re.match(r"<sip:([0-9.]+):(\d+)", routes[named[-1] - 1])
    assert by_address, routes
    host, port = by_address.group(1), int(by_address.group(2))
    [proxy] = [p for p in lab.proxies() if p["host"] == host and p["sip_port"] == port]
    killed = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "--dir",
                             str(lab.directory), "kill", proxy["name"]],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    time.sleep(1.0)  # the other proxies see the replication link gone
    caller.hangup()
    # a BYE to the dead proxy first waits for its transaction timeout (32 s)
    callee.wait_event("CALL_CLOSED", after=b_mark, timeout=60)
    caller.wait_event("CALL_CLOSED", after=a_mark, timeout=20)
    assert "BYE sip:" in callee.log_path.read_text(errors="replace")
    restarted = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "--dir",
                                str(lab.directory), "restart", proxy["name"]],
                               cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
