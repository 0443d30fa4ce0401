"""T-Library sessions with a fake clock (docs/tlib.md, "Session", "ADDP")."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.tlib.errors import ErrorCode, FrameTooLarge, SessionError, ValidationError
from protocols.tlib.events import (
    ClientRegistered,
    EventReceived,
    HandshakeFailed,
    PeerLost,
    ProtocolViolation,
    RequestReceived,
    RequestRejected,
    ServerInfoReceived,
    SessionClosed,
    SessionEvent,
)
from protocols.tlib.framing import MAX_FRAME_SIZE, FrameDecoder, encode_frame
from protocols.tlib.session import (
    DEFAULT_REGISTRATION_TIMEOUT,
    TRANSITIONS,
    ClientSession,
    ServerSession,
    SessionInput,
    SessionState,
)

T0 = 1000.0
OFFSET = 1_700_000_000.0  # monotonic -> Unix time


def server(now: float = T0, **kwargs: Any) -> ServerSession:
    return ServerSession(
        application_name="SIPS_dc1_1",
        server_version="0.1.0",
        now=now,
        time_offset=OFFSET,
        **kwargs,
    )


def client(now: float = T0, **kwargs: Any) -> ClientSession:
    return ClientSession(application_name="desktop-1", now=now, **kwargs)


def frames(data: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return list(decoder)


def events(session: ServerSession | ClientSession) -> list[SessionEvent]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def pump(
    src: ServerSession | ClientSession, dst: ServerSession | ClientSession, now: float
) -> bytes:
    data = src.data_to_send()
    dst.receive_data(data, now)
    return data


def registered_pair(now: float = T0, **server_kwargs: Any) -> tuple[ClientSession, ServerSession]:
    c = client(now)
    s = server(now, **server_kwargs)
    pump(c, s, now)
    pump(s, c, now)
    events(c)
    events(s)
    return c, s


def raw_request(name: str, **attrs: Any) -> bytes:
    return encode_frame({"message": name, **attrs})


# -- handshake ------------------------------------------------------------------


def test_handshake() -> None:
    c = client(client_type="smart")
    s = server()
    [register] = frames(sent := c.data_to_send())
    assert register["message"] == "RequestRegisterClient"
    assert register["AttributeApplicationName"] == "desktop-1"
    assert register["AttributeClientType"] == "smart"
    assert register["AttributeProtocolVersion"] == 1
    assert register["AttributeExtensions"] == {"addp-timeout": 7.0, "addp-remote-timeout": 11.0}
    s.receive_data(sent, T0 + 0.25)
    [registered] = events(s)
    assert registered == ClientRegistered("desktop-1", "smart", 1, 7.0, 11.0)
    assert s.state is SessionState.REGISTERED
    [info] = frames(answer := s.data_to_send())
    assert info["message"] == "EventServerInfo"
    assert info["AttributeReferenceID"] == register["AttributeReferenceID"]
    assert info["AttributeApplicationName"] == "SIPS_dc1_1"
    assert info["AttributeServerVersion"] == "0.1.0"
    assert info["AttributeProtocolVersion"] == 1
    assert info["AttributeEventSequenceNumber"] == 1
    assert info["AttributeTimeinSecs"] == int(OFFSET + T0)
    assert info["AttributeTimeinuSecs"] == 250000
    c.receive_data(answer, T0 + 0.3)
    [done] = events(c)
    assert isinstance(done, ServerInfoReceived)
    assert done.application_name == "SIPS_dc1_1"
    assert c.state is SessionState.REGISTERED
    assert c.server_info == info


@pytest.mark.parametrize("first", ["RequestAgentLogin", "RequestKeepAlive", "EventACK", "Bogus"])
def test_anything_before_registration_is_refused_and_closed(first: str) -> None:
    s = server()
    s.receive_data(raw_request(first, AttributeReferenceID=5, AttributeThisDN="1001"), T0)
    [error] = frames(s.data_to_send())
    assert error["message"] == "EventError"
    assert error["AttributeErrorCode"] == ErrorCode.CLIENT_NOT_REGISTERED
    assert first in error["AttributeErrorMessage"]
    assert error["AttributeReferenceID"] == 5
    evs = events(s)
    assert isinstance(evs[0], RequestRejected) and evs[0].code == ErrorCode.CLIENT_NOT_REGISTERED
    assert evs[-1] == SessionClosed(ErrorCode.CLIENT_NOT_REGISTERED, error["AttributeErrorMessage"])
    assert s.closed
    # a closed session ignores everything after
    s.receive_data(raw_request("RequestRegisterClient"), T0)
    assert s.data_to_send() == b"" and events(s) == []


def test_registration_frames_after_the_refused_one_are_ignored() -> None:
    s = server()
    s.receive_data(
        raw_request("RequestQueryServer", AttributeReferenceID=1) + client().data_to_send(), T0
    )
    assert [f["message"] for f in frames(s.data_to_send())] == ["EventError"]
    assert s.closed


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"AttributeClientType": None}, ErrorCode.MISSING_ATTRIBUTE),
        ({"AttributeClientType": "fancy"}, ErrorCode.INVALID_ATTRIBUTE),
        ({"AttributeProtocolVersion": 0}, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION),
        ({"AttributeExtensions": {"addp-timeout": "7"}}, ErrorCode.INVALID_ATTRIBUTE),
        ({"AttributeExtensions": {"addp-timeout": 7}}, ErrorCode.INVALID_ATTRIBUTE),
    ],
)
def test_bad_registration(change: dict[str, Any], code: ErrorCode) -> None:
    register = {
        "message": "RequestRegisterClient",
        "AttributeReferenceID": 1,
        "AttributeApplicationName": "x",
        "AttributeClientType": "legacy",
        "AttributeProtocolVersion": 1,
    }
    for key, value in change.items():
        if value is None:
            del register[key]
        else:
            register[key] = value
    s = server()
    s.receive_data(encode_frame(register), T0)
    [error] = frames(s.data_to_send())
    assert error["AttributeErrorCode"] == code
    assert error["AttributeReferenceID"] == 1
    assert s.closed


def test_smart_proxy_port_refuses_smart_clients() -> None:
    c = client(client_type="smart")
    s = server(accepted_client_types=frozenset({"legacy"}))
    pump(c, s, T0)
    answer = pump(s, c, T0)
    [error] = frames(answer)
    assert error["AttributeErrorCode"] == ErrorCode.CLIENT_TYPE_NOT_ACCEPTED
    assert s.closed and c.closed
    [failed] = events(c)
    assert failed == HandshakeFailed(
        ErrorCode.CLIENT_TYPE_NOT_ACCEPTED, error["AttributeErrorMessage"]
    )


def test_newer_client_gets_the_server_version() -> None:
    c = client(protocol_version=5)
    s = server()
    pump(c, s, T0)
    assert s.negotiated_version == 1
    pump(s, c, T0)
    [info] = events(c)
    assert isinstance(info, ServerInfoReceived) and info.protocol_version == 1


def test_second_registration_is_refused_but_session_stays() -> None:
    _c, s = registered_pair()
    s.receive_data(
        raw_request(
            "RequestRegisterClient",
            AttributeReferenceID=99,
            AttributeApplicationName="again",
            AttributeClientType="legacy",
            AttributeProtocolVersion=1,
        ),
        T0,
    )
    [error] = frames(s.data_to_send())
    assert error["AttributeErrorCode"] == ErrorCode.ALREADY_REGISTERED
    assert error["AttributeReferenceID"] == 99
    assert not s.closed


def test_registration_timeout() -> None:
    s = server(registration_timeout=10.0)
    assert s.next_timer() == T0 + 10
    s.handle_timer(T0 + 9.99)
    assert not s.closed
    s.handle_timer(T0 + 10)
    assert events(s) == [PeerLost("registration-timeout")]
    assert s.closed and s.next_timer() is None


def test_requests_may_follow_registration_in_the_same_chunk() -> None:
    c = client()
    ref = c.send_request("RequestRegisterAddress", T0, AttributeThisDN="1001")
    s = server()
    pump(c, s, T0)
    evs = events(s)
    assert isinstance(evs[0], ClientRegistered)
    assert evs[1] == RequestReceived(
        "RequestRegisterAddress",
        ref,
        {
            "message": "RequestRegisterAddress",
            "AttributeThisDN": "1001",
            "AttributeReferenceID": ref,
        },
    )


# -- requests, answers, ReferenceID, sequence numbers ---------------------------


def test_reference_id_is_echoed() -> None:
    c, s = registered_pair()
    ref = c.send_request(
        "RequestAgentLogin", T0 + 1, AttributeThisDN="1001", AttributeAgentID="a1001"
    )
    pump(c, s, T0 + 1)
    [request] = events(s)
    assert isinstance(request, RequestReceived)
    assert request.reference_id == ref
    assert request.message["AttributeAgentID"] == "a1001"
    s.answer(request, "EventAgentLogin", T0 + 1.5, AttributeThisDN="1001", AttributeAgentID="a1001")
    pump(s, c, T0 + 1.5)
    [answer] = events(c)
    assert isinstance(answer, EventReceived)
    assert answer.name == "EventAgentLogin"
    assert answer.reference_id == ref
    assert answer.message["AttributeTimeinSecs"] == int(OFFSET + T0 + 1.5)
    assert answer.message["AttributeTimeinuSecs"] == 500000


def test_reference_ids_increase_and_caller_ids_are_kept() -> None:
    c, _ = registered_pair()
    first = c.send_request("RequestQueryServer", T0)
    second = c.send_request("RequestQueryServer", T0)
    assert second == first + 1
    assert c.send_request("RequestQueryServer", T0, AttributeReferenceID=777) == 777


def test_sequence_numbers_per_connection() -> None:
    c, s = registered_pair()
    sequences = [
        s.send_event("EventDNBackInService", T0 + i, AttributeThisDN=str(1000 + i))
        for i in range(1, 6)
    ]
    assert sequences == [2, 3, 4, 5, 6]  # 1 was EventServerInfo
    pump(s, c, T0 + 6)
    got = events(c)
    assert [e.sequence for e in got if isinstance(e, EventReceived)] == sequences
    assert [e.message["AttributeThisDN"] for e in got if isinstance(e, EventReceived)] == [
        "1001",
        "1002",
        "1003",
        "1004",
        "1005",
    ]
    other = server()
    assert other.send_event("EventACK", T0) == 1  # another connection starts again


def test_invalid_event_is_not_sent_and_uses_no_sequence_number() -> None:
    _, s = registered_pair()
    with pytest.raises(ValidationError):
        s.send_event("EventAgentReady", T0)  # AttributeThisDN missing
    assert s.data_to_send() == b""
    assert s.send_event("EventACK", T0) == 2


def test_trusted_event_skips_validation_but_is_stamped_and_framed() -> None:
    c, s = registered_pair()
    # EventRinging without AttributeConnID would fail send_event's catalogue check
    seq = s.send_trusted_event("EventRinging", T0 + 1, {"AttributeThisDN": "1001"})
    assert seq == 2
    with pytest.raises(ValidationError):
        s.send_event("EventRinging", T0 + 1, AttributeThisDN="1001")
    assert s.send_trusted_event("EventACK", T0 + 2, {}) == 3
    sent = frames(s.data_to_send())
    assert [f["AttributeEventSequenceNumber"] for f in sent] == [2, 3]
    assert sent[0]["message"] == "EventRinging" and sent[0]["AttributeThisDN"] == "1001"
    assert sent[0]["AttributeTimeinSecs"] == int(T0 + 1 + OFFSET)
    c.receive_data(encode_frame(sent[1]), T0 + 2)
    assert [e.sequence for e in events(c) if isinstance(e, EventReceived)] == [3]
    s.close(T0 + 3)
    with pytest.raises(SessionError):
        s.send_trusted_event("EventACK", T0 + 3, {})


def test_query_server_and_keepalive_are_answered_by_the_session() -> None:
    c, s = registered_pair()
    q = c.send_request("RequestQueryServer", T0)
    k = c.send_request("RequestKeepAlive", T0)
    pump(c, s, T0)
    assert events(s) == []
    answers = frames(pump(s, c, T0))
    assert [(a["message"], a["AttributeReferenceID"]) for a in answers] == [
        ("EventServerInfo", q),
        ("EventKeepAlive", k),
    ]
    # the keep-alive answer is consumed by the client session
    assert [e.name for e in events(c) if isinstance(e, EventReceived)] == ["EventServerInfo"]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"message": "RequestTeleport", "AttributeReferenceID": 3}, ErrorCode.UNKNOWN_MESSAGE),
        ({"AttributeReferenceID": 3}, ErrorCode.UNKNOWN_MESSAGE),
        (
            {"message": "RequestAgentLogin", "AttributeReferenceID": 3, "AttributeThisDN": "1001"},
            ErrorCode.MISSING_ATTRIBUTE,
        ),
        (
            {"message": "RequestAgentReady", "AttributeReferenceID": 3, "AttributeThisDN": 1001},
            ErrorCode.INVALID_ATTRIBUTE,
        ),
        (
            {"message": "EventAgentReady", "AttributeReferenceID": 3, "AttributeThisDN": "1001"},
            ErrorCode.UNEXPECTED_MESSAGE,
        ),
    ],
)
def test_bad_request_gets_event_error_and_session_goes_on(
    message: dict[str, Any], code: ErrorCode
) -> None:
    c, s = registered_pair()
    s.receive_data(encode_frame(message), T0)
    [rejected] = events(s)
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == code and rejected.reference_id == 3
    [error] = frames(s.data_to_send())
    assert error["message"] == "EventError"
    assert error["AttributeErrorCode"] == code
    assert error["AttributeErrorMessage"] == rejected.text
    assert error["AttributeReferenceID"] == 3
    # still serving
    ref = c.send_request("RequestRegisterAddress", T0, AttributeThisDN="1001")
    pump(c, s, T0)
    [request] = events(s)
    assert isinstance(request, RequestReceived) and request.reference_id == ref


def test_answer_error_uses_the_table_text() -> None:
    c, s = registered_pair()
    c.send_request(
        "RequestAgentLogin",
        T0,
        AttributeThisDN="1001",
        AttributeAgentID="a",
        AttributePassword="wrong",
    )
    pump(c, s, T0)
    [request] = events(s)
    assert isinstance(request, RequestReceived)
    s.answer_error(request, ErrorCode.INVALID_PASSWORD, T0, AttributeThisDN="1001")
    [error] = frames(s.data_to_send())
    assert error["AttributeErrorCode"] == 56
    assert error["AttributeErrorMessage"] == "Invalid password"
    assert error["AttributeReferenceID"] == request.reference_id


def test_malformed_frame_gets_event_error() -> None:
    _, s = registered_pair()
    s.receive_data(struct.pack(">I", 1) + b"\xc1", T0)
    [rejected] = events(s)
    assert isinstance(rejected, RequestRejected) and rejected.code == ErrorCode.MALFORMED_FRAME
    [error] = frames(s.data_to_send())
    assert error["AttributeErrorCode"] == ErrorCode.MALFORMED_FRAME
    assert "AttributeReferenceID" not in error
    assert not s.closed


def test_oversized_frame_closes_cleanly() -> None:
    _c, s = registered_pair(max_frame_size=1000)
    s.receive_data(struct.pack(">I", 5000) + b"x" * 100, T0)
    evs = events(s)
    assert isinstance(evs[-1], SessionClosed) and evs[-1].code == ErrorCode.FRAME_TOO_LARGE
    [error] = frames(s.data_to_send())
    assert error["AttributeErrorCode"] == ErrorCode.FRAME_TOO_LARGE
    assert s.closed and s.next_timer() is None
    with pytest.raises(SessionError):
        s.send_event("EventACK", T0)


def test_client_refuses_oversized_requests() -> None:
    c = client(max_frame_size=300)
    c.data_to_send()
    with pytest.raises(FrameTooLarge) as info:
        c.send_request(
            "RequestAttachUserData",
            T0,
            AttributeThisDN="1",
            AttributeConnID="c",
            AttributeUserData={"x": "y" * 500},
        )
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert c.data_to_send() == b""


def test_client_validates_requests() -> None:
    c = client()
    with pytest.raises(ValidationError):
        c.send_request("RequestAgentLogin", T0, AttributeThisDN="1001")
    with pytest.raises(SessionError):
        c.send_request("RequestRegisterClient", T0)


def test_client_reports_bad_events_without_closing() -> None:
    c, s = registered_pair()
    s.send_event("EventACK", T0)
    data = s.data_to_send()
    c.receive_data(
        encode_frame({"message": "EventMystery", "AttributeEventSequenceNumber": 50}) + data, T0
    )
    evs = events(c)
    assert isinstance(evs[0], ProtocolViolation) and evs[0].code == ErrorCode.UNKNOWN_MESSAGE
    assert isinstance(evs[1], EventReceived) and evs[1].name == "EventACK"
    assert not c.closed


def test_client_flags_sequence_going_backwards() -> None:
    c, s = registered_pair()
    s.send_event("EventACK", T0)
    data = s.data_to_send()
    c.receive_data(data + data, T0)  # the same sequence number twice
    evs = events(c)
    assert [type(e) for e in evs] == [EventReceived, ProtocolViolation, EventReceived]


def test_connection_lost() -> None:
    c, s = registered_pair()
    s.connection_lost(T0)
    c.connection_lost(T0)
    assert events(s) == [PeerLost("connection-closed")]
    assert events(c) == [PeerLost("connection-closed")]


# -- ADDP -----------------------------------------------------------------------


def test_client_keepalive_when_idle_and_server_answers() -> None:
    c, s = registered_pair()
    assert c.next_timer() == T0 + 7  # nothing sent since T0
    c.handle_timer(T0 + 6.9)
    assert c.data_to_send() == b""
    c.handle_timer(T0 + 7)
    [poll] = frames(data := c.data_to_send())
    assert poll["message"] == "RequestKeepAlive"
    s.receive_data(data, T0 + 7.1)
    [answer] = frames(answer_data := s.data_to_send())
    assert answer["message"] == "EventKeepAlive"
    assert answer["AttributeReferenceID"] == poll["AttributeReferenceID"]
    c.receive_data(answer_data, T0 + 7.2)
    assert events(c) == [] and events(s) == []
    assert c.next_timer() == T0 + 14  # next poll 7 s after the last frame sent


def test_client_sends_no_keepalive_while_busy() -> None:
    c, s = registered_pair()
    sent = []
    for i in range(1, 20):
        c.send_request("RequestQueryServer", T0 + i * 5)
        c.handle_timer(T0 + i * 5 + 1)
        sent += frames(pump(c, s, T0 + i * 5 + 1))
        pump(s, c, T0 + i * 5 + 1)
    assert len(sent) == 19
    assert {f["message"] for f in sent} == {"RequestQueryServer"}
    assert not c.closed


def test_client_declares_silent_server_lost() -> None:
    c, _ = registered_pair()
    now = T0
    lost_at = None
    while now < T0 + 60:
        timer = c.next_timer()
        assert timer is not None
        now = timer
        c.handle_timer(now)
        if c.closed:
            lost_at = now
            break
    # polls at +7 and +14 got no answer; lost 7 + 11 s after the last frame received
    assert lost_at == T0 + 18
    polls = frames(c.data_to_send())
    assert [p["message"] for p in polls] == ["RequestKeepAlive", "RequestKeepAlive"]
    assert events(c) == [PeerLost("addp-timeout")]


def test_server_declares_silent_client_lost() -> None:
    _, s = registered_pair()
    assert s.addp_timeout == 7.0 and s.addp_remote_timeout == 11.0  # announced by the client
    assert s.next_timer() == T0 + 18
    s.handle_timer(T0 + 17.99)
    assert not s.closed
    # traffic moves the deadline
    s.receive_data(raw_request("RequestKeepAlive", AttributeReferenceID=50), T0 + 10)
    assert s.next_timer() == T0 + 28
    s.handle_timer(T0 + 27.9)
    assert not s.closed
    s.handle_timer(T0 + 28)
    assert events(s) == [PeerLost("addp-timeout")]
    assert s.closed


def test_server_without_addp_does_not_time_out() -> None:
    c = client(addp_timeout=None)
    s = server(registration_timeout=None)
    pump(c, s, T0)
    assert s.addp_timeout is None
    assert s.next_timer() is None
    assert c.next_timer() is None


def test_server_own_addp_for_clients_that_announce_none() -> None:
    c = client(addp_timeout=None)
    s = server(addp_timeout=3.0, addp_remote_timeout=2.0)
    pump(c, s, T0)
    assert s.next_timer() == T0 + 5


def test_healthy_pair_never_loses_each_other() -> None:
    c, s = registered_pair()
    now = T0
    while now < T0 + 300:
        timers = [t for t in (c.next_timer(), s.next_timer()) if t is not None]
        now = min(timers) + 0.05  # both sides 50 ms late
        c.handle_timer(now)
        s.handle_timer(now)
        pump(c, s, now + 0.01)
        pump(s, c, now + 0.02)
    assert not c.closed and not s.closed
    assert events(c) == [] and events(s) == []
    assert s.frames_received > 300 / 7.1 - 2


def test_server_pushing_events_still_hears_the_client() -> None:
    # the server sends constantly, the client requests nothing: the client
    # still polls because the rule is about what it sent
    c, s = registered_pair()
    now = T0
    while now < T0 + 100:
        now += 1
        s.send_event("EventDNBackInService", now, AttributeThisDN="1001")
        c.handle_timer(now)
        s.handle_timer(now)
        pump(s, c, now)
        pump(c, s, now)
    assert not s.closed and not c.closed
    assert not any(isinstance(e, PeerLost) for e in events(s))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_server_session_never_raises_on_random_input(chunks: list[bytes]) -> None:
    _c, s = registered_pair()
    for chunk in chunks:
        s.receive_data(chunk, T0)
    for frame in frames(s.data_to_send()):
        assert frame["message"] == "EventError"
        assert frame["AttributeErrorCode"] in {int(code) for code in ErrorCode}


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "message",
                "AttributeReferenceID",
                "AttributeThisDN",
                "AttributeAgentID",
                "AttributeUserData",
                "AttributeAgentWorkMode",
                "X",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.text(max_size=8),
            st.binary(max_size=4),
            st.sampled_from(["RequestAgentLogin", "RequestAgentReady", "EventACK"]),
            st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=2),
        ),
        max_size=6,
    )
)
def test_server_session_answers_every_frame(message: dict[str, Any]) -> None:
    _, s = registered_pair()
    s.receive_data(encode_frame(message), T0)
    [event] = events(s)
    if isinstance(event, RequestReceived):
        assert s.data_to_send() == b""
    else:
        assert isinstance(event, RequestRejected)
        [error] = frames(s.data_to_send())
        assert error["AttributeErrorCode"] == event.code
    assert not s.closed


def test_next_sequence_can_move_forward_only() -> None:
    c = client(extensions={"last-seq": 41})
    s = server()
    pump(c, s, T0)
    assert s.client_extensions["last-seq"] == 41
    assert s.last_sequence == 1  # EventServerInfo
    s.set_next_sequence(42)
    assert s.send_event("EventACK", T0) == 42
    s.set_next_sequence(10)  # never backwards
    assert s.send_event("EventACK", T0) == 43
    assert s.last_sequence == 43


# -- the (state, input) -> state table --------------------------------------------

Session = ServerSession | ClientSession
#: The inputs each role has a real cause for (only a server waits for registration).
ROLES: dict[SessionInput, tuple[str, ...]] = {
    trigger: ("server",) if trigger is SessionInput.REGISTRATION_TIMEOUT else ("server", "client")
    for trigger in SessionInput
}


def session_in(role: str, state: SessionState, trigger: SessionInput) -> Session:
    """A session of ``role`` brought to ``state`` through its public API at ``T0``."""
    server_kwargs: dict[str, Any] = {}
    if trigger is SessionInput.ADDP_TIMEOUT:
        # ADDP alone decides: no registration deadline before it
        server_kwargs = {"registration_timeout": None, "addp_timeout": 7.0,
                         "addp_remote_timeout": 11.0}
    if state is SessionState.REGISTERED:
        c, s = registered_pair(**server_kwargs)
        session: Session = s if role == "server" else c
    else:
        session = server(**server_kwargs) if role == "server" else client()
        session.data_to_send()
    if state is SessionState.CLOSED:
        session.close(T0)
    assert session.state is state
    return session


def fire(session: Session, trigger: SessionInput) -> None:
    """What causes ``trigger`` on a real connection: bytes, a timer, a close."""
    if trigger is SessionInput.HANDSHAKE_ACCEPTED:
        if isinstance(session, ServerSession):
            session.receive_data(client().data_to_send(), T0 + 1)
        else:  # EventServerInfo answering ReferenceID 1, the client's RequestRegisterClient
            peer = server()
            peer.receive_data(client().data_to_send(), T0)
            session.receive_data(peer.data_to_send(), T0 + 1)
    elif trigger is SessionInput.HANDSHAKE_REFUSED:
        if isinstance(session, ServerSession):
            session.receive_data(raw_request("RequestQueryServer", AttributeReferenceID=5), T0 + 1)
        else:  # EventError answering ReferenceID 1
            peer = server(accepted_client_types=frozenset({"smart"}))
            peer.receive_data(client().data_to_send(), T0)
            session.receive_data(peer.data_to_send(), T0 + 1)
    elif trigger is SessionInput.FRAME_TOO_LARGE:
        session.receive_data(struct.pack(">I", MAX_FRAME_SIZE + 1), T0 + 1)
    elif trigger is SessionInput.REGISTRATION_TIMEOUT:
        session.handle_timer(T0 + DEFAULT_REGISTRATION_TIMEOUT)
    elif trigger is SessionInput.ADDP_TIMEOUT:
        session.handle_timer(T0 + 7.0 + 11.0)
    elif trigger is SessionInput.CONNECTION_LOST:
        session.connection_lost(T0 + 1)
    else:
        session.close(T0 + 1)


IN_TABLE = [
    (role, state, trigger) for (state, trigger) in TRANSITIONS for role in ROLES[trigger]
]
NOT_IN_TABLE = [
    (role, state, trigger)
    for state in SessionState
    for trigger in SessionInput
    if (state, trigger) not in TRANSITIONS
    for role in ROLES[trigger]
]


@pytest.mark.parametrize(("role", "state", "trigger"), IN_TABLE)
def test_every_transition_of_the_table(
    role: str, state: SessionState, trigger: SessionInput
) -> None:
    session = session_in(role, state, trigger)
    events(session)
    fire(session, trigger)
    assert session.state is TRANSITIONS[state, trigger]
    if session.closed:
        # every way into CLOSED tells the owner why (PeerLost, SessionClosed, HandshakeFailed)
        # except the owner's own close
        evs = events(session)
        if trigger is SessionInput.CLOSE:
            assert evs == []
        else:
            assert isinstance(evs[-1], PeerLost | SessionClosed | HandshakeFailed)


@pytest.mark.parametrize(("role", "state", "trigger"), NOT_IN_TABLE)
def test_inputs_missing_from_the_table_are_refused(
    role: str, state: SessionState, trigger: SessionInput
) -> None:
    session = session_in(role, state, trigger)
    with pytest.raises(SessionError):
        session.apply(trigger)
    assert session.state is state
    # the real cause does not move the session either
    fire(session, trigger)
    assert session.state is state


def test_table_covers_every_state_and_closed_is_final() -> None:
    assert {state for state, _ in TRANSITIONS} == {
        SessionState.AWAITING_REGISTRATION,
        SessionState.REGISTERED,
    }
    assert set(TRANSITIONS.values()) == {SessionState.REGISTERED, SessionState.CLOSED}
    assert {trigger for _, trigger in TRANSITIONS} == set(SessionInput)


def test_state_is_read_only() -> None:
    s = server()
    with pytest.raises(AttributeError):
        s.state = SessionState.REGISTERED  # type: ignore[misc]
    assert s.state is SessionState.AWAITING_REGISTRATION
