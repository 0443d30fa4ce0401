"""The status session state machine, driven by bytes and a fake clock."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.status.errors import ErrorCode
from protocols.status.framing import FrameDecoder, encode
from protocols.status.messages import (
    Error,
    Event,
    Hello,
    KeepAlive,
    Publish,
    Role,
    StatusRecord,
    Welcome,
    parse,
)
from protocols.status.session import (
    Closed,
    HelloReceived,
    MessageReceived,
    Opened,
    ProtocolViolation,
    SessionState,
    StatusSession,
)


def frames(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [parse(f) for f in decoder]


def events(session: StatusSession) -> list[object]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def open_pair(now: float = 0.0) -> tuple[StatusSession, StatusSession]:
    client = StatusSession(client=True, now=now)
    server = StatusSession(client=False, now=now)
    client.send_hello(Hello(role=Role.PUBLISHER, application="TC_1", incarnation=5), now)
    server.receive_data(client.data_to_send(), now)
    [hello] = events(server)
    assert isinstance(hello, HelloReceived) and hello.hello.application == "TC_1"
    server.accept(Welcome(application="SA_1", mirrors=("SA_1", "SA_2")), now)
    client.receive_data(server.data_to_send(), now)
    [opened] = events(client)
    assert isinstance(opened, Opened) and opened.welcome.mirrors == ("SA_1", "SA_2")
    return client, server


def test_hello_welcome_then_messages_flow() -> None:
    client, server = open_pair()
    assert client.state is SessionState.OPEN and server.state is SessionState.OPEN
    record = StatusRecord(user="ann@example.com", status="Available", server="SIP_1", seq=1)
    client.send(Publish(ref=1, records=(record,)), 1.0)
    server.receive_data(client.data_to_send(), 1.0)
    [received] = events(server)
    assert isinstance(received, MessageReceived)
    assert received.message == Publish(ref=1, records=(record,))


def test_event_frames_are_numbered_without_gaps_and_decode() -> None:
    _client, server = open_pair()
    packed = msgpack.packb([StatusRecord(user="a@x", status="Busy").to_wire()])
    assert server.send_event(packed, 1.0) == 1
    assert server.send_event(packed, 1.0) == 2
    decoded = frames(server.data_to_send())
    assert [e.seq for e in decoded if isinstance(e, Event)] == [1, 2]
    assert decoded[0].records[0].status == "Busy"  # type: ignore[union-attr]


def test_first_frame_other_than_hello_is_refused_and_closes() -> None:
    server = StatusSession(client=False, now=0.0)
    server.receive_data(encode({"message": "Query", "ref": 1, "users": []}), 0.0)
    out = events(server)
    assert isinstance(out[0], ProtocolViolation) and out[0].code is ErrorCode.UNEXPECTED_MESSAGE
    assert isinstance(out[-1], Closed) and server.closed
    [error] = frames(server.data_to_send())
    assert isinstance(error, Error) and error.code == ErrorCode.UNEXPECTED_MESSAGE


def test_wrong_version_is_refused() -> None:
    server = StatusSession(client=False, now=0.0)
    server.receive_data(encode({"message": "Hello", "role": "consumer", "application": "x",
                                "version": 9}), 0.0)
    assert server.closed
    [error] = frames(server.data_to_send())
    assert isinstance(error, Error) and error.code == ErrorCode.UNSUPPORTED_VERSION


def test_malformed_and_unknown_frames_answered_session_stays_open() -> None:
    _, server = open_pair()
    server.receive_data(b"\x00\x00\x00\x02\xc1\xc1", 1.0)  # not msgpack
    server.receive_data(encode({"message": "Bogus", "ref": 7}), 1.0)
    server.receive_data(encode({"message": "Publish", "ref": 8, "records": [{"user": 5}]}), 1.0)
    codes = [e.code for e in events(server) if isinstance(e, ProtocolViolation)]
    assert codes == [ErrorCode.MALFORMED_FRAME, ErrorCode.UNKNOWN_MESSAGE, ErrorCode.INVALID_FIELD]
    errors = frames(server.data_to_send())
    assert [(e.code, e.ref) for e in errors if isinstance(e, Error)] == [
        (ErrorCode.MALFORMED_FRAME, None), (ErrorCode.UNKNOWN_MESSAGE, 7),
        (ErrorCode.INVALID_FIELD, 8)]
    assert server.state is SessionState.OPEN


def test_oversized_frame_closes_from_the_prefix() -> None:
    server = StatusSession(client=False, now=0.0, max_frame_size=1000)
    server.receive_data((5000).to_bytes(4, "big") + b"x" * 10, 0.0)
    out = events(server)
    assert isinstance(out[0], ProtocolViolation) and out[0].code is ErrorCode.FRAME_TOO_LARGE
    assert server.closed


def test_keep_alive_sent_after_interval_and_silence_closes() -> None:
    _client, server = open_pair()
    assert server.next_timer() == pytest.approx(10.0)
    server.handle_timer(10.0)
    assert frames(server.data_to_send()) == [KeepAlive()]
    assert server.next_timer() == pytest.approx(20.0)
    server.handle_timer(20.0)
    server.data_to_send()
    server.handle_timer(30.0)
    assert server.closed and isinstance(events(server)[-1], Closed)


def test_hello_timeout() -> None:
    server = StatusSession(client=False, now=0.0, hello_timeout=5.0)
    assert server.next_timer() == 5.0
    server.handle_timer(4.9)
    assert not server.closed
    server.handle_timer(5.0)
    assert server.closed


def test_refused_client_sees_closed() -> None:
    client = StatusSession(client=True, now=0.0)
    server = StatusSession(client=False, now=0.0)
    client.send_hello(Hello(role=Role.PUBLISHER, application="desk"), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    events(server)
    server.refuse(ErrorCode.ROLE_NOT_ALLOWED, "desk may not publish", 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    [closed] = events(client)
    assert isinstance(closed, Closed) and "may not publish" in closed.reason and client.closed


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_any_bytes_are_answered_never_raised(data: bytes) -> None:
    _, server = open_pair()
    server.receive_data(data, 1.0)
    for event in events(server):
        assert isinstance(event, ProtocolViolation | MessageReceived | Closed)
    server.data_to_send()


@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                          st.floats(), st.text(),
                          st.lists(st.integers(0, 9))), max_size=12))
@settings(max_examples=300, deadline=None)
def test_malformed_records_are_invalid_field(fields: list[object]) -> None:
    _, server = open_pair()
    server.receive_data(encode({"message": "Publish", "ref": 1, "records": [fields]}), 1.0)
    out = events(server)
    assert len(out) == 1
    if isinstance(out[0], ProtocolViolation):
        assert out[0].code is ErrorCode.INVALID_FIELD
    else:  # a well-formed record by chance
        assert isinstance(out[0], MessageReceived)
