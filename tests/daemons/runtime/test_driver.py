"""The sans-I/O glue: one timer per protocol object, bytes moved to a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from daemons.runtime.driver import StreamDriver, TimerSlot


async def test_timer_slot_fires_at_the_deadline_and_follows_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    slot = TimerSlot(loop, fired.append)
    start = loop.time()
    slot.arm(start + 10.0)
    slot.arm(start + 0.02)   # the deadline moved earlier: one timer, at the new time
    assert slot.when == start + 0.02
    await asyncio.sleep(0.1)
    assert len(fired) == 1 and fired[0] >= start + 0.02
    assert slot.when is None  # fired: disarmed until armed again
    slot.arm(loop.time() + 0.02)
    slot.cancel()
    await asyncio.sleep(0.06)
    assert len(fired) == 1    # cancelled: never fires


class _FakeHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class _FakeLoop:
    """What TimerSlot uses of a loop (call_at, time), driven by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.scheduled: list[_FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _FakeHandle:
        self.scheduled.append(_FakeHandle(when, callback))
        return self.scheduled[-1]

    def live(self) -> list[float]:
        return [h.when for h in self.scheduled if not h.cancelled]

    def run_due(self) -> None:
        due = [h for h in self.scheduled if h.when <= self.now and not h.cancelled]
        self.scheduled = [h for h in self.scheduled if h not in due]
        for handle in due:
            handle.callback()


def test_timer_slot_with_a_resolution_wakes_once_per_window() -> None:
    loop = _FakeLoop()
    fired: list[float] = []
    slot = TimerSlot(loop, fired.append, resolution=0.01)  # type: ignore[arg-type]
    for deadline in (100.0012, 100.0046, 100.0099):  # the earliest first, as a queue reports it
        slot.arm(deadline)
    live = loop.live()
    assert len(live) == 1 and abs(live[0] - 100.01) < 1e-9  # one wake-up, at the window's end
    loop.now = 100.0095
    loop.run_due()
    assert fired == []  # never early
    loop.now = 100.0100001
    loop.run_due()
    assert fired == [100.0100001]
    slot.arm(100.0103)  # the next window
    assert abs(slot.when - 100.02) < 1e-9  # type: ignore[operator]
    slot.arm(None)
    assert slot.when is None and loop.live() == []


class EchoSession:
    """A sans-I/O session that answers each timer with one line, then closes."""

    def __init__(self, now: float, lines: int) -> None:
        self.deadline: float | None = now + 0.01
        self.left = lines
        self.out = b""
        self.closed = False
        self.timers = 0

    def data_to_send(self) -> bytes:
        data, self.out = self.out, b""
        return data

    def next_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        assert self.deadline is not None and now >= self.deadline
        self.timers += 1
        self.out += f"tick {self.timers}\n".encode()
        self.left -= 1
        if self.left == 0:
            self.closed, self.deadline = True, None
        else:
            self.deadline = now + 0.01


async def test_stream_driver_writes_re_arms_and_closes_with_the_session() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    session = EchoSession(loop.time(), lines=3)
    seen: list[int] = []
    closed: list[bool] = []
    driver = StreamDriver(loop, session, transport,
                          on_timer=lambda now: seen.append(session.timers),
                          on_closed=lambda: closed.append(True))
    driver.flush()
    received = await asyncio.wait_for(reader.read(), timeout=2.0)  # until the driver closes
    assert received == b"tick 1\ntick 2\ntick 3\n"
    assert seen == [1, 2, 3] and closed == [True]
    assert transport.is_closing() and driver.timer.when is None
    writer.close()
