"""The asyncio T-Library client library and the ``sipcluster tlib`` tool,
against a small ServerSession-based server on loopback (docs/tlib.md)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient, TLibConnectionLost, TLibHandshakeError
from daemons.tools import tlib_cli
from protocols.tlib.catalogue import CLIENT_TYPES
from protocols.tlib.errors import ErrorCode, ValidationError
from protocols.tlib.session import (
    ClientRegistered,
    PeerLost,
    RequestReceived,
    ServerSession,
    SessionClosed,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


# -- a minimal T-Library server for these tests ----------------------------------


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: FakeTLibServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.session = ServerSession(
            application_name="SIPS_test",
            server_version="0.1.0-test",
            now=self.loop.time(),
            accepted_client_types=server.accepted,
        )
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.registered: ClientRegistered | None = None
        self.keepalives = 0
        self.calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.append(self)

    def data_received(self, data: bytes) -> None:
        if self.server.silent:
            return  # a hung server: reads nothing, answers nothing
        self.keepalives += data.count(b"RequestKeepAlive")
        self.session.receive_data(data, self.loop.time())
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(self.loop.time())
        if self.timer:
            self.timer.cancel()

    def on_timer(self) -> None:
        if self.server.silent:
            return  # a hung server does not hang up either
        self.session.handle_timer(self.loop.time())
        self.process()

    def push(self, name: str, **attrs: Any) -> None:
        self.session.send_event(name, self.loop.time(), attrs)
        self.process()

    def process(self) -> None:
        now = self.loop.time()
        while (event := self.session.next_event()) is not None:
            if isinstance(event, ClientRegistered):
                self.registered = event
            elif isinstance(event, RequestReceived):
                if event.name == self.server.drop_on:
                    assert self.transport is not None
                    self.transport.write(self.session.data_to_send())
                    self.transport.close()
                    return
                self.answer(event, now)
            elif isinstance(event, PeerLost | SessionClosed):
                self.server.lost.append(event)
        assert self.transport is not None
        data = self.session.data_to_send()
        if data:
            self.transport.write(data)
        if self.session.closed:
            self.transport.close()
            return
        if self.timer:
            self.timer.cancel()
        when = self.session.next_timer()
        self.timer = self.loop.call_at(when, self.on_timer) if when is not None else None

    def answer(self, request: RequestReceived, now: float) -> None:
        m = request.message
        s = self.session
        dn = m.get("AttributeThisDN")
        if request.name == "RequestAgentLogin":
            if m.get("AttributePassword") == "wrong":
                s.answer_error(request, ErrorCode.INVALID_PASSWORD, now, AttributeThisDN=dn)
            else:
                s.answer(
                    request,
                    "EventAgentLogin",
                    now,
                    AttributeThisDN=dn,
                    AttributeAgentID=m["AttributeAgentID"],
                )
        elif request.name == "RequestRegisterAddress":
            s.answer(request, "EventRegistered", now, AttributeThisDN=dn)
        elif request.name == "RequestAgentReady":
            s.answer(
                request,
                "EventAgentReady",
                now,
                AttributeThisDN=dn,
                AttributeAgentWorkMode=m.get("AttributeAgentWorkMode", "ManualIn"),
            )
        elif request.name == "RequestAgentNotReady":
            extra = {k: m[k] for k in ("AttributeAgentWorkMode", "AttributeReason") if k in m}
            s.answer(request, "EventAgentNotReady", now, AttributeThisDN=dn, **extra)
        elif request.name == "RequestMakeCall":
            self.calls += 1
            conn_id = f"{self.calls:016x}"
            s.answer(
                request,
                "EventDialing",
                now,
                AttributeThisDN=dn,
                AttributeConnID=conn_id,
                AttributeOtherDN=m["AttributeOtherDN"],
            )
            s.send_event(
                "EventRinging",
                now,
                AttributeThisDN=m["AttributeOtherDN"],
                AttributeConnID=conn_id,
                AttributeOtherDN=dn,
            )
        elif request.name == "RequestAttachUserData":
            s.answer(
                request,
                "EventAttachedDataChanged",
                now,
                AttributeThisDN=dn,
                AttributeConnID=m["AttributeConnID"],
                AttributeUserData=m["AttributeUserData"],
            )
        else:
            s.answer(request, "EventACK", now)


class FakeTLibServer:
    """A T-Library port that answers a few requests (tests only)."""

    def __init__(self, accepted: frozenset[str] = CLIENT_TYPES) -> None:
        self.accepted = accepted
        self.connections: list[_ServerConnection] = []
        self.lost: list[PeerLost | SessionClosed] = []
        self.silent = False
        self.drop_on: str | None = None
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeTLibServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def push(self, name: str, **attrs: Any) -> None:
        for conn in self.connections:
            if not conn.session.closed:
                conn.push(name, **attrs)

    def drop(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()

    async def stop(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def tserver() -> AsyncIterator[FakeTLibServer]:
    server = await FakeTLibServer().start()
    yield server
    await server.stop()


async def _next(iterator: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(iterator), 5)


# -- client library ----------------------------------------------------------------


async def test_connect_does_the_handshake(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "wwe-1", "smart")
    try:
        assert client.server_info["message"] == "EventServerInfo"
        assert client.server_info["AttributeApplicationName"] == "SIPS_test"
        assert client.server_info["AttributeServerVersion"] == "0.1.0-test"
        [conn] = tserver.connections
        assert conn.registered is not None
        assert conn.registered.application_name == "wwe-1"
        assert conn.registered.client_type == "smart"
        assert conn.registered.addp_timeout == 7.0
    finally:
        await client.close()
    assert client.closed


async def test_request_returns_the_answer_with_the_same_reference(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "desk")
    try:
        event = await client.request(
            "RequestAgentLogin", AttributeThisDN="1001", AttributeAgentID="a1001"
        )
        assert event["message"] == "EventAgentLogin"
        assert event["AttributeAgentID"] == "a1001"
        assert isinstance(event["AttributeReferenceID"], int)
        assert event["AttributeEventSequenceNumber"] == 2
        error = await client.request(
            "RequestAgentLogin",
            {"AttributeThisDN": "1002", "AttributeAgentID": "a1002", "AttributePassword": "wrong"},
        )
        assert error["message"] == "EventError"
        assert error["AttributeErrorCode"] == ErrorCode.INVALID_PASSWORD
        assert error["AttributeReferenceID"] == event["AttributeReferenceID"] + 1
    finally:
        await client.close()


async def test_concurrent_requests_are_matched(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "desk")
    try:
        dns = [str(2000 + i) for i in range(50)]
        answers = await asyncio.gather(
            *(client.request("RequestRegisterAddress", AttributeThisDN=dn) for dn in dns)
        )
        assert [a["AttributeThisDN"] for a in answers] == dns
        assert len({a["AttributeReferenceID"] for a in answers}) == 50
        sequences = [a["AttributeEventSequenceNumber"] for a in answers]
        assert sequences == sorted(sequences)
        assert client.pending == 0
    finally:
        await client.close()


async def test_unsolicited_events(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "desk")
    seen: list[str] = []
    client.add_listener(lambda e: seen.append(e["message"]))
    events = client.events()
    try:
        dialing = await client.request(
            "RequestMakeCall", AttributeThisDN="1001", AttributeOtherDN="1002"
        )
        assert dialing["message"] == "EventDialing"
        ringing = await _next(events)
        assert ringing["message"] == "EventRinging"
        assert ringing["AttributeConnID"] == dialing["AttributeConnID"]
        assert "AttributeReferenceID" not in ringing
        tserver.push("EventDNOutOfService", AttributeThisDN="1003")
        oos = await _next(events)
        assert oos["message"] == "EventDNOutOfService"
        assert oos["AttributeEventSequenceNumber"] > ringing["AttributeEventSequenceNumber"]
        assert seen == ["EventDialing", "EventRinging", "EventDNOutOfService"]
    finally:
        await client.close()
    # the iterator ends with the connection
    with pytest.raises(StopAsyncIteration):
        await _next(events)


async def test_invalid_request_is_refused_locally(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "desk")
    try:
        with pytest.raises(ValidationError):
            await client.request("RequestAgentLogin", AttributeThisDN="1001")
        with pytest.raises(ValidationError):
            await client.request("RequestNoSuchThing")
        # and the connection is still fine
        ack = await client.request(
            "RequestHoldCall", AttributeThisDN="1001", AttributeConnID="0000000000000001"
        )
        assert ack["message"] == "EventACK"
    finally:
        await client.close()


async def test_handshake_refused() -> None:
    server = await FakeTLibServer(accepted=frozenset({"legacy"})).start()
    try:
        with pytest.raises(TLibHandshakeError) as info:
            await TLibClient.connect("127.0.0.1", server.port, "icon", "smart")
        assert info.value.code == ErrorCode.CLIENT_TYPE_NOT_ACCEPTED
    finally:
        await server.stop()


async def test_connection_refused() -> None:
    server = await FakeTLibServer().start()
    port = server.port
    await server.stop()
    with pytest.raises(OSError):
        await TLibClient.connect("127.0.0.1", port, "desk", connect_timeout=5)


async def test_keepalives_keep_an_idle_connection(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect(
        "127.0.0.1", tserver.port, "desk", addp_timeout=0.1, addp_remote_timeout=2.0
    )
    try:
        [conn] = tserver.connections
        for _ in range(100):
            if conn.keepalives >= 3:
                break
            await asyncio.sleep(0.05)
        assert conn.keepalives >= 3
        assert not client.closed
        assert tserver.lost == []
        event = await client.request("RequestQueryServer")
        assert event["message"] == "EventServerInfo"
    finally:
        await client.close()


async def test_silent_server_is_declared_lost(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect(
        "127.0.0.1", tserver.port, "desk", addp_timeout=0.1, addp_remote_timeout=0.2
    )
    tserver.silent = True
    pending = client.submit("RequestAgentReady", AttributeThisDN="1001")
    with pytest.raises(TLibConnectionLost) as info:
        await asyncio.wait_for(pending, 10)
    assert info.value.reason == "addp-timeout"
    assert client.lost_reason == "addp-timeout"
    await asyncio.wait_for(client.wait_closed(), 5)
    with pytest.raises(TLibConnectionLost):
        client.submit("RequestAgentReady", AttributeThisDN="1001")


async def test_server_closing_fails_pending_requests(tserver: FakeTLibServer) -> None:
    client = await TLibClient.connect("127.0.0.1", tserver.port, "desk")
    tserver.drop_on = "RequestAgentLogout"
    events = client.events()
    with pytest.raises(TLibConnectionLost) as info:
        await client.request("RequestAgentLogout", AttributeThisDN="1001")
    assert info.value.reason == "connection-closed"
    with pytest.raises(StopAsyncIteration):
        await _next(events)
    await client.close()


# -- the sipcluster tlib tool --------------------------------------------------------


def _args(port: int, **overrides: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    tlib_cli.add_parser(sub)
    args = parser.parse_args(["tlib", "--connect", f"127.0.0.1:{port}", "--grace", "0.1"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


async def _lines(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item + "\n"


async def _run_cli(args: argparse.Namespace, lines: list[str]) -> tuple[int, list[Any], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await tlib_cli.run_session(args, _lines(lines), out, err)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


async def test_cli_session(tserver: FakeTLibServer) -> None:
    blob = base64.b64encode(b"\x00\x01binary").decode()
    lines = [
        json.dumps({"message": "RequestRegisterAddress", "AttributeThisDN": "1001"}),
        json.dumps(
            {"message": "RequestAgentLogin", "AttributeThisDN": "1001", "AttributeAgentID": "a1001"}
        ),
        "",
        json.dumps(
            {
                "message": "RequestAgentNotReady",
                "AttributeThisDN": "1001",
                "AttributeAgentWorkMode": "AfterCallWork",
                "AttributeReason": {"ReasonCode": "Wrap"},
            }
        ),
        json.dumps(
            {
                "message": "RequestAttachUserData",
                "AttributeThisDN": "1001",
                "AttributeConnID": "0000000000000007",
                "AttributeReferenceID": 500,
                "AttributeUserData": {"text": "gold", "raw": {"$base64": blob}},
            }
        ),
        json.dumps(
            {"message": "RequestMakeCall", "AttributeThisDN": "1001", "AttributeOtherDN": "1002"}
        ),
    ]
    rc, events, err = await _run_cli(_args(tserver.port, app="wwe-cli", smart=True), lines)
    assert rc == 0, err
    assert [e["message"] for e in events] == [
        "EventServerInfo",
        "EventRegistered",
        "EventAgentLogin",
        "EventAgentNotReady",
        "EventAttachedDataChanged",
        "EventDialing",
        "EventRinging",
    ]
    assert events[3]["AttributeAgentWorkMode"] == "AfterCallWork"
    assert events[3]["AttributeReason"] == {"ReasonCode": "Wrap"}
    attached = events[4]
    assert attached["AttributeReferenceID"] == 500  # a ReferenceID given on input is kept
    assert attached["AttributeUserData"] == {"text": "gold", "raw": {"$base64": blob}}
    assert [e["AttributeEventSequenceNumber"] for e in events] == list(range(1, 8))
    [conn] = tserver.connections
    assert conn.registered is not None
    assert (conn.registered.application_name, conn.registered.client_type) == ("wwe-cli", "smart")


async def test_cli_reports_bad_lines(tserver: FakeTLibServer) -> None:
    lines = [
        "not json",
        json.dumps(["a list"]),
        json.dumps({"AttributeThisDN": "1001"}),
        json.dumps({"message": "RequestAgentLogin", "AttributeThisDN": "1001"}),
        json.dumps({"message": "RequestAgentReady", "AttributeThisDN": "1001"}),
    ]
    rc, events, err = await _run_cli(_args(tserver.port), lines)
    assert rc == 2
    assert [e["message"] for e in events] == ["EventServerInfo", "EventAgentReady"]
    assert "line 1" in err and "line 2" in err and "line 3" in err
    assert "line 4" in err and "AttributeAgentID" in err


async def test_cli_connection_lost(tserver: FakeTLibServer) -> None:
    tserver.drop_on = "RequestAgentLogout"
    lines = [
        json.dumps({"message": "RequestAgentReady", "AttributeThisDN": "1001"}),
        json.dumps({"message": "RequestAgentLogout", "AttributeThisDN": "1001"}),
    ]
    rc, events, err = await _run_cli(_args(tserver.port), lines)
    assert rc == 1
    assert [e["message"] for e in events] == ["EventServerInfo", "EventAgentReady"]
    assert "connection lost" in err


async def test_cli_cannot_connect() -> None:
    server = await FakeTLibServer().start()
    port = server.port
    await server.stop()
    rc, events, err = await _run_cli(_args(port), [])
    assert rc == 1 and events == []
    assert "cannot connect" in err


async def test_cli_as_a_module_over_stdin(tserver: FakeTLibServer) -> None:
    request = {
        "message": "RequestAgentLogin",
        "AttributeThisDN": "1001",
        "AttributeAgentID": "a1001",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemons.tools.tlib_cli",
        "--connect",
        f"127.0.0.1:{tserver.port}",
        "--app",
        "desk-cli",
        "--grace",
        "0.1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(
        proc.communicate((json.dumps(request) + "\n").encode()), 30
    )
    assert proc.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [e["message"] for e in events] == ["EventServerInfo", "EventAgentLogin"]
    assert events[1]["AttributeAgentID"] == "a1001"
    assert tserver.connections[0].registered is not None
    assert tserver.connections[0].registered.application_name == "desk-cli"


def test_cli_parser_helpers() -> None:
    assert tlib_cli.parse_host_port("127.0.1.10:3000") == ("127.0.1.10", 3000)
    assert tlib_cli.parse_host_port("[::1]:3000") == ("::1", 3000)
    for bad in ("nohost", ":3000", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError):
            tlib_cli.parse_host_port(bad)
    value = {"a": [b"\xff", {"b": b""}], "s": "x"}
    assert tlib_cli.from_json(json.loads(json.dumps(tlib_cli.to_json(value)))) == value
    with pytest.raises(ValueError):
        tlib_cli.from_json({"$base64": "!!"})


async def test_a_listener_that_takes_unsolicited_events_leaves_none_queued(
    tserver: FakeTLibServer,
) -> None:
    """A client that only listens (the director's links) must not keep every
    unsolicited event for an events() iteration that never comes."""
    keeps = await TLibClient.connect("127.0.0.1", tserver.port, "keeps")
    takes = await TLibClient.connect("127.0.0.1", tserver.port, "takes")
    kept: list[str] = []
    taken: list[str] = []
    all_in = asyncio.Event()

    def record(into: list[str]) -> Any:
        def listener(event: dict[str, Any]) -> None:
            into.append(event["message"])
            if len(kept) >= 100 and len(taken) >= 100:
                all_in.set()
        return listener

    keeps.add_listener(record(kept))
    takes.add_listener(record(taken), takes_unsolicited=True)
    try:
        for i in range(100):
            tserver.push("EventDNOutOfService", AttributeThisDN=str(3000 + i))
        async with asyncio.timeout(5):
            await all_in.wait()
        assert keeps.queued == 100  # waiting for events()
        assert takes.queued == 0
        answer = await takes.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert answer["message"] == "EventRegistered"  # answers still reach request()
    finally:
        await keeps.close()
        await takes.close()
