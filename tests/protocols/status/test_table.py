"""The status table: ownership, sequence, snapshot replacement, the
publisher timeout and mirror merging, with a fake clock."""

from __future__ import annotations

import gc

import msgpack

from protocols.status.errors import ErrorCode
from protocols.status.messages import StatusRecord
from protocols.status.table import StatusTable


def rec(user: str, seq: int, **kw: object) -> StatusRecord:
    fields: dict[str, object] = {"status": "Available", "server": "SIP_1"}
    fields.update(kw)
    return StatusRecord(user=user, seq=seq, **fields)  # type: ignore[arg-type]


def publish(table: StatusTable, publisher: str, *records: StatusRecord, now: float = 0.0,
            incarnation: int = 1) -> tuple[list[StatusRecord], dict[str, int]]:
    table.heard(publisher, incarnation, now)
    return table.publish(publisher, incarnation, records, now)


def test_publish_stamps_publisher_and_view_follows() -> None:
    table = StatusTable()
    accepted, refused = publish(table, "TC_1", rec("ann@x", 1))
    assert refused == {} and accepted[0].publisher == "TC_1" and accepted[0].incarnation == 1
    assert table.view("ann@x").status == "Available"
    assert table.view("bob@x") == StatusRecord(user="bob@x", status="")


def test_unknown_user_refused_with_a_directory() -> None:
    table = StatusTable(known_user=lambda u: u.endswith("@x"))
    _, refused = publish(table, "TC_1", rec("ann@x", 1), rec("eve@evil", 2))
    assert refused == {"eve@evil": ErrorCode.UNKNOWN_USER}
    assert table.watch(1, ["eve@evil"])[1] == {"eve@evil": ErrorCode.UNKNOWN_USER}


def test_publishing_for_another_publishers_user_refused() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 1))
    _, refused = publish(table, "TC_2", rec("ann@x", 1), rec("bob@x", 2, publisher="TC_1"))
    assert refused == {"ann@x": ErrorCode.NOT_OWNER, "bob@x": ErrorCode.NOT_OWNER}
    # once ann logs off at TC_1, TC_2 may take her
    publish(table, "TC_1", rec("ann@x", 2, server=""))
    _accepted, refused = publish(table, "TC_2", rec("ann@x", 3, server="SIP_2"))
    assert refused == {} and table.view("ann@x").publisher == "TC_2"
    assert "ann@x" not in table.publishers["TC_1"].users


def test_stale_sequence_refused() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 5))
    _, refused = publish(table, "TC_1", rec("ann@x", 5, status="Busy"))
    assert refused == {"ann@x": ErrorCode.STALE_SEQUENCE}
    # a new incarnation (the publisher restarted) starts its sequence again
    _, refused = publish(table, "TC_1", rec("ann@x", 1, status="Busy"), incarnation=2)
    assert refused == {} and table.view("ann@x").status == "Busy"


def test_persistent_status_survives_logout_and_restart_non_persistent_does_not() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 1, status="On Vacation", persistent=True),
            rec("bob@x", 2, status="Follow Up"))
    publish(table, "TC_1", rec("ann@x", 3, status=None, server=""),
            rec("bob@x", 4, status=None, server=""))
    assert table.view("ann@x").status == "On Vacation"
    assert table.view("bob@x").status == ""
    # a restarted publisher that does not know the persistent status keeps it
    publish(table, "TC_1", rec("ann@x", 1, status=None), incarnation=2)
    assert table.view("ann@x").status == "On Vacation"
    assert table.view("ann@x").server == "SIP_1"


def test_silent_publisher_logs_users_off_and_heard_again_restores() -> None:
    table = StatusTable(publisher_timeout=30.0)
    publish(table, "TC_1", rec("ann@x", 1, status="On Vacation", persistent=True),
            rec("bob@x", 2, status="Follow Up", on_phone=True), now=100.0)
    assert table.next_timer() == 130.0
    assert table.handle_timer(129.9) == []
    assert table.handle_timer(130.0) == ["ann@x", "bob@x"]
    ann, bob = table.view("ann@x"), table.view("bob@x")
    assert (ann.server, ann.on_phone, ann.status) == ("", False, "On Vacation")
    assert (bob.server, bob.on_phone, bob.status) == ("", False, "")
    assert table.next_timer() is None
    assert table.heard("TC_1", 1, 200.0) == ["ann@x", "bob@x"]
    assert table.view("bob@x").on_phone is True


def test_snapshot_replaces_the_publishers_set() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 1), rec("bob@x", 2))
    table.begin_snapshot("TC_1")
    publish(table, "TC_1", rec("bob@x", 3, status="Busy"))
    floor, retired = table.end_snapshot("TC_1")
    assert floor == (1, 3)
    assert [r.user for r in retired] == ["ann@x"]
    assert table.view("ann@x").server == "" and table.view("bob@x").status == "Busy"


def test_empty_snapshot_logs_everyone_off() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 1))
    table.begin_snapshot("TC_1")
    _, retired = table.end_snapshot("TC_1")
    assert [r.user for r in retired] == ["ann@x"]


def test_watchers_fan_out() -> None:
    table = StatusTable()
    publish(table, "TC_1", rec("ann@x", 1), rec("bob@x", 2))
    records, refused = table.watch(1, ["ann@x"])
    assert [r.user for r in records] == ["ann@x"] and refused == {}
    table.watch(2, ["*"])
    assert table.watchers_of(["ann@x", "bob@x"]) == {1: ["ann@x"], 2: ["ann@x", "bob@x"]}
    table.unwatch(1, ["ann@x"])
    table.drop_watcher(2)
    assert table.watchers_of(["ann@x"]) == {}
    assert table.watch_count == 0


def test_two_mirrors_converge_after_a_partition() -> None:
    a, b = StatusTable(publisher_timeout=30.0), StatusTable(publisher_timeout=30.0)
    # TC_1 publishes to A, TC_2 to B; each side's changes miss the other
    publish(a, "TC_1", rec("ann@x", 1), now=0.0)
    publish(a, "TC_1", rec("ann@x", 2, status="Busy"), now=1.0)
    publish(b, "TC_2", rec("bob@x", 1, server="SIP_2"), now=1.0)
    b.merge([rec("ann@x", 1, publisher="TC_1", incarnation=1)])  # old news reached B
    # the partition heals: each sends the other its table
    for src, dst in ((a, b), (b, a)):
        dst.merge(list(src.raw.values()))
        dst.merge_publishers(src.publisher_summary(), 2.0)
    for table in (a, b):
        assert table.view("ann@x").status == "Busy" and table.view("ann@x").publisher == "TC_1"
        assert table.view("bob@x").server == "SIP_2"
    assert a.raw == b.raw
    # an older record arriving late changes nothing
    assert a.merge([rec("ann@x", 1, publisher="TC_1", incarnation=1)]) == []


def test_stored_records_are_left_out_of_the_garbage_collectors_walks() -> None:
    """Every way a record is stored (publish, a snapshot's log-off, a mirror's
    merge) leaves nothing per user that the collector tracks, at once and not
    only after its next pass: a full collection does not walk hundreds of
    thousands of users. A StatusRecord (a NamedTuple) would be tracked, and
    so would the dict holding it; so would a set of the publisher's users."""
    table = StatusTable()
    accepted, _ = publish(table, "TC_1", rec("ann@x", 1, detail="lunch", until=1.5e9),
                          rec("bob@x", 2, status="On Vacation", persistent=True))
    table.begin_snapshot("TC_1")
    publish(table, "TC_1", rec("ann@x", 3, on_phone=True))
    _, retired = table.end_snapshot("TC_1")
    taken = table.merge([rec("cid@x", 4, publisher="TC_2", incarnation=7)])
    assert [r.user for r in retired] == ["bob@x"] and [r.user for r in taken] == ["cid@x"]
    assert sorted(table.stored) == ["ann@x", "bob@x", "cid@x"]
    assert not gc.is_tracked(table.stored)
    for user, stored in table.stored.items():
        assert not gc.is_tracked(stored), user
    for name in ("TC_1", "TC_2"):
        assert table.publishers[name].users and not gc.is_tracked(table.publishers[name].users)
    # read out, each is a StatusRecord again, as it was stored
    assert table.raw["ann@x"] == rec("ann@x", 3, on_phone=True, publisher="TC_1", incarnation=1)
    assert type(table.raw["bob@x"]) is StatusRecord
    assert table.raw["bob@x"] == rec("bob@x", 2, status="On Vacation", persistent=True,
                                     server="", publisher="TC_1", incarnation=1)
    assert accepted[0] == rec("ann@x", 1, detail="lunch", until=1.5e9, publisher="TC_1",
                              incarnation=1)


def test_view_wire_is_the_view_encoded() -> None:
    """What a watcher's Event carries: the stored bytes while the publisher is
    online, the logged-off view while it is silent, an empty record for a
    user nobody published."""
    table = StatusTable(publisher_timeout=30.0)
    publish(table, "TC_1", rec("ann@x", 1, status="On Vacation", persistent=True, until=2.5),
            rec("bob@x", 2, on_phone=True, detail="call"), now=0.0)
    for user in ("ann@x", "bob@x", "cid@x"):
        assert msgpack.unpackb(table.view_wire(user)) == list(table.view(user))
    table.handle_timer(30.0)
    assert table.view("bob@x").status == "" and table.view("ann@x").status == "On Vacation"
    for user in ("ann@x", "bob@x"):
        assert msgpack.unpackb(table.view_wire(user)) == list(table.view(user))
    assert table.view_wire("bob@x") == msgpack.packb(table.view("bob@x"))
