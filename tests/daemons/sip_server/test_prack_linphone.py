"""A real softphone through the node with RFC 3262 and RFC 4028: linphonec
(liblinphone 5) calls DN 1001 requiring 100rel (``100rel_support_level=2``)
with session timers on (``session_expires_enabled``); the callee (SIPp)
answers with a reliable 183. linphonec's PRACK of the node's reliable 183
reaches the callee as a PRACK for the callee's RSeq, and the node's 2xx
gives linphonec a session timer it refreshes itself.

(baresip 1.0 as packaged here has neither 100rel nor session timers.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemons.sip_server import prack_lab as lab_module
from tests.daemons.sip_server.prack_lab import CALLER, NODE, header, until

prack_lab = lab_module.prack_lab  # the fixture

pytestmark = pytest.mark.timeout(60)


async def test_linphonec_requiring_100rel_with_session_timers(
        prack_lab: Any, tmp_path: Path, require_tool: Callable[[str], str],
        free_port: Callable[..., int]) -> None:
    binary = require_tool("linphonec")
    lab = await prack_lab()
    phone = lab.phone("uas_reliable_183.xml")
    workdir = tmp_path / "linphonec"
    (workdir / ".local" / "share" / "linphone").mkdir(parents=True)
    rc = workdir / "linphonerc"
    rc.write_text(f"""\
[sip]
sip_port={free_port(CALLER)}
bind_address={CALLER}
sip_random_port=0
guess_hostname=0
100rel_support_level=2
session_expires_enabled=1
session_expires_value=300
session_expires_refresher_value=2

[rtp]
audio_rtp_port=30000-39999

[sound]
echocancellation=0
""")
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(rc), "-d", "0", cwd=workdir, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(workdir), "TERM": "dumb"})
    assert proc.stdin is not None
    stdin = proc.stdin
    try:
        stdin.write(b"soundcard use files\n")
        stdin.write(f"call sip:1001@{NODE}:{lab.ports['sip']}\n".encode())
        await stdin.drain()
        await until(lambda: phone.received_messages("ACK"), timeout=20)
        stdin.write(b"terminate\n")
        await stdin.drain()
        stats = await asyncio.to_thread(phone.stats, 15)
        assert stats.get("SuccessfulCall(C)") == "1", (stats, phone.errors())
    finally:
        with contextlib.suppress(OSError):
            stdin.write(b"quit\n")
            await stdin.drain()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    pracks = phone.received_messages("PRACK")
    assert len(pracks) == 1 and header(pracks[0], "RAck") == ["7 1 INVITE"], pracks
    sent = lab.metrics("sipcluster_sip_reliable_provisionals_total")
    # linphonec itself acknowledged the node's reliable 183 (the node did not PRACK for it)
    assert sent.get('{event="acknowledged"}') == 1.0 and '{event="pracked_by_node"}' \
        not in sent, sent
    started = lab.node("A").events("session_timer_started")
    # linphonec's own 300 s session, refreshed by linphonec (refresher=uac)
    assert any(e["interval"] == 300 and e["refresher"] == "party" for e in started), started
