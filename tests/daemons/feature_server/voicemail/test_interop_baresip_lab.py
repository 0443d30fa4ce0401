"""Voicemail end to end through the lab with baresip phones: phone A calls
phone B, B does not answer, the call is forwarded to B's mailbox and A leaves
a tone; B's baresip (mwi.so) is told a message waits; B dials the access
number, enters its PIN by RFC 4733 and hears the message.

The lab runs on 127.0.111.x (dc1) and 127.0.112.x (dc2), no-answer after 3 s.
"""

from __future__ import annotations

import json
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocols.rtp.tones import tone_share
from tests.interop.lab.conftest import (  # noqa: F401 (fixtures)
    Baresip,
    DcResolver,
    Lab,
    baresip_config,
    dc_resolvers,
    lab,
    write_tone,
)

LAB_SUBNETS = {"127.0.1.": "127.0.111.", "127.0.2.": "127.0.112."}
LAB_TSERVER = {"extn-no-answer-timeout": 3}
TONE = 1850.0  # no voicemail prompt uses it
FS_HTTP = "http://127.0.111.31:8080"


@pytest.fixture
def phones(lab: Lab, dc_resolvers: dict[str, DcResolver], tmp_path: Path,  # noqa: F811
           require_tool: Any, free_port: Callable[..., int]
           ) -> Iterator[Callable[..., Baresip]]:
    binary = require_tool("baresip")
    started: list[Baresip] = []
    counter = iter(range(101, 200))

    def start(dn: str, *, answer: str, tone_hz: float, mwi: bool) -> Baresip:
        address = lab.prefix("dc1") + str(next(counter))
        workdir = tmp_path / f"baresip-{dn}"
        workdir.mkdir()
        phone = Baresip(name=dn, workdir=workdir, address=address,
                        sip_port=free_port(address), ctrl_port=free_port(address),
                        aor=f"sip:{dn}@{lab.domain}")
        tone = write_tone(workdir / "tone.wav", tone_hz)
        resolver = dc_resolvers["dc1"]
        baresip_config(phone, dns=(resolver.address, resolver.port), tone=tone)
        if mwi:
            with (workdir / "config").open("a") as config:
                config.write("module_app\t\tmwi.so\n")
        proxy = lab.proxies("dc1")[0]
        account = (f"<sip:{dn}@{lab.domain};transport=udp>;auth_pass={lab.password(dn)};"
                   f"outbound=\"sip:{proxy['host']}:{proxy['sip_port']};transport=udp\";"
                   f"regint=60;answermode={answer};audio_codecs=PCMU;mwi={'yes' if mwi else 'no'}")
        if mwi:
            phone.start(binary, account=account)
        else:
            (workdir / "accounts").write_text(account + "\n")
            phone.start(binary)
        started.append(phone)
        phone.wait_registered(timeout=30)
        return phone

    yield start
    for phone in started:
        phone.stop()


def _mwi_waiting(phone: Baresip, after: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in phone.events[after:]:
            if event.get("type") == "MWI_NOTIFY" and "Messages-Waiting: yes" in str(
                    event.get("param", "")):
                return event
        time.sleep(0.1)
    seen = [(e.get("type"), e.get("param")) for e in phone.events if "MWI" in str(e)]
    raise AssertionError(f"{phone.name}: no MWI 'yes'; MWI events {seen}\n{phone.log()}")


def _messages(mailbox: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{FS_HTTP}/api/mailboxes/{mailbox}/messages",
                                timeout=5) as r:
        return list(json.loads(r.read()))


def _tone_in(path: Path) -> tuple[float, float]:
    """(largest share of TONE in any second, RMS of the loudest second) of a 16-bit WAV."""
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        raw = wav.readframes(wav.getnframes())
    samples = memoryview(raw).cast("h")[::channels]
    best_share, best_rms = 0.0, 0.0
    for start in range(0, max(len(samples) - rate, 0) + 1, rate // 2):
        chunk = list(samples[start:start + rate])
        if not chunk:
            continue
        best_share = max(best_share, tone_share(chunk, TONE, rate))
        best_rms = max(best_rms, (sum(x * x for x in chunk) / len(chunk)) ** 0.5)
    return best_share, best_rms


def test_no_answer_deposit_mwi_and_retrieval(phones: Callable[..., Baresip]) -> None:
    b = phones("1002", answer="manual", tone_hz=440.0, mwi=True)
    a = phones("1001", answer="auto", tone_hz=TONE, mwi=False)
    start = b.mark()
    assert _messages("1002") == []

    # A calls B; B rings and does not answer; after 3 s A reaches B's mailbox
    mark_a = a.mark()
    a.dial(f"sip:1002@{b.aor.split('@')[1]}")
    b.wait_event("CALL_INCOMING", after=start, timeout=10)
    a.wait_event("CALL_ESTABLISHED", after=mark_a, timeout=15)
    time.sleep(2.0 + 4.0)          # greeting and beep, then 4 s of A's tone
    a.hangup()

    deadline = time.monotonic() + 10
    while not (messages := _messages("1002")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(messages) == 1 and messages[0]["caller"] == "1001", messages
    assert messages[0]["duration_ms"] >= 2000
    _mwi_waiting(b, start, timeout=10)

    # B dials the access number, enters its PIN by RFC 4733 and listens
    before = b.recordings()
    mark_b = b.mark()
    b.dial(f"sip:5555@{b.aor.split('@')[1]}")
    b.wait_event("CALL_ESTABLISHED", after=mark_b, timeout=15)
    time.sleep(1.5)
    b.command("sndcode", "1234#")
    time.sleep(2.5)                # "you have 1 message", the menu
    b.command("sndcode", "1")
    time.sleep(7.0)                # the message
    b.hangup()
    deadline = time.monotonic() + 5
    while True:
        new = sorted(b.recordings() - before)
        if (new and new[-1].stat().st_size > 8000) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert new, f"no recording of the retrieval call\n{b.log()}"
    share, rms = _tone_in(new[-1])
    assert rms > 300, "B heard silence"
    assert share > 0.5, f"A's {TONE} Hz tone not heard (share {share:.2f})"
