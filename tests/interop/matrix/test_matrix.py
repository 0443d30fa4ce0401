"""The interop matrix: scenario x peer x transport against the shipped lab.

Every cell is one parametrized case of ``test_cell`` (id ``SCENARIO-PEER-
TRANSPORT``); ``bench/interop_matrix.py`` runs this module and writes the table
to docs/interop.md. Peers: baresip 1.0 and linphonec (real softphones: tone
out, recording analysed by Goertzel, so audio is checked both ways), SIPp
(scripted signalling, no media), and Kamailio as an edge proxy (the SBC
position) with baresip phones behind it. The lab is the shipped one
(deploy/etc/cluster.toml moved to 127.0.171.x / 127.0.172.x) without the
second node of each data centre and the applications no cell needs.

A cell the peer cannot do is ``pytest.xfail`` with the peer's evidence (its
version, the command it lacks); a cell our product cannot do is a strict
xfail whose reason starts with "defect:" (it turns into a failure when fixed,
so the matrix is updated). A tshark capture runs over the whole module and
the last test decodes every SIP message the lab's daemons sent.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.interop.lab.conftest import analyse_wav, write_tone
from tests.interop.matrix.conftest import fs_json, fs_metric
from tests.support.processes import START_TIMEOUT

LAB_SUBNETS = {"127.0.1.": "127.0.171.", "127.0.2.": "127.0.172."}
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2", "Director", "SA_1", "SA_2",
            "RTM1", "Collective_Boca")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

A_HZ = 440.0
B_HZ = 880.0
SILENCE_RMS = 500.0
TALK = 1.5
#: the shipped lab's extn-no-answer-timeout (s); the no-answer cells wait it out
NO_ANSWER = 12

SCENARIOS = ["register", "unregister", "call", "cancel", "busy", "no-answer", "hold-resume",
             "blind-transfer", "attended-transfer", "dtmf", "mwi"]
COLUMNS = [("baresip", "udp"), ("baresip", "tcp"), ("baresip", "tls"),
           ("linphonec", "udp"), ("linphonec", "tcp"), ("linphonec", "tls"),
           ("sipp", "udp"), ("sipp", "tcp"), ("sipp", "tls"),
           ("kamailio", "udp"), ("kamailio", "tcp")]



@dataclass
class Ctx:
    """What a cell has at hand."""

    lab: Any
    tmp: Path
    baresip: Callable[..., Any]
    linphonec: Callable[..., Any]
    linphonec_tls: Callable[..., Any]
    sipp: Any
    request: pytest.FixtureRequest

    @property
    def proxy(self) -> dict[str, Any]:
        return self.lab.proxies("dc1")[0]  # type: ignore[no-any-return]

    @property
    def via(self) -> str:
        return f"{self.proxy['host']}:{self.proxy['sip_port']}"

    def kamailio(self) -> Any:
        return self.request.getfixturevalue("kamailio")


# =========================================================================== observations


def bindings(lab: Any, dn: str) -> list[str]:
    """Contacts of ``dn`` in the first dc1 proxy's registrar."""
    proxy = lab.proxies("dc1")[0]
    regs = lab.http_json(proxy["host"], proxy["http_port"], "/status/registrations")
    return [str(b["contact"]) for b in regs["bindings"]
            if b.get("aor") in (f"{dn}@{lab.domain}", f"sip:{dn}@{lab.domain}")]


def wait_binding(lab: Any, dn: str, host: str | None, timeout: float = 8.0, *,
                 gone: str | None = None) -> list[str]:
    """Until ``dn`` has a binding at ``host`` (``None``: until it has none; with
    ``gone``: until it has none at that address)."""
    deadline = time.monotonic() + timeout
    while True:
        found = bindings(lab, dn)
        if gone is not None:
            if not any(gone in c for c in found):
                return found
        elif (host is None and not found) or (host is not None and
                                              any(host in c for c in found)):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{dn}: bindings {found}, wanted {host or 'none'}"
                                 + (f" (none at {gone})" if gone else ""))
        time.sleep(0.2)


def assert_heard(heard: Any, tone: float, other: float, who: str) -> None:
    assert heard.rms > SILENCE_RMS, f"{who} heard silence: {heard}"
    assert heard.power[tone] > 10 * heard.power[other], f"{who} did not hear {tone} Hz: {heard}"


def forwarded(lab: Any, dn: str, reason: str) -> list[str]:
    """The node's ``call_forwarded`` lines for ``dn`` with ``reason`` (busy, no-answer)."""
    out = []
    for node in lab.nodes():
        for line in lab.log(node["name"]).splitlines():
            if ('"call_forwarded"' in line and f'"dn": "{dn}"' in line
                    and f'"reason": "{reason}"' in line):
                out.append(line)
    return out


def mailbox_new(lab: Any, dn: str) -> int:
    return int(fs_json(lab, f"/api/mailboxes/{dn}")["new"])


def until(check: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(0.2)


def tls_listener(ctx: Ctx) -> None:
    """lab.json gives the dc1 proxy's TLS port and the lab CA: a handshake that
    trusts only that CA and checks the proxy's name succeeds (RFC 5922)."""
    port = ctx.proxy["tls_port"]
    assert port == 5061, ctx.proxy  # RFC 3261 §26.2: sips on 5061
    context = ssl.create_default_context(cafile=ctx.lab.desc["certificates"]["ca"])
    with socket.create_connection((ctx.proxy["host"], port), timeout=2) as raw, \
            context.wrap_socket(raw, server_hostname=ctx.proxy["host"]) as tls:
        assert tls.version()


# =========================================================================== baresip


def _b(ctx: Ctx, dn: str, transport: str, hz: float = A_HZ, *, edge: bool = False,
       mwi: bool = False) -> Any:
    via = None
    if edge:
        k = ctx.kamailio()
        via = (k.host, k.port)
    return ctx.baresip(dn, transport=transport, tone_hz=hz, via=via, mwi=mwi)


def _baresip_talk(ctx: Ctx, a: Any, b: Any, b_dn: str) -> None:
    before = {p.name: p.recordings() for p in (a, b)}
    marks = {p.name: p.mark() for p in (a, b)}
    a.dial(f"sip:{b_dn}@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=marks[a.name])
    b.wait_event("CALL_ESTABLISHED", after=marks[b.name])
    time.sleep(TALK)
    a.hangup()
    for phone in (a, b):
        phone.wait_event("CALL_CLOSED", after=marks[phone.name])
    assert_heard(a.heard(before[a.name]), B_HZ, A_HZ, "caller")
    assert_heard(b.heard(before[b.name]), A_HZ, B_HZ, "callee")


def baresip_register(ctx: Ctx, transport: str, edge: bool = False) -> None:
    phone = _b(ctx, "1001", transport, edge=edge)
    contacts = wait_binding(ctx.lab, "1001", phone.address)
    assert any(f"transport={transport}" in c.lower() or transport == "udp" for c in contacts), \
        contacts
    if edge:
        assert "edge-relay REGISTER" in ctx.kamailio().log()


def baresip_unregister(ctx: Ctx, transport: str, edge: bool = False) -> None:
    phone = _b(ctx, "1001", transport, edge=edge)
    wait_binding(ctx.lab, "1001", phone.address)
    phone.stop()  # quit: REGISTER with Expires: 0 first
    wait_binding(ctx.lab, "1001", None)
    assert "1001" not in ctx.lab.registrations()


def baresip_call(ctx: Ctx, transport: str, edge: bool = False) -> None:
    a = _b(ctx, "1001", transport, A_HZ, edge=edge)
    b = _b(ctx, "1002", transport, B_HZ, edge=edge)
    _baresip_talk(ctx, a, b, "1002")
    if edge:
        log = ctx.kamailio().log()
        assert re.search(r"edge-relay INVITE sip:1002@", log), log[-2000:]
        assert "edge-relay in-dialog BYE" in log, log[-2000:]


def baresip_cancel(ctx: Ctx, transport: str, edge: bool = False) -> None:
    seen = len(ctx.kamailio().log()) if edge else 0
    callee = ctx.sipp.phone("1003", "lab_uas_ring.xml", transport=_sipp_t(transport))
    a = _b(ctx, "1001", transport, edge=edge)
    mark = a.mark()
    a.dial(f"sip:1003@{ctx.lab.domain}")
    a.wait_event("CALL_RINGING", after=mark)
    a.hangup()
    a.wait_event("CALL_CLOSED", after=mark)
    assert callee.ok(10), callee.errors()  # it saw the CANCEL, answered 200 then 487
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        assert re.search(r"edge-relay INVITE sip:1003@(.|\n)*edge-relay CANCEL sip:1003@",
                         edge_log), edge_log[-2000:]


def baresip_to_voicemail(ctx: Ctx, transport: str, dn: str, scenario: str, reason: str,
                         wait: float, edge: bool = False) -> None:
    seen = len(ctx.kamailio().log()) if edge else 0
    callee = ctx.sipp.phone(dn, scenario, transport=_sipp_t(transport), timeout=int(wait) + 20)
    a = _b(ctx, "1001", transport, edge=edge)
    before, mark = a.recordings(), a.mark()
    messages = mailbox_new(ctx.lab, dn)
    a.dial(f"sip:{dn}@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=mark, timeout=wait)
    time.sleep(4.5)  # greeting and beep (about 2.5 s), then the caller's tone is the message
    a.hangup()
    a.wait_event("CALL_CLOSED", after=mark)
    assert callee.ok(10), callee.errors()
    assert forwarded(ctx.lab, dn, reason), f"no call_forwarded {reason} for {dn}"
    heard = a.heard(before)
    assert heard.rms > SILENCE_RMS, f"the caller heard no greeting: {heard}"
    until(lambda: mailbox_new(ctx.lab, dn) == messages + 1, f"a new message in {dn}")
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        assert re.search(rf"edge-relay INVITE sip:{dn}@", edge_log), edge_log[-2000:]


def baresip_busy(ctx: Ctx, transport: str, edge: bool = False) -> None:
    baresip_to_voicemail(ctx, transport, "1004", "lab_uas_busy.xml", "busy", 10, edge)


def baresip_no_answer(ctx: Ctx, transport: str, edge: bool = False) -> None:
    baresip_to_voicemail(ctx, transport, "1005", "lab_uas_ring.xml", "no-answer", NO_ANSWER + 8,
                         edge)


def baresip_hold_resume(ctx: Ctx, transport: str, edge: bool = False) -> None:
    seen = len(ctx.kamailio().log()) if edge else 0
    callee = ctx.sipp.phone("1006", "matrix_uas_hold.xml", transport=_sipp_t(transport))
    a = _b(ctx, "1001", transport, edge=edge)
    mark = a.mark()
    a.dial(f"sip:1006@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=mark)
    time.sleep(0.5)
    assert a.command("hold").get("ok"), a.log()
    time.sleep(1.0)
    assert a.command("resume").get("ok"), a.log()
    time.sleep(1.0)
    a.hangup()
    a.wait_event("CALL_CLOSED", after=mark)
    assert callee.ok(10), callee.errors()
    dirs = re.findall(r"reinvite dir=(\w+)", callee.logs())
    assert dirs[:2] == ["sendonly", "sendrecv"] or dirs[:2] == ["inactive", "sendrecv"], dirs
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        assert re.search(r"edge-relay in-dialog INVITE ", edge_log), edge_log[-2000:]


def baresip_blind_transfer(ctx: Ctx, transport: str, edge: bool = False) -> None:
    """A (440 Hz) calls B; B transfers A to C (880 Hz) with REFER; A and C talk."""
    seen = len(ctx.kamailio().log()) if edge else 0
    a = _b(ctx, "1001", transport, A_HZ, edge=edge)
    b = _b(ctx, "1002", transport, 0.0, edge=edge)
    c = _b(ctx, "1003", transport, B_HZ, edge=edge)
    a_before, c_before = a.recordings(), c.recordings()
    ma, mb, mc = a.mark(), b.mark(), c.mark()
    a.dial(f"sip:1002@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=ma)
    b.wait_event("CALL_ESTABLISHED", after=mb)
    time.sleep(0.5)
    assert b.command("transfer", f"sip:1003@{ctx.lab.domain}").get("ok"), b.log()
    c.wait_event("CALL_ESTABLISHED", after=mc)
    b.wait_event("CALL_CLOSED", after=mb)
    time.sleep(TALK + 1)
    assert not any(e.get("type") == "CALL_CLOSED" for e in a.events[ma:]), a.log()
    a.hangup()
    c.wait_event("CALL_CLOSED", after=mc, timeout=6)
    assert_heard(c.heard(c_before), A_HZ, B_HZ, "transfer target")
    _heard_after_source_change(a, a_before, B_HZ, A_HZ, "transferee")
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        # the REFER came in the dialog through the edge; the call to C went out through it
        assert re.search(r"edge-relay in-dialog REFER ", edge_log), edge_log[-2000:]
        assert re.search(r"edge-relay INVITE sip:1003\S*@", edge_log), edge_log[-2000:]


def _heard_after_source_change(phone: Any, before: set[Path], tone: float, other: float,
                               who: str) -> None:
    """baresip 1.0 keeps its jitter buffer's timestamp base across an SSRC change
    and may drop the new stream ("discard old frame"): then its log is the evidence."""
    heard = phone.heard(before)
    if heard.rms > SILENCE_RMS and heard.power[tone] > 10 * heard.power[other]:
        return
    log = phone.log_path.read_text(errors="replace")
    assert "SSRC changed" in log and "discard old frame" in log, \
        f"{who} did not hear {tone} Hz: {heard}\n{log[-3000:]}"


def baresip_attended_transfer(ctx: Ctx, transport: str, edge: bool = False) -> None:
    """baresip lists its in-call commands only during a call: look there."""
    a = _b(ctx, "1001", transport, edge=edge)
    b = _b(ctx, "1002", transport, B_HZ, edge=edge)
    mark = a.mark()
    a.dial(f"sip:1002@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=mark)
    listing = str(a.command("help").get("data", ""))
    a.hangup()
    a.wait_event("CALL_CLOSED", after=mark)
    b.hangup()
    version = re.search(r"baresip v\S+", a.log_path.read_text(errors="replace"))
    banner = version.group(0) if version else "baresip"
    assert "/transfer" in listing, listing  # the evidence is its real in-call command list
    if not re.search(r"attended|atransfer|replaces", listing, re.I):
        pytest.xfail(f"{banner}: no attended-transfer command (its in-call command "
                     "list has only /transfer, a blind REFER without Replaces)")
    raise AssertionError("baresip now lists an attended-transfer command: write this cell")


def baresip_dtmf(ctx: Ctx, transport: str, edge: bool = False) -> None:
    seen = len(ctx.kamailio().log()) if edge else 0
    a = _b(ctx, "1001", transport, edge=edge)
    mark = a.mark()
    digits = fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total")
    a.dial(f"sip:5555@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=mark)
    time.sleep(1.0)
    for key in "1234#":
        assert a.command("sndcode", key).get("ok"), a.log()
        time.sleep(0.3)
    until(lambda: fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total") >= digits + 5,
          "5 DTMF digits counted by the voicemail")
    a.hangup()
    a.wait_event("CALL_CLOSED", after=mark)
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        assert re.search(r"edge-relay INVITE sip:5555@", edge_log), edge_log[-2000:]


def baresip_mwi(ctx: Ctx, transport: str, edge: bool = False) -> None:
    """A message for 1007 (a busy phone, the caller's tone), then baresip with its mwi
    module as 1007: the NOTIFY it receives says Messages-Waiting: yes."""
    if mailbox_new(ctx.lab, "1007") == 0:
        baresip_to_voicemail(ctx, transport, "1007", "lab_uas_busy.xml", "busy", 10)
    seen = len(ctx.kamailio().log()) if edge else 0
    phone = _b(ctx, "1007", transport, mwi=True, edge=edge)

    def notified() -> bool:
        return any(e.get("type") == "MWI_NOTIFY" and "Messages-Waiting: yes" in
                   str(e.get("param", "")) for e in phone.events) or \
            "Messages-Waiting: yes" in phone.log()
    until(notified, "MWI NOTIFY with Messages-Waiting: yes at baresip", 10)
    if edge:
        edge_log = ctx.kamailio().log()[seen:]
        # the SUBSCRIBE went out through the edge, the NOTIFY came back along its route set
        assert re.search(r"edge-relay SUBSCRIBE sip:1007@", edge_log), edge_log[-2000:]
        assert re.search(r"edge-relay in-dialog NOTIFY ", edge_log), edge_log[-2000:]


# =========================================================================== linphonec


def _l(ctx: Ctx, dn: str, transport: str, hz: float, record: str) -> Any:
    tone = write_tone(ctx.tmp / f"l-{dn}-{int(hz)}.wav", hz, seconds=20.0)
    if transport == "tls":
        return ctx.linphonec_tls(dn, tone=tone, record=ctx.tmp / record)
    return ctx.linphonec(dn, "dc1", transport=transport, tone=tone, record=ctx.tmp / record)


def _ltarget(ctx: Ctx, dn: str, transport: str) -> str:
    if transport == "tls":
        return f"sip:{dn}@{ctx.proxy['host']}:{ctx.proxy['tls_port']};transport=tls"
    return f"sip:{dn}@{ctx.via}" + (";transport=tcp" if transport == "tcp" else "")


def _lcontact(ctx: Ctx, transport: str) -> str:
    """What identifies linphonec's binding: its address over UDP; over TCP and
    TLS it puts 127.0.0.1 in its Contact whatever bind_address says (and listens
    there)."""
    return ctx.lab.prefix("dc1") + "150" if transport == "udp" else f"transport={transport}"


def linphonec_register(ctx: Ctx, transport: str) -> None:
    _l(ctx, "1008", transport, A_HZ, "r.wav")
    wait_binding(ctx.lab, "1008", _lcontact(ctx, transport))


def linphonec_unregister(ctx: Ctx, transport: str) -> None:
    phone = _l(ctx, "1008", transport, A_HZ, "r.wav")
    wait_binding(ctx.lab, "1008", _lcontact(ctx, transport))
    phone.send("unregister")
    wait_binding(ctx.lab, "1008", None, gone=_lcontact(ctx, transport))


def linphonec_call(ctx: Ctx, transport: str) -> None:
    a = _l(ctx, "1008", transport, A_HZ, "a.wav")
    b = _l(ctx, "1009", transport, B_HZ, "b.wav")
    ma, mb = a.mark(), b.mark()
    a.send(f"call {_ltarget(ctx, '1009', transport)}")
    a.wait_for(r"[Cc]all 1 .*connected", after=ma)
    b.wait_for(r"[Cc]all 1 .*connected", after=mb)
    time.sleep(TALK + 0.5)
    b.send("terminate")
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma)
    assert_heard(analyse_wav(ctx.tmp / "a.wav"), B_HZ, A_HZ, "caller")
    assert_heard(analyse_wav(ctx.tmp / "b.wav"), A_HZ, B_HZ, "callee")


def linphonec_cancel(ctx: Ctx, transport: str) -> None:
    callee = ctx.sipp.phone("1003", "lab_uas_ring.xml", transport=_sipp_t(transport))
    a = _l(ctx, "1008", transport, A_HZ, "a.wav")
    ma = a.mark()
    a.send(f"call {_ltarget(ctx, '1003', transport)}")
    a.wait_for(r"[Rr]inging", after=ma)
    a.send("terminate")
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma)
    assert callee.ok(10), callee.errors()


def linphonec_to_voicemail(ctx: Ctx, transport: str, dn: str, scenario: str, reason: str,
                           wait: float) -> None:
    callee = ctx.sipp.phone(dn, scenario, transport=_sipp_t(transport), timeout=int(wait) + 20)
    a = _l(ctx, "1008", transport, A_HZ, "a.wav")
    ma = a.mark()
    messages = mailbox_new(ctx.lab, dn)
    a.send(f"call {_ltarget(ctx, dn, transport)}")
    a.wait_for(r"[Cc]all 1 .*connected", after=ma, timeout=wait)
    time.sleep(4.5)  # greeting and beep (about 2.5 s), then the caller's tone is the message
    a.send("terminate")
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma)
    assert callee.ok(10), callee.errors()
    assert forwarded(ctx.lab, dn, reason), f"no call_forwarded {reason} for {dn}"
    assert analyse_wav(ctx.tmp / "a.wav").rms > SILENCE_RMS, "no greeting heard"
    until(lambda: mailbox_new(ctx.lab, dn) == messages + 1, f"a new message in {dn}")


def linphonec_busy(ctx: Ctx, transport: str) -> None:
    linphonec_to_voicemail(ctx, transport, "1004", "lab_uas_busy.xml", "busy", 15)


def linphonec_no_answer(ctx: Ctx, transport: str) -> None:
    linphonec_to_voicemail(ctx, transport, "1005", "lab_uas_ring.xml", "no-answer",
                           NO_ANSWER + 8)


def linphonec_hold_resume(ctx: Ctx, transport: str) -> None:
    callee = ctx.sipp.phone("1006", "matrix_uas_hold.xml", transport=_sipp_t(transport))
    a = _l(ctx, "1008", transport, A_HZ, "a.wav")
    ma = a.mark()
    a.send(f"call {_ltarget(ctx, '1006', transport)}")
    a.wait_for(r"[Cc]all 1 .*connected", after=ma)
    a.send("pause 1")
    a.wait_for(r"[Cc]all 1 .*paused", after=ma)
    resumed = a.mark()
    a.send("resume 1")
    a.wait_for(r"Media streams established .* for call 1", after=resumed)
    time.sleep(0.5)
    a.send("terminate")
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma)
    assert callee.ok(10), callee.errors()
    dirs = re.findall(r"reinvite dir=(\w+)", callee.logs())
    assert dirs[:2] in (["sendonly", "sendrecv"], ["inactive", "sendrecv"]), dirs


def linphonec_blind_transfer(ctx: Ctx, transport: str) -> None:
    """baresip A (440 Hz) calls linphonec B, B transfers A to baresip C (880 Hz)."""
    bt = transport
    a = ctx.baresip("1001", transport=bt, tone_hz=A_HZ)
    c = ctx.baresip("1003", transport=bt, tone_hz=B_HZ)
    b = _l(ctx, "1008", transport, 0.0, "b.wav")
    a_before, c_before = a.recordings(), c.recordings()
    ma, mc, mb = a.mark(), c.mark(), b.mark()
    a.dial(f"sip:1008@{ctx.lab.domain}")
    a.wait_event("CALL_ESTABLISHED", after=ma)
    b.wait_for(r"[Cc]all 1 .*connected", after=mb)
    time.sleep(0.5)
    b.send(f"transfer 1 {_ltarget(ctx, '1003', transport)}")
    c.wait_event("CALL_ESTABLISHED", after=mc, timeout=15)
    b.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=mb, timeout=15)
    time.sleep(TALK + 1)
    assert not any(e.get("type") == "CALL_CLOSED" for e in a.events[ma:]), a.log()
    a.hangup()
    c.wait_event("CALL_CLOSED", after=mc, timeout=6)
    assert_heard(c.heard(c_before), A_HZ, B_HZ, "transfer target")
    _heard_after_source_change(a, a_before, B_HZ, A_HZ, "transferee")


def linphonec_attended_transfer(ctx: Ctx, transport: str) -> None:
    """linphonec A takes B's call (linphonec, 440 Hz), holds it, consults baresip C
    (880 Hz) and transfers B to C (REFER with Replaces): B hears C."""
    a = _l(ctx, "1008", transport, 0.0, "a.wav")
    b = _l(ctx, "1009", transport, A_HZ, "b.wav")
    c = ctx.baresip("1002", transport=transport, tone_hz=B_HZ)
    c_before, mc, ma, mb = c.recordings(), c.mark(), a.mark(), b.mark()
    b.send(f"call {_ltarget(ctx, '1008', transport)}")
    a.wait_for(r"[Cc]all 1 .*connected", after=ma)
    b.wait_for(r"[Cc]all 1 .*connected", after=mb)
    a.send("pause 1")
    a.wait_for(r"[Cc]all 1 .*paused", after=ma)
    a.send(f"call {_ltarget(ctx, '1002', transport)}")
    c.wait_event("CALL_ESTABLISHED", after=mc)
    a.wait_for(r"[Cc]all 2 .*connected", after=ma)
    time.sleep(0.5)
    a.send("transfer 1 --to-call 2")
    a.wait_for(r"[Cc]all 2 .*(ended|terminated)", after=ma, timeout=15)
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma, timeout=15)
    time.sleep(TALK + 1)
    assert not any(e.get("type") == "CALL_CLOSED" for e in c.events[mc:]), c.log()
    b.send("terminate")
    c.wait_event("CALL_CLOSED", after=mc, timeout=10)
    assert_heard(analyse_wav(ctx.tmp / "b.wav"), B_HZ, A_HZ, "transferee")
    _heard_after_source_change(c, c_before, A_HZ, B_HZ, "transfer target")


def linphonec_dtmf(ctx: Ctx, transport: str) -> None:
    a = _l(ctx, "1008", transport, A_HZ, "a.wav")
    ma = a.mark()
    digits = fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total")
    a.send(f"call {_ltarget(ctx, '5555', transport)}")
    a.wait_for(r"[Cc]all 1 .*connected", after=ma)
    time.sleep(1.0)
    for key in "1234#":
        a.send(key)  # linphonec: a lone digit during a call is sent as DTMF
        time.sleep(0.3)
    until(lambda: fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total") >= digits + 5,
          "5 DTMF digits counted by the voicemail")
    a.send("terminate")
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=ma)


def linphonec_mwi(ctx: Ctx, transport: str) -> None:
    phone = _l(ctx, "1008", transport, A_HZ, "a.wav")
    mark = phone.mark()
    phone.send("help")
    time.sleep(0.5)
    phone.wait_for(r"\bcall\b", after=mark)  # the evidence is its real help text
    listing = "\n".join(phone.output[mark:])
    version = subprocess.run(["linphonec", "-v"], capture_output=True, text=True, timeout=10,
                             input="quit\n")
    first = (version.stdout or version.stderr).strip().splitlines()
    if not re.search(r"\bmwi\b|subscribe|message-summary", listing, re.I):
        pytest.xfail(f"linphonec ({first[0] if first else '?'}): no command subscribes to "
                     "message-summary or shows a message summary (its help lists none)")
    raise AssertionError("linphonec lists an MWI command: write this cell")


# =========================================================================== SIPp


def _sipp_t(transport: str) -> str:
    """SIPp's transport for a SIPp party of a cell; beside a TLS phone it is TCP
    (Debian's SIPp has no TLS, see sipp_register)."""
    return {"udp": "u1", "tcp": "t1", "tls": "t1"}[transport]


def _sipp_without_tls() -> None:
    """SIPp as packaged is built without OpenSSL: its own answer to ``-t l1`` is
    the evidence of the SIPp TLS cell."""
    run = subprocess.run(["sipp", "-t", "l1", "-m", "1", "-nostdin", "127.0.0.1:9"],
                         capture_output=True, text=True, timeout=10)
    said = (run.stdout + run.stderr).strip()
    version = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=10)
    banner = re.search(r"SIPp v[\d.]*\d", version.stdout + version.stderr)
    refusal = re.search(r"To use a TLS transport you must compile SIPp with OpenSSL", said)
    if refusal:
        pytest.xfail(f"{banner.group(0) if banner else 'SIPp'} is built without OpenSSL "
                     f"(`sipp -t l1`: \"{refusal.group(0)}\")")
    raise AssertionError(f"SIPp speaks TLS now ({said[-300:]}): write this cell")


def sipp_register(ctx: Ctx, transport: str) -> None:
    if transport == "tls":
        _sipp_without_tls()
    address = ctx.sipp.sipp.address("dc1")
    port = ctx.sipp.sipp.free_port(address)
    run = ctx.sipp.register("1010", address, port, transport=_sipp_t(transport))
    assert "registered expires=" in run.logs(), run.logs()
    wait_binding(ctx.lab, "1010", f"{address}:{port}")
    ctx.sipp.register("1010", address, port, transport=_sipp_t(transport), expires=0)


def sipp_unregister(ctx: Ctx, transport: str) -> None:
    address = ctx.sipp.sipp.address("dc1")
    port = ctx.sipp.sipp.free_port(address)
    ctx.sipp.register("1010", address, port, transport=_sipp_t(transport))
    wait_binding(ctx.lab, "1010", f"{address}:{port}")
    ctx.sipp.register("1010", address, port, transport=_sipp_t(transport), expires=0)
    wait_binding(ctx.lab, "1010", None, gone=f"{address}:{port}")


def sipp_call(ctx: Ctx, transport: str) -> None:
    t = _sipp_t(transport)
    callee = ctx.sipp.phone("1002", "lab_uas_answer.xml", transport=t)
    caller = ctx.sipp.call("1001", "1002", transport=t)
    assert caller.ok(20), caller.errors()
    assert callee.ok(10), callee.errors()


def sipp_cancel(ctx: Ctx, transport: str) -> None:
    t = _sipp_t(transport)
    callee = ctx.sipp.phone("1003", "lab_uas_ring.xml", transport=t)
    caller = ctx.sipp.call("1001", "1003", "lab_uac_cancel.xml", transport=t, talk_ms=500)
    assert caller.ok(20), caller.errors()
    assert callee.ok(10), callee.errors()


def sipp_busy(ctx: Ctx, transport: str) -> None:
    t = _sipp_t(transport)
    callee = ctx.sipp.phone("1004", "lab_uas_busy.xml", transport=t)
    caller = ctx.sipp.call("1001", "1004", transport=t)
    assert caller.ok(20), caller.errors()  # answered: by the mailbox
    assert callee.ok(10), callee.errors()
    assert forwarded(ctx.lab, "1004", "busy")


def sipp_no_answer(ctx: Ctx, transport: str) -> None:
    t = _sipp_t(transport)
    callee = ctx.sipp.phone("1005", "lab_uas_ring.xml", transport=t, timeout=NO_ANSWER + 15)
    caller = ctx.sipp.call("1001", "1005", transport=t, timeout=NO_ANSWER + 15)
    assert caller.ok(NO_ANSWER + 15), caller.errors()
    assert callee.ok(10), callee.errors()
    assert forwarded(ctx.lab, "1005", "no-answer")


def sipp_hold_resume(ctx: Ctx, transport: str) -> None:
    t = _sipp_t(transport)
    callee = ctx.sipp.phone("1006", "matrix_uas_hold.xml", transport=t)
    caller = ctx.sipp.call("1001", "1006", "matrix_uac_hold.xml", transport=t)
    assert caller.ok(20), caller.errors()
    assert callee.ok(10), callee.errors()
    assert re.findall(r"reinvite dir=(\w+)", callee.logs())[:2] == ["sendonly", "sendrecv"], \
        callee.logs()[-3000:]
    answers = re.findall(r"answer to (\w+): dir=(\w+)", caller.logs())
    assert answers == [("sendonly", "recvonly"), ("sendrecv", "sendrecv")], answers


def _sipp_calls_done(run: Any, calls: int, timeout: float = 20.0) -> None:
    """The SIPp run ended with ``calls`` successful calls and no failed one."""
    stats = run.wait(timeout)
    assert (stats.get("SuccessfulCall(C)"), stats.get("FailedCall(C)"), run.proc.returncode) \
        == (str(calls), "0", 0), run.errors()


def _sipp_transferred(ctx: Ctx, transport: str, scenario: str, extra: tuple[str, ...],
                      calls: int) -> None:
    """B (1002, the transferor, SIPp ``scenario``) calls A (1001) and transfers it to C
    (1003). Observed: B's REFER got a final NOTIFY sipfrag 200; A received a re-INVITE
    offering C's media address and hung up; C received A's answer in an ACK and A's
    BYE, so the node joined A and C."""
    t = _sipp_t(transport)
    a_ip, c_ip = ctx.sipp.sipp.address("dc1"), ctx.sipp.sipp.address("dc1")
    target = ctx.sipp.phone("1003", "matrix_uas_target.xml", transport=t, address=c_ip)
    transferee = ctx.sipp.phone("1001", "matrix_uas_transferee.xml", transport=t,
                                address=a_ip, extra=("-set", "peer", c_ip))
    transferor = ctx.sipp.call("1002", "1001", scenario, transport=t, talk_ms=500,
                               extra=("-set", "target", "1003", *extra))
    _sipp_calls_done(transferor, calls)
    progress = re.findall(r"refer progress: (\d+)", transferor.logs())
    assert progress and progress[-1] == "200", progress
    assert transferee.ok(15), transferee.errors()
    assert f"connected to {c_ip}" in transferee.logs(), transferee.logs()[-3000:]
    assert target.ok(10), target.errors()
    assert f"ack c={a_ip}" in target.logs(), target.logs()[-3000:]


def sipp_blind_transfer(ctx: Ctx, transport: str) -> None:
    """REFER with Refer-To: C in B's call with A (RFC 5589 §6)."""
    _sipp_transferred(ctx, transport, "matrix_uac_blind_transfer.xml", (), 1)


def sipp_attended_transfer(ctx: Ctx, transport: str) -> None:
    """B's consultation call with C, then REFER in B's call with A whose Refer-To
    names the consultation dialog in Replaces (RFC 5589 §7, RFC 3891): two calls of
    one SIPp run sharing the dialog through Global variables."""
    _sipp_transferred(ctx, transport, "matrix_uac_attended_transfer.xml",
                      ("-m", "2", "-cid_str", "%u-%p-%s", "-set", "answered", "no",
                       "-set", "consult_call_id", "none", "-set", "consult_from_tag", "none",
                       "-set", "consult_to_tag", "none"), 2)


def sipp_dtmf(ctx: Ctx, transport: str) -> None:
    digits = fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total{source=\"info\"}")
    caller = ctx.sipp.call("1001", "5555", "matrix_uac_dtmf_info.xml",
                           transport=_sipp_t(transport), talk_ms=800)
    assert caller.ok(20), caller.errors()
    until(lambda: fs_metric(ctx.lab, "sipcluster_voicemail_dtmf_digits_total{source=\"info\"}")
          >= digits + 5, "5 SIP INFO keys counted by the voicemail")


def sipp_mwi(ctx: Ctx, transport: str) -> None:
    """SUBSCRIBE to 1007's message summary; the NOTIFY says Messages-Waiting: yes."""
    if mailbox_new(ctx.lab, "1007") == 0:
        baresip_to_voicemail(ctx, transport, "1007", "lab_uas_busy.xml", "busy", 10)
    address = ctx.sipp.sipp.address("dc1")
    run = ctx.sipp.sipp.run("matrix_mwi_subscribe.xml", address=address, proxy=ctx.proxy,
                            transport=_sipp_t(transport),
                            args=["-s", "1007", "-au", "1007",
                                  "-ap", ctx.lab.password("1007")])
    assert run.ok(15), run.errors()
    assert re.findall(r"mwi: (\w+)", run.logs()) == ["yes"], run.logs()


# =========================================================================== the cells


CELLS: dict[tuple[str, str], Callable[[Ctx, str], None]] = {
    ("register", "baresip"): baresip_register,
    ("unregister", "baresip"): baresip_unregister,
    ("call", "baresip"): baresip_call,
    ("cancel", "baresip"): baresip_cancel,
    ("busy", "baresip"): baresip_busy,
    ("no-answer", "baresip"): baresip_no_answer,
    ("hold-resume", "baresip"): baresip_hold_resume,
    ("blind-transfer", "baresip"): baresip_blind_transfer,
    ("attended-transfer", "baresip"): baresip_attended_transfer,
    ("dtmf", "baresip"): baresip_dtmf,
    ("mwi", "baresip"): baresip_mwi,
    ("register", "linphonec"): linphonec_register,
    ("unregister", "linphonec"): linphonec_unregister,
    ("call", "linphonec"): linphonec_call,
    ("cancel", "linphonec"): linphonec_cancel,
    ("busy", "linphonec"): linphonec_busy,
    ("no-answer", "linphonec"): linphonec_no_answer,
    ("hold-resume", "linphonec"): linphonec_hold_resume,
    ("blind-transfer", "linphonec"): linphonec_blind_transfer,
    ("attended-transfer", "linphonec"): linphonec_attended_transfer,
    ("dtmf", "linphonec"): linphonec_dtmf,
    ("mwi", "linphonec"): linphonec_mwi,
    ("register", "sipp"): sipp_register,
    ("unregister", "sipp"): sipp_unregister,
    ("call", "sipp"): sipp_call,
    ("cancel", "sipp"): sipp_cancel,
    ("busy", "sipp"): sipp_busy,
    ("no-answer", "sipp"): sipp_no_answer,
    ("hold-resume", "sipp"): sipp_hold_resume,
    ("blind-transfer", "sipp"): sipp_blind_transfer,
    ("attended-transfer", "sipp"): sipp_attended_transfer,
    ("dtmf", "sipp"): sipp_dtmf,
    ("mwi", "sipp"): sipp_mwi,
    # Kamailio as the edge proxy: the baresip cells, the phones registered through it
    ("register", "kamailio"): partial(baresip_register, edge=True),
    ("unregister", "kamailio"): partial(baresip_unregister, edge=True),
    ("call", "kamailio"): partial(baresip_call, edge=True),
    ("cancel", "kamailio"): partial(baresip_cancel, edge=True),
    ("hold-resume", "kamailio"): partial(baresip_hold_resume, edge=True),
    ("dtmf", "kamailio"): partial(baresip_dtmf, edge=True),
    ("busy", "kamailio"): partial(baresip_busy, edge=True),
    ("no-answer", "kamailio"): partial(baresip_no_answer, edge=True),
    ("blind-transfer", "kamailio"): partial(baresip_blind_transfer, edge=True),
    ("attended-transfer", "kamailio"): partial(baresip_attended_transfer, edge=True),
    ("mwi", "kamailio"): partial(baresip_mwi, edge=True),
}

#: cells that fail because of a defect of ours (strict: they fail the run once fixed)
DEFECTS: dict[str, str] = {}


def _cells() -> list[Any]:
    params = []
    for scenario in SCENARIOS:
        for peer, transport in COLUMNS:
            run = CELLS.get((scenario, peer))
            if run is None:
                continue
            marks: list[Any] = []
            cell_id = f"{scenario}-{peer}-{transport}"
            if cell_id in DEFECTS:
                marks = [pytest.mark.xfail(strict=True, reason=DEFECTS[cell_id])]
            if transport == "tls" and peer == "sipp" and scenario != "register":
                continue  # no TLS in SIPp: one cell with the evidence says it all
            params.append(pytest.param(scenario, peer, transport, marks=marks,
                                       id=cell_id))
    return params


@pytest.fixture
def ctx(lab: Any, tmp_path: Path, baresip: Callable[..., Any],
        linphonec_phone: Callable[..., Any], linphonec_tls: Callable[..., Any],
        sipp_phones: Any, request: pytest.FixtureRequest, lab_capture: Any) -> Ctx:
    return Ctx(lab, tmp_path, baresip, linphonec_phone, linphonec_tls, sipp_phones, request)


@pytest.mark.parametrize(("scenario", "peer", "transport"), _cells())
def test_cell(ctx: Ctx, scenario: str, peer: str, transport: str) -> None:
    if transport == "tls":
        tls_listener(ctx)
    CELLS[(scenario, peer)](ctx, transport)


# =========================================================================== tshark


@dataclass
class Capture:
    proc: subprocess.Popen[str]
    pcap: Path
    tshark: str
    ports: tuple[int, ...]


@pytest.fixture(scope="module")
def lab_capture(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tshark on lo for the whole module: SIP to and from the lab's subnets."""
    import shutil
    tshark = shutil.which("tshark")
    if tshark is None:
        yield None
        return
    pcap = tmp_path_factory.mktemp("capture") / "matrix.pcap"
    ports = (5060, 5070, 5080)
    nets = " or ".join(f"net {p}0/24" for p in LAB_SUBNETS.values())
    port_filter = " or ".join(f"port {p}" for p in ports)
    proc = subprocess.Popen([tshark, "-i", "lo", "-f", f"({nets}) and ({port_filter})",
                             "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "Capturing on" in line or (not line and proc.poll() is not None):
            break
    capture = Capture(proc, pcap, tshark, ports)
    yield capture
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def test_tshark_decodes_what_the_lab_sent(lab: Any, lab_capture: Any,
                                          require_tool: Any) -> None:
    """Every SIP message the lab's daemons sent during the matrix (proxies .21/.22,
    nodes .11/.12, feature-servers .31): no malformed packet, no expert error."""
    require_tool("tshark")
    assert lab_capture is not None
    time.sleep(0.5)
    lab_capture.proc.send_signal(signal.SIGINT)
    lab_capture.proc.wait(timeout=10)
    decode: list[str] = []
    for port in lab_capture.ports:
        decode += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    ours = " || ".join(f"ip.src == {prefix}{host}" for prefix in LAB_SUBNETS.values()
                       for host in (11, 12, 21, 22, 31))
    bad = subprocess.run(
        [lab_capture.tshark, "-r", str(lab_capture.pcap), *decode, "-Y",
         f"({ours}) && (_ws.malformed || _ws.expert.severity == error)",
         "-T", "fields", "-e", "frame.number", "-e", "ip.src", "-e", "_ws.expert.message",
         "-e", "sip.Request-Line", "-e", "sip.Status-Line"],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.strip() == "", bad.stdout[:3000]
    seen = subprocess.run(
        [lab_capture.tshark, "-r", str(lab_capture.pcap), *decode, "-Y", f"sip && ({ours})",
         "-T", "fields", "-e", "sip.CSeq.method", "-e", "sip.Status-Code"],
        capture_output=True, text=True, timeout=60)
    assert seen.returncode == 0, seen.stderr
    methods = {line.split("\t")[0] for line in seen.stdout.splitlines()}
    # the matrix's calls, registrations and voicemail all went through
    assert {"REGISTER", "INVITE", "BYE", "ACK"} <= methods, methods
