"""Attended transfer from a real phone (RFC 5589 §7: REFER with Replaces).

linphonec A (silent) takes a call from linphonec B (440 Hz), holds it,
consults baresip C (880 Hz) and transfers B to C with ``transfer 1 --to-call
2``: linphone sends REFER in the call with B whose Refer-To names its call
with C in a Replaces header. The node re-INVITEs B and C (B's offer to C);
afterwards B hears C, C receives B's audio, A has left both calls, and B's
hang-up ends C's call.

baresip 1.0 as the party whose media source changes keeps its jitter
buffer's timestamp base across the SSRC change and may drop the new stream
("discard old frame"), so C's side is checked on the RTP it receives (its
log) and on what it decoded when it did.

The lab here has one node per data centre, so both of A's calls meet on one
node (the local join).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop.lab.conftest import analyse_wav, write_tone

LAB_SUBNETS = {"127.0.1.": "127.0.161.", "127.0.2.": "127.0.162."}
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")

pytestmark = pytest.mark.timeout(120)

B_HZ = 440.0
C_HZ = 880.0
SILENCE_RMS = 500.0


def test_attended_transfer_from_linphonec(
    lab: Any, baresip_phone: Callable[..., Any], linphonec_phone: Callable[..., Any],
    tmp_path: Path,
) -> None:
    a_dn, b_dn, c_dn = "1008", "1009", "1002"
    b_heard = tmp_path / "b-heard.wav"
    a = linphonec_phone(a_dn, "dc1", tone=write_tone(tmp_path / "silence.wav", 0.0),
                        record=tmp_path / "a-heard.wav")
    b = linphonec_phone(b_dn, "dc1", tone=write_tone(tmp_path / "b.wav", B_HZ), record=b_heard)
    c = baresip_phone(c_dn, "dc1", route="address", tone_hz=C_HZ)
    proxy = lab.proxies("dc1")[0]
    via_proxy = f"{proxy['host']}:{proxy['sip_port']}"  # linphonec's calls need it named
    c_before, c_mark = c.recordings(), c.mark()
    a_mark, b_mark = a.mark(), b.mark()

    b.send(f"call sip:{a_dn}@{via_proxy}")
    a.wait_for(r"[Cc]all 1 .*connected", after=a_mark)
    b.wait_for(r"[Cc]all 1 .*connected", after=b_mark)
    a.send("pause 1")  # hold B (re-INVITE a=sendonly) before consulting
    a.wait_for(r"[Cc]all 1 .*paused", after=a_mark)
    a.send(f"call sip:{c_dn}@{via_proxy}")
    c.wait_event("CALL_ESTABLISHED", after=c_mark)
    a.wait_for(r"[Cc]all 2 .*connected", after=a_mark)
    time.sleep(0.5)

    a.send("transfer 1 --to-call 2")
    a.wait_for(r"[Cc]all 2 .*(ended|terminated)", after=a_mark, timeout=15)
    a.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=a_mark, timeout=15)
    time.sleep(2.5)  # B and C talk
    assert not any(e.get("type") == "CALL_CLOSED" for e in c.events[c_mark:]), c.log()
    assert not re.search(r"[Cc]all 1 .*(ended|terminated)", "\n".join(b.output[b_mark:]))

    b.send("terminate")
    c.wait_event("CALL_CLOSED", after=c_mark, timeout=10)
    b.wait_for(r"[Cc]all 1 .*(ended|terminated)", after=b_mark)

    heard = analyse_wav(b_heard)
    assert heard.rms > SILENCE_RMS, f"B heard silence after the transfer: {heard}"
    assert heard.power[C_HZ] > 10 * heard.power[B_HZ], f"B did not hear C: {heard}"
    # C: the stream from B arrived (a new SSRC on C's one call) and, when baresip
    # decoded it, it is B's tone
    log = c.log_path.read_text(errors="replace")
    assert "SSRC changed" in log, log[-3000:]
    c_heard = c.heard(c_before)
    if c_heard.rms > SILENCE_RMS:
        assert c_heard.power[B_HZ] > 10 * c_heard.power[C_HZ], f"C: {c_heard}"
    else:
        assert "discard old frame" in log, f"C decoded nothing: {c_heard}\n{log[-3000:]}"
    registrations = lab.registrations()
    assert all(dn in registrations for dn in (a_dn, b_dn, c_dn))
