"""Bad input on an open session gets the protocol's Error, a log line and a
count; the aggregator keeps serving."""

from __future__ import annotations

import asyncio
import ssl

from daemons.runtime import certs
from protocols.status.errors import ErrorCode
from protocols.status.framing import encode
from protocols.status.messages import (
    Error,
    Hello,
    Message,
    Publish,
    Query,
    Result,
    Role,
    StatusRecord,
    Watch,
)
from protocols.status.session import Closed, MessageReceived, Opened, StatusSession
from tests.daemons.status_aggregator.conftest import CLIENT_HOST, SA_HOSTS, Lab
from tests.daemons.status_aggregator.test_trust import metric


class Raw:
    """An open session to SA_1 driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: StatusSession) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.closed = False

    @classmethod
    async def open(cls, lab: Lab, name: str, role: Role) -> Raw:
        context: ssl.SSLContext = certs.client_context(lab.certs, name)
        reader, writer = await asyncio.open_connection(
            SA_HOSTS["SA_1"], lab.ports["SA_1"], ssl=context, server_hostname="SA_1",
            local_addr=(CLIENT_HOST, 0))
        session = StatusSession(client=True, now=0.0)
        session.send_hello(Hello(role=role, application=name, incarnation=1), 0.0)
        raw = cls(reader, writer, session)
        raw.flush()
        assert await raw.next() == "open"
        return raw

    def flush(self) -> None:
        self.writer.write(self.session.data_to_send())

    def send(self, message: Message) -> None:
        self.session.send(message, 0.0)
        self.flush()

    async def next(self) -> Message | str:
        while True:
            event = self.session.next_event()
            if isinstance(event, Opened):
                return "open"
            if isinstance(event, MessageReceived):
                return event.message
            if isinstance(event, Closed):
                return "closed"
            if event is not None:
                continue
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                self.session.connection_lost(0.0)
                return "closed"
            self.session.receive_data(data, 0.0)


async def test_malformed_unknown_and_oversized_frames(lab: Lab) -> None:
    await lab.start("SA_1")
    raw = await Raw.open(lab, "desk", Role.CONSUMER)
    raw.writer.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")
    answer = await raw.next()
    assert isinstance(answer, Error) and answer.code == ErrorCode.MALFORMED_FRAME
    raw.writer.write(encode({"message": "Gimme", "ref": 4}))
    answer = await raw.next()
    assert isinstance(answer, Error) and (answer.code, answer.ref) == (
        ErrorCode.UNKNOWN_MESSAGE, 4)
    raw.send(Query(ref=5, users=("ann@cluster.lab",)))  # still serving
    answer = await raw.next()
    assert isinstance(answer, Result) and answer.ref == 5
    raw.writer.write((64 * 2**20).to_bytes(4, "big") + b"\x80")
    answer = await raw.next()
    assert isinstance(answer, Error) and answer.code == ErrorCode.FRAME_TOO_LARGE
    assert await raw.next() == "closed"
    for reason, count in (("malformed_frame", 1), ("unknown_message", 1),
                          ("frame_too_large", 1)):
        assert await metric(lab, "SA_1",
                            f'sipcluster_status_refused_total{{reason="{reason}"}}') == count


async def test_consumer_that_publishes_is_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    raw = await Raw.open(lab, "desk", Role.CONSUMER)
    raw.send(Publish(ref=9, records=(StatusRecord(user="ann@cluster.lab", status="x"),)))
    answer = await raw.next()
    assert isinstance(answer, Error) and (answer.code, answer.ref) == (
        ErrorCode.NOT_A_PUBLISHER, 9)
    assert await metric(lab, "SA_1",
                        'sipcluster_status_refused_total{reason="not_a_publisher"}') == 1


async def test_publishing_for_another_publishers_user_is_refused(lab: Lab) -> None:
    await lab.start("SA_1")
    tc1 = await Raw.open(lab, "TC_1", Role.PUBLISHER)
    tc2 = await Raw.open(lab, "TC_2", Role.PUBLISHER)
    tc1.send(Publish(ref=1, records=(StatusRecord(user="ann@cluster.lab", status="Available",
                                                  server="SIPS_1", seq=1),)))
    answer = await tc1.next()
    assert isinstance(answer, Result) and answer.accepted == 1
    tc2.send(Publish(ref=2, records=(
        StatusRecord(user="ann@cluster.lab", status="Gone Home", server="SIPS_2", seq=1),
        StatusRecord(user="bob@cluster.lab", status="Gone Home", server="SIPS_2", seq=2,
                     publisher="TC_1"))))
    answer = await tc2.next()
    assert isinstance(answer, Result)
    assert answer.refused == {"ann@cluster.lab": ErrorCode.NOT_OWNER,
                              "bob@cluster.lab": ErrorCode.NOT_OWNER}
    assert await metric(lab, "SA_1", 'sipcluster_status_refused_total{reason="not_owner"}') == 2


async def test_unknown_users_refused_with_a_directory_file(lab: Lab) -> None:
    (lab.root / "users.csv").write_text("email,name\nann@cluster.lab,Ann Example\n")
    lab.write('directory = "users.csv"')
    await lab.start("SA_1")
    tc1 = await Raw.open(lab, "TC_1", Role.PUBLISHER)
    tc1.send(Publish(ref=1, records=(
        StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1", seq=1),
        StatusRecord(user="zed@elsewhere", status="Available", server="SIPS_1", seq=2))))
    answer = await tc1.next()
    assert isinstance(answer, Result) and answer.accepted == 1
    assert answer.refused == {"zed@elsewhere": ErrorCode.UNKNOWN_USER}
    desk = await Raw.open(lab, "desk", Role.CONSUMER)
    desk.send(Query(ref=3, users=("ann@cluster.lab", "nobody@cluster.lab")))
    answer = await desk.next()
    assert isinstance(answer, Result)
    assert [r.status for r in answer.records] == ["Available"]
    assert answer.refused == {"nobody@cluster.lab": ErrorCode.UNKNOWN_USER}
    assert await metric(lab, "SA_1",
                        'sipcluster_status_refused_total{reason="unknown_user"}') == 2


async def test_a_watcher_that_does_not_read_is_cut_off(lab: Lab) -> None:
    lab.write("max-consumer-backlog = 65536")
    service = await lab.start("SA_1")
    stuck = await Raw.open(lab, "desk", Role.CONSUMER)
    stuck.send(Watch(ref=1, users=("*",)))
    tc = await Raw.open(lab, "TC_1", Role.PUBLISHER)
    detail = "x" * 1000
    seq = 0
    for _ in range(40):  # about 40 MB of events for the watcher that never reads
        if not any(c.name == "desk" for c in service.aggregator.connections.values()):
            break
        records = []
        for i in range(1000):
            seq += 1
            records.append(StatusRecord(user=f"u{i}@cluster.lab", status="Busy",
                                        server="SIPS_1", detail=detail, seq=seq))
        tc.send(Publish(ref=seq, records=tuple(records)))
        answer = await tc.next()
        assert isinstance(answer, Result) and answer.accepted == 1000
    assert not any(c.name == "desk" for c in service.aggregator.connections.values())
    assert await metric(lab, "SA_1",
                        'sipcluster_status_refused_total{reason="slow_consumer"}') == 1
    desk = await Raw.open(lab, "desk", Role.CONSUMER)  # still serving
    desk.send(Query(ref=2, users=("u1@cluster.lab",)))
    answer = await desk.next()
    assert isinstance(answer, Result) and answer.records[0].status == "Busy"
