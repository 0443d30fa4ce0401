"""End to end: phones -> SIP Proxies -> cluster nodes -> SIP Proxies -> phones
(guide: "SIP Proxy", "SIP Registration", "Configuring DNS Records",
"Configuring the SIP Outbound Proxy DN"; docs/node.md "Reaching phones").

One lab for the module (conftest.py); tests that stop daemons bring them back
before they end. Addresses: DC1 = 127.0.21.x, DC2 = 127.0.22.x.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

DC1 = "127.0.21."
DC2 = "127.0.22."


def replicated(lab: Any, dn: str, origin: str) -> bool:
    """Every running proxy holds ``dn``'s binding taken by ``origin``."""
    return all((b := lab.binding(p, dn)) is not None and b["origin"] == origin
               for p in lab.proxies())


def test_phones_in_two_data_centres_call_each_other(lab: Any, phones: Any) -> None:
    a = phones.register("1001", DC1 + "101")
    b = phones.register("1002", DC2 + "101")
    # the geo-aware SRV answer put each phone on a proxy of its own data centre
    assert a.proxy[0].startswith(DC1) and b.proxy[0].startswith(DC2)
    p_a, p_b = lab.proxy_at(a.proxy[0]), lab.proxy_at(b.proxy[0])
    lab.wait_for("bindings replicated to every proxy",
             lambda: replicated(lab, "1001", p_a) and replicated(lab, "1002", p_b), 5)
    callee_log, caller_log = phones.call_and_answer(a, b)
    # both proxies stayed in the dialog: ACK and BYE went through them
    assert f"sip:{a.proxy[0]}:" in caller_log and f"sip:{b.proxy[0]}:" in callee_log
    phones.call_and_answer(b, a)


def test_inbound_call_on_another_node_reaches_the_phone(lab: Any, phones: Any) -> None:
    phone = phones.register("1003", DC1 + "103")
    home = lab.wait_for("a node holds 1003's registration", lambda: lab.node_of("1003"), 5)
    for other in (n for n in lab.nodes() if n != home):
        uas = phones.answer(phone)
        phones.inbound(DC1 + "140" if other in lab.nodes("dc1") else DC2 + "140", other,
                       "1003").ok()
        uas.ok()
        assert '"call_via_outbound_proxy"' in lab.log(other) or \
            "call_via_outbound_proxy" in lab.log(other)
        # the SIP Outbound Proxy DN says transport=tcp: the node checks and uses its
        # proxies over TCP, from its own address (the proxies know it by that address)
        outbound = lab.status(other, "/status/outbound")["proxies"]
        assert outbound["transport"] == "TCP"
        assert outbound["targets"] and all(t["target"].startswith("tcp:")
                                           for t in outbound["targets"])
        lab.wait_for(f"{other} has its proxies in service over TCP", lambda o=other: all(
            t["usable"] for t in lab.status(o, "/status/outbound")["proxies"]["targets"]),
            lab.node_oos_check + lab.node_oos_force + 1.0)


def test_proxy_restart_catches_up_and_routes(lab: Any, phones: Any) -> None:
    p1, p2 = (lab.proxies()[n] for n in ("SIPProxy_dc1_1", "SIPProxy_dc1_2"))
    callee = phones.register("1004", DC1 + "104", proxy=(p1["host"], p1["sip_port"]))
    caller = phones.register("1005", DC1 + "105", proxy=(p2["host"], p2["sip_port"]))
    lab.wait_for("1004 replicated", lambda: replicated(lab, "1004", "SIPProxy_dc1_1"), 5)
    phones.call_and_answer(caller, callee)  # registered through proxy 1, called through 2
    lab.restart("SIPProxy_dc1_2")  # returns once /healthz says the bindings are synced
    binding = lab.binding("SIPProxy_dc1_2", "1004")
    assert binding is not None and binding["origin"] == "SIPProxy_dc1_1"
    phones.call_and_answer(caller, callee)


def test_killed_node_leaves_the_rotation_and_calls_go_on(lab: Any, phones: Any) -> None:
    callee = phones.register("1006", DC1 + "106")
    caller = phones.register("1007", DC1 + "107")
    victim = lab.wait_for("a node holds 1006", lambda: lab.node_of("1006"), 5)
    geo = "dc1" if victim in lab.nodes("dc1") else "dc2"
    lab.kill(victim)
    try:
        bound = lab.proxy_oos_check + lab.proxy_oos_force + 1.0
        for proxy in lab.proxies(geo):
            lab.wait_for(f"{proxy} stops using {victim}", lambda p=proxy: not lab.status(
                p, "/status/nodes")["nodes"][victim]["usable"], bound)
        # 1006's node is gone: the remaining nodes reach it through the proxies,
        # whatever node each Call-ID hashes to
        for _ in range(3):
            phones.call_and_answer(caller, callee)
        # and a phone can register again (on a node that is up)
        phones.register("1006", callee.address, proxy=callee.proxy, port=callee.port)
        assert lab.node_of("1006") not in (None, victim)
    finally:
        lab.restart(victim)


def test_data_centre_without_proxies_fails_over_by_srv_priority(lab: Any,
                                                                 phones: Any) -> None:
    dc1_proxies = list(lab.proxies("dc1"))
    for name in dc1_proxies:
        lab.kill(name)
    try:
        # a DC1 phone: SRV gives DC1's proxies at priority 10, DC2's at 200
        phone = phones.register("1008", DC1 + "108")
        assert phone.proxy[0].startswith(DC2)
        origin = lab.proxy_at(phone.proxy[0])
        caller = phones.register("1009", DC2 + "109")
        phones.call_and_answer(caller, phone)
        # a call taken by a DC1 node: its own proxies are out of service, so the
        # node sends to DC2's (the SRV records of priority 200)
        bound = lab.node_oos_check + lab.node_oos_force + 1.0
        for node in lab.nodes("dc1"):
            lab.wait_for(f"{node} sees DC1's proxies out of service", lambda n=node: all(
                not t["usable"] for t in lab.status(n, "/status/outbound")["proxies"]["targets"]
                if t["target"].split(":")[1].startswith(DC1)), bound)
        uas = phones.answer(phone)
        phones.inbound(DC1 + "140", next(iter(lab.nodes("dc1"))), "1008").ok()
        uas.ok()
    finally:
        for name in dc1_proxies:
            lab.restart(name)
    # the phone keeps renewing with the data centre it registered with ...
    phones.register("1008", phone.address, proxy=phone.proxy, port=phone.port)
    assert lab.binding(dc1_proxies[0], "1008")["origin"] == origin
    # ... and returns to DC1 when it starts again (guide: "SIP registration in
    # failover scenarios based on SRV records")
    again = phones.register("1008", phone.address, port=phone.port)
    assert again.proxy[0].startswith(DC1)
    lab.wait_for("1008 moved back to DC1",
                 lambda: replicated(lab, "1008", lab.proxy_at(again.proxy[0])), 5)
    phones.call_and_answer(caller, again)
