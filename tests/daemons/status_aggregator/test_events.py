"""Events to watchers: the changes of one loop turn reach each watcher in
one ``Event`` frame, in the order they were made, with no gap in ``seq``."""

from __future__ import annotations

from protocols.status.messages import Event, Publish, Result, Role, StatusRecord, Watch
from tests.daemons.status_aggregator.conftest import Lab
from tests.daemons.status_aggregator.test_bad_input import Raw


def change(user: str, status: str, seq: int) -> StatusRecord:
    return StatusRecord(user=f"{user}@cluster.lab", status=status, server="SIPS_1", seq=seq)


async def test_changes_read_together_reach_a_watcher_in_one_event_in_order(lab: Lab) -> None:
    await lab.start("SA_1")
    tc = await Raw.open(lab, "TC_1", Role.PUBLISHER)
    tc.send(Publish(ref=1, records=(change("ann", "Available", 1), change("bob", "Available", 2),
                                    change("cid", "Available", 3))))
    assert isinstance(await tc.next(), Result)
    desk = await Raw.open(lab, "desk", Role.CONSUMER)
    desk.send(Watch(ref=1, users=("ann@cluster.lab", "bob@cluster.lab")))
    answer = await desk.next()
    assert isinstance(answer, Result) and len(answer.records) == 2
    # three Publish frames in one write, so the aggregator reads them together;
    # ann changes twice, cid is not watched
    for ref, record in enumerate([change("ann", "Busy", 4), change("cid", "Busy", 5),
                                  change("bob", "Busy", 6), change("ann", "Away", 7)], start=2):
        tc.session.send(Publish(ref=ref, records=(record,)), 0.0)
    tc.flush()
    event = await desk.next()
    assert isinstance(event, Event)
    assert event.seq == 1
    assert [(r.user, r.status) for r in event.records] == [
        ("ann@cluster.lab", "Busy"), ("bob@cluster.lab", "Busy"), ("ann@cluster.lab", "Away")]
    # a later change is the next Event
    tc.send(Publish(ref=9, records=(change("bob", "Away", 8),)))
    event = await desk.next()
    assert isinstance(event, Event) and event.seq == 2
    assert [(r.user, r.status) for r in event.records] == [("bob@cluster.lab", "Away")]
