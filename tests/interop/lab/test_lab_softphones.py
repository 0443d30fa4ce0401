"""Real softphones through the two-data-centre lab.

baresip (and linphonec, another SIP stack) register through the lab's SIP
Proxies and call each other; each plays a tone of its own frequency and
records what it hears, so a test sees audio flow both ways. Phones find the
proxies by DNS through their own data centre's resolver (the geo-aware DNS
answers by the resolver's address), so a phone in DC1 uses DC1's proxies and
node and a phone in DC2 uses DC2's.

The lab here has one node (sip-server + t-controller) and two proxies per
data centre, so two phones of one data centre always meet on the same node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

LAB_SUBNETS = {"127.0.1.": "127.0.11.", "127.0.2.": "127.0.12."}
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")

pytestmark = pytest.mark.timeout(90)

CALLER_HZ = 440.0
CALLEE_HZ = 880.0
#: RMS of a 16-bit recording above which it is not silence (the tones have ~8500)
SILENCE_RMS = 500.0
#: seconds both sides talk before the hang-up
TALK = 2.0



def registered_on(lab: Any, dn: str) -> tuple[str, str]:
    """(node name, geo-location) of the node holding ``dn``'s registration."""
    regs = lab.registrations()
    assert dn in regs, f"{dn} not registered on any node: {sorted(regs)}"
    node_name = regs[dn][0]
    for geo in lab.desc["data_centres"]:
        if any(n["name"] == node_name for n in lab.nodes(geo)):
            return node_name, str(geo)
    raise AssertionError(node_name)


def assert_heard(heard: Any, tone: float, other: float, who: str) -> None:
    assert heard.rms > SILENCE_RMS, f"{who} heard silence: {heard}"
    assert heard.power[tone] > 10 * heard.power[other], f"{who} did not hear {tone} Hz: {heard}"


def baresip_call(lab: Any, caller: Any, callee: Any, callee_dn: str, hangup_by: str) -> None:
    """``caller`` dials ``callee``, both talk, one hangs up; both heard the other."""
    heard_before = {p.name: p.recordings() for p in (caller, callee)}
    marks = {p.name: p.mark() for p in (caller, callee)}
    caller.dial(f"sip:{callee_dn}@{lab.domain}")
    caller.wait_event("CALL_ESTABLISHED", after=marks[caller.name])
    callee.wait_event("CALL_ESTABLISHED", after=marks[callee.name])
    time.sleep(TALK)
    (caller if hangup_by == "caller" else callee).hangup()
    for phone in (caller, callee):
        phone.wait_event("CALL_CLOSED", after=marks[phone.name])
    assert_heard(caller.heard(heard_before[caller.name]), CALLEE_HZ, CALLER_HZ, "caller")
    assert_heard(callee.heard(heard_before[callee.name]), CALLER_HZ, CALLEE_HZ, "callee")


def test_register_by_naptr_in_each_data_centre(
    lab: Any, baresip_phone: Callable[..., Any], dc_resolvers: dict[str, Any],
) -> None:
    """RFC 3263 §4.1: a phone that only knows its domain finds the proxies by NAPTR
    then SRV; the priority-10 SRV targets of its view are its own data centre's."""
    baresip_phone("1001", "dc1", route="naptr")
    baresip_phone("1002", "dc2", route="naptr")
    assert registered_on(lab, "1001")[1] == "dc1"
    assert registered_on(lab, "1002")[1] == "dc2"
    assert dc_resolvers["dc1"].queries > 0 and dc_resolvers["dc2"].queries > 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_by_srv_outbound_proxy(
    lab: Any, baresip_phone: Callable[..., Any], transport: str,
) -> None:
    """RFC 3263 §4.2: outbound proxy sip:<SRV FQDN>;transport=T, no port -> SRV."""
    baresip_phone("1003", "dc1", route="srv", transport=transport)
    baresip_phone("1004", "dc2", route="srv", transport=transport)
    assert registered_on(lab, "1003")[1] == "dc1"
    assert registered_on(lab, "1004")[1] == "dc2"


@pytest.mark.parametrize(("route", "transport", "hangup_by"), [
    ("address", "udp", "caller"), ("address", "udp", "callee"),
    ("naptr", "tcp", "callee"), ("address", "tcp", "caller")])
def test_baresip_call_in_a_data_centre(
    lab: Any, baresip_phone: Callable[..., Any], route: str, transport: str, hangup_by: str,
) -> None:
    caller = baresip_phone("1001", "dc1", route=route, transport=transport, tone_hz=CALLER_HZ)
    callee = baresip_phone("1002", "dc1", route=route, transport=transport, tone_hz=CALLEE_HZ)
    baresip_call(lab, caller, callee, "1002", hangup_by)


@pytest.mark.parametrize(("route", "transport", "hangup_by"),
                         [("address", "udp", "callee"), ("naptr", "tcp", "caller")])
def test_baresip_call_across_data_centres(
    lab: Any, baresip_phone: Callable[..., Any], route: str, transport: str, hangup_by: str,
) -> None:
    caller = baresip_phone("1005", "dc1", route=route, transport=transport, tone_hz=CALLER_HZ)
    callee = baresip_phone("1006", "dc2", route=route, transport=transport, tone_hz=CALLEE_HZ)
    assert registered_on(lab, "1005")[1] == "dc1"
    assert registered_on(lab, "1006")[1] == "dc2"
    baresip_call(lab, caller, callee, "1006", hangup_by)


def _linphonec_call(lab: Any, baresip_phone: Callable[..., Any],
                    linphonec_phone: Callable[..., Any], audio: Any,
                    caller_geo: str, callee_dn: str) -> None:
    """baresip (440 Hz) calls linphonec (880 Hz, auto-answer), then linphonec hangs up."""
    record = audio.directory / f"linphonec-{callee_dn}-heard.wav"
    baresip = baresip_phone("1007", caller_geo, route="address", tone_hz=CALLER_HZ)
    linphone = linphonec_phone(callee_dn, "dc1", tone=audio.tone(CALLEE_HZ), record=record)
    assert callee_dn in lab.registrations(), "\n".join(linphone.output[-40:])
    assert registered_on(lab, callee_dn)[1] == "dc1"
    before = baresip.recordings()
    mark, out_mark = baresip.mark(), linphone.mark()
    baresip.dial(f"sip:{callee_dn}@{lab.domain}")
    baresip.wait_event("CALL_ESTABLISHED", after=mark)
    linphone.wait_for(r"[Cc]all .* connected", after=out_mark)
    time.sleep(TALK)
    linphone.send("terminate")
    baresip.wait_event("CALL_CLOSED", after=mark)
    linphone.wait_for(r"[Cc]all .* ended", after=out_mark)
    assert_heard(baresip.heard(before), CALLEE_HZ, CALLER_HZ, "baresip")
    assert_heard(audio.analyse(record), CALLER_HZ, CALLEE_HZ, "linphonec")


def test_baresip_calls_linphonec_in_a_data_centre(
    lab: Any, baresip_phone: Callable[..., Any], linphonec_phone: Callable[..., Any],
    audio: Any,
) -> None:
    _linphonec_call(lab, baresip_phone, linphonec_phone, audio, "dc1", "1008")


def test_baresip_calls_linphonec_across_data_centres(
    lab: Any, baresip_phone: Callable[..., Any], linphonec_phone: Callable[..., Any],
    audio: Any,
) -> None:
    _linphonec_call(lab, baresip_phone, linphonec_phone, audio, "dc2", "1009")
