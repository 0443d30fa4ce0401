"""Unit tests: the Interaction Proxy's distribution and backlog (docs/node.md, "IPport")."""

from __future__ import annotations

from typing import Any

from daemons.sip_server.reporting import InteractionProxy


class FakeSession:
    def __init__(self) -> None:
        self.next_sequence = 0

    def set_next_sequence(self, number: int) -> None:
        self.next_sequence = max(self.next_sequence, number)


class FakeConn:
    """What InteractionProxy uses of a TLibConnection."""

    def __init__(self, application: str) -> None:
        self.application = application
        self.session = FakeSession()
        self.sent: list[tuple[int | None, str, dict[str, Any]]] = []
        self.closed = False

    def send_event(self, name: str, attrs: dict[str, Any], *,
                   sequence: int | None = None, trusted: bool = False) -> int | None:
        self.sent.append((sequence, name, dict(attrs)))
        return sequence

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(proxy: InteractionProxy, current: str | None, conn_id: str, name: str) -> str | None:
    client = proxy.assign(current, conn_id)
    proxy.send(client, name, {"AttributeConnID": conn_id}, conn_id)
    return client


def test_calls_without_client_go_to_the_first_client_within_the_window() -> None:
    clock = Clock()
    proxy = InteractionProxy(clock, backlog_window=30.0)
    assert event(proxy, None, "c1", "EventRinging") is None
    clock.now += 5
    assert event(proxy, None, "c1", "EventEstablished") is None
    first, second = FakeConn("ICON_1"), FakeConn("ICON_2")
    assert proxy.connected(first, None) == 2  # type: ignore[arg-type]
    assert [(s, n) for s, n, _ in first.sent] == [(2, "EventRinging"), (3, "EventEstablished")]
    proxy.connected(second, None)  # type: ignore[arg-type]
    assert second.sent == []
    # the call stays with the client that got its first events, not round-robin
    assert event(proxy, None, "c1", "EventReleased") == "ICON_1"
    assert [(s, n) for s, n, _ in first.sent][-1] == (4, "EventReleased")
    assert second.sent == []


def test_events_older_than_the_window_are_dropped_and_counted() -> None:
    clock = Clock()
    proxy = InteractionProxy(clock, backlog_window=10.0)
    event(proxy, None, "old", "EventRinging")
    clock.now += 11
    event(proxy, None, "new", "EventRinging")
    conn = FakeConn("ICON_1")
    assert proxy.connected(conn, None) == 1  # type: ignore[arg-type]
    assert conn.sent[0][2] == {"AttributeConnID": "new"}
    assert proxy.events_dropped == 1


def test_reconnect_replays_missed_events_once() -> None:
    clock = Clock()
    proxy = InteractionProxy(clock, backlog_window=30.0)
    conn = FakeConn("ICON_1")
    proxy.connected(conn, None)  # type: ignore[arg-type]
    client = event(proxy, None, "c1", "EventRinging")
    assert client == "ICON_1"
    proxy.disconnected(conn)  # type: ignore[arg-type]
    event(proxy, client, "c1", "EventEstablished")
    event(proxy, client, "c1", "EventReleased")
    again = FakeConn("ICON_1")
    assert proxy.connected(again, 2) == 2  # type: ignore[arg-type]
    assert [(s, n) for s, n, _ in again.sent] == [(3, "EventEstablished"), (4, "EventReleased")]


def test_backlog_replays_the_attributes_as_sent() -> None:
    """Events kept in the backlogs (of a client gone, and of calls without a client)
    come back with the same attributes, in order, whatever their shape; changing
    the caller's mapping afterwards does not change what was kept."""
    clock = Clock()
    proxy = InteractionProxy(clock, backlog_window=30.0)
    sent = [
        ("EventRinging", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                          "AttributeOtherDN": "2001"}),
        ("EventEstablished", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                              "AttributeUserData": {"case": "42"}}),
        ("EventReleased", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                           "AttributeOtherDN": "2001"}),
    ]
    for name, attrs in sent:  # no client yet: the unassigned backlog
        proxy.send(proxy.assign(None, "c1"), name, attrs, "c1")
    sent[0][1]["AttributeOtherDN"] = "changed later"
    first = FakeConn("ICON_1")
    assert proxy.connected(first, None) == 3  # type: ignore[arg-type]
    expected = [
        (2, "EventRinging", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                             "AttributeOtherDN": "2001"}),
        (3, "EventEstablished", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                                 "AttributeUserData": {"case": "42"}}),
        (4, "EventReleased", {"AttributeConnID": "c1", "AttributeThisDN": "2002",
                              "AttributeOtherDN": "2001"}),
    ]
    assert first.sent == expected
    proxy.disconnected(first)  # type: ignore[arg-type]
    again = FakeConn("ICON_1")
    assert proxy.connected(again, 2) == 2  # type: ignore[arg-type]  # the application's backlog
    assert again.sent == expected[1:]
