"""Bad input against the real hub: each refused with a logged reason and a
counter, the hub goes on serving, nothing already accepted is lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemons.runtime.rtm_client import Delivery, RtmClient, RtmRefused, check_site
from protocols.rtm.elements import MessageBuilder
from protocols.rtm.events import HandshakeRefused, Welcomed
from protocols.rtm.session import SiteSession
from protocols.tlib.framing import FrameDecoder, encode_frame
from tests.daemons.rtm_server.conftest import (
    PASSWORDS,
    Hub,
    HubSpec,
    Proc,
    hub_spec,
    until,
    write_cluster,
)


@pytest.fixture
async def hub(tmp_path: Path, procs: list[Proc]) -> AsyncIterator[Hub]:
    spec = hub_spec("RTM1", "127.0.123.1")
    config = write_cluster(tmp_path / "cluster.toml", [spec],
                           {"store": f"sqlite:{tmp_path}/hub.db", "keep-alive": 2.0,
                            "max-rate": 100, "max-frame-size": 4096})
    h = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(h)
    await asyncio.to_thread(h.wait_role, "active")
    yield h


class Raw:
    """A site speaking the protocol by hand over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: SiteSession) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.decoder = FrameDecoder()

    @classmethod
    async def login(cls, spec: HubSpec, site: int, password: str) -> Raw:
        reader, writer = await asyncio.open_connection(spec.host, spec.rtm_port)
        loop = asyncio.get_running_loop()
        session = SiteSession(site=site, password=password, now=loop.time())
        raw = cls(reader, writer, session)
        writer.write(session.data_to_send())
        while not session.open and not session.closed:
            data = await asyncio.wait_for(reader.read(65536), 20)
            if not data:
                break
            session.receive_data(data, loop.time())
            writer.write(session.data_to_send())
        return raw

    def refusal(self) -> HandshakeRefused | None:
        while (e := self.session.next_event()) is not None:
            if isinstance(e, HandshakeRefused):
                return e
            assert not isinstance(e, Welcomed) or self.session.open
        return None

    async def frames(self, wait: float = 5.0) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), wait)
                if not data:
                    break
                self.decoder.feed(data)
                out.extend(self.decoder)
                wait = 1.0
        except TimeoutError:
            pass
        return out


async def metric(hub: Hub, name: str, **labels: str) -> float:
    return await asyncio.to_thread(hub.metric, name, **labels)


async def test_refused_sessions_are_logged_counted_and_the_hub_serves_on(
        hub: Hub, tmp_path: Path) -> None:
    spec = hub.spec
    wrong = await Raw.login(spec, 1, PASSWORDS[1].lower())
    assert wrong.refusal() == HandshakeRefused(1, "auth-failed",
                                               "site id or password not accepted")
    unknown = await Raw.login(spec, 77, "whatever")
    assert unknown.refusal() is not None and unknown.session.closed
    first = await Raw.login(spec, 2, PASSWORDS[2])
    assert first.session.open
    second = await Raw.login(spec, 2, PASSWORDS[2])
    refused = second.refusal()
    assert refused is not None and refused.code == "already-connected"
    with pytest.raises(RtmRefused) as exc:
        await check_site(spec.host, spec.rtm_port, 3, "nope")
    assert exc.value.code == "auth-failed"
    report = await check_site(spec.host, spec.rtm_port, 2, PASSWORDS[2])
    assert report["connected"] is True  # the check did not take site 2's session
    assert await metric(hub, "sipcluster_rtm_refused_total", reason="auth-failed") == 3
    assert await metric(hub, "sipcluster_rtm_refused_total",
                        reason="already-connected") == 1
    log = hub.log.read_text()
    assert '"detail": "wrong password"' in log and '"detail": "unknown site id"' in log
    assert '"reason": "already-connected"' in log
    first.writer.close()


async def test_bad_frames_and_wrong_elements_lose_nothing_accepted(
        hub: Hub, tmp_path: Path) -> None:
    spec = hub.spec
    got: list[Delivery] = []
    receiver = RtmClient(site=3, password=PASSWORDS[3], hubs=[(spec.host, spec.rtm_port)],
                         state=tmp_path / "s3.db", handler=got.append)
    await receiver.start()
    raw = await Raw.login(spec, 1, PASSWORDS[1])
    assert raw.session.open
    loop = asyncio.get_running_loop()

    def send(seq: int, elements: object) -> bytes:
        return encode_frame({"message": "Send", "seq": seq, "kind": "event", "to": "3",
                             "object": "o", "event": "e", "elements": elements})

    good = [["i", 1], ["s", "one"]]
    raw.writer.write(send(1, good))
    raw.writer.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # not msgpack
    raw.writer.write(encode_frame({"message": "Teleport"}))
    raw.writer.write(send(2, [["i", "two"]]))  # wrong element type
    raw.writer.write(send(3, [["i", 3]]))
    answers = await raw.frames()
    by_name: dict[str, list[dict[str, object]]] = {}
    for f in answers:
        by_name.setdefault(str(f["message"]), []).append(f)
    assert [f["code"] for f in by_name["Error"]] == ["malformed-frame", "unknown-message"]
    assert [(f["seq"], f["code"]) for f in by_name["Rejected"]] == [(2, "bad-element")]
    assert max(int(f["seq"]) for f in by_name["Accepted"]) == 3  # type: ignore[call-overload]
    # an oversized frame closes this session only
    raw.writer.write((10_000).to_bytes(4, "big") + b"\x80" * 100)
    closing = await raw.frames()
    assert any(f.get("code") == "frame-too-large" for f in closing)
    assert raw.reader.at_eof()
    await until(lambda: len(got) >= 2, 10, "the accepted messages")
    assert [d.reader().get_integer() for d in got] == [1, 3]
    for reason in ("malformed-frame", "unknown-message", "bad-element", "frame-too-large"):
        assert await metric(hub, "sipcluster_rtm_refused_total", reason=reason) == 1, reason
    # site 1 can log on again: the refused frames did not leave it stuck
    again = await Raw.login(spec, 1, PASSWORDS[1])
    assert again.session.open
    again.writer.close()
    await receiver.close()
    del loop


async def test_a_flood_is_slowed_down_not_lost(hub: Hub, tmp_path: Path) -> None:
    spec = hub.spec
    got: list[Delivery] = []
    receiver = RtmClient(site=2, password=PASSWORDS[2], hubs=[(spec.host, spec.rtm_port)],
                         state=tmp_path / "s2.db", handler=got.append)
    sender = RtmClient(site=1, password=PASSWORDS[1], hubs=[(spec.host, spec.rtm_port)],
                       state=tmp_path / "s1.db")
    await receiver.start()
    await sender.start()
    count = 400  # four times the hub's max-rate of 100/s
    await asyncio.gather(*(sender.send_event(2, "o", "e", MessageBuilder().put_integer(i).elements)
                           for i in range(count)))
    async with asyncio.timeout(30):
        await sender.flushed()
    await until(lambda: len(got) >= count, 30, "every message of the flood")
    assert [d.reader().get_integer() for d in got] == list(range(count))
    assert await metric(hub, "sipcluster_rtm_refused_total", reason="flood") >= 1
    assert '"rtm_flood"' in hub.log.read_text()
    status = json.loads((await asyncio.to_thread(hub.http, "/status/sites"))[1])
    assert status["sites"]["2"]["queued"] == 0
    await sender.close()
    await receiver.close()
