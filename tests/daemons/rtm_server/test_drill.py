"""Store-and-forward that loses nothing: three sites exchange a mixed load of
events (to one site and to ``*``) and requests while the hub is killed with
SIGKILL twice and restarted; a site cut off from the hub gets everything once,
in order, after a 60 s cut, while the others carried on.

The load here is 3 x 5,000 messages (about 20,000 deliveries with the
broadcasts) to stay within a minute on two cores; ``bench/bench_rtm.py
--drill`` runs the same drill with 100,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from tests.daemons.rtm_server.conftest import (
    Hub,
    Proc,
    Site,
    hub_spec,
    verify,
    wait_for,
    write_cluster,
)

PER_SITE = 5000
#: how long site 3 is cut off from the hub
CUT_SECONDS = 60.0


def test_hub_killed_twice_nothing_lost_nothing_twice_order_kept(
        tmp_path: Path, procs: list[Proc]) -> None:
    spec = hub_spec("RTM1", "127.0.120.1")
    config = write_cluster(tmp_path / "cluster.toml", [spec],
                           {"store": f"sqlite:{tmp_path}/hub.db", "keep-alive": 1.0})
    hub = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(hub)
    hub.wait_role("active")
    hubs = [(spec.host, spec.rtm_port)]
    state = tmp_path / "state"
    state.mkdir()
    plan = {1: ["2", "3", "*"], 2: ["3", "1", "*"], 3: ["1", "2", "*"]}
    sites = [Site(n, state, hubs, tmp_path / f"site{n}.log", send_to=plan[n], count=PER_SITE,
                  request_every=7, timeout_ms=0) for n in plan]
    for s in sites:
        procs.append(s.start())

    def progress() -> int:
        return sum(len(s.sent()) for s in sites)

    for kill in (1, 2):
        wait_for(lambda k=kill: progress() >= k * PER_SITE, 90, f"load before kill {kill}")
        hub.kill9()
        time.sleep(0.3)
        hub.start()
        hub.wait_role("active")

    def complete() -> bool:
        if any(s.outbox() != 0 or len(s.sent()) < PER_SITE for s in sites):
            return False
        v = verify(sites)
        return v.handled >= v.expected and v.answered == v.requests

    wait_for(complete, 120, "every message handled")
    v = verify(sites)
    assert v.expected > 3 * PER_SITE
    assert (v.missing, v.duplicates, v.out_of_order) == (0, 0, [])
    assert v.handled == v.expected
    assert v.requests > 0 and v.answered == v.requests and v.answered_twice == 0
    log = hub.log.read_text()
    assert log.count('"rtm_active"') == 3  # started, restarted twice
    assert hub.metric("sipcluster_rtm_duplicates_total", site="1") >= 0
    for s in sites:
        assert s.stop() == 0


class Cut:
    """A TCP relay between one site and the hub that can be cut (bytes held
    back both ways, new connections refused) and healed."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.cut = False
        self.server: asyncio.Server | None = None
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, *self.listen)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.pairs.append((writer, up_writer))
        await asyncio.gather(self._copy(reader, up_writer), self._copy(up_reader, writer),
                             return_exceptions=True)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                while self.cut:  # a cut link: nothing passes, nothing is refused
                    await asyncio.sleep(0.05)
                    if writer.is_closing():
                        return
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def sever(self) -> None:
        self.cut = True

    def heal(self) -> None:
        # the sessions through the cut are dead for both ends by now: drop them
        for a, b in self.pairs:
            a.close()
            b.close()
        self.pairs.clear()
        self.cut = False

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.heal()


async def test_site_cut_off_gets_everything_once_in_order_after_the_heal(
        tmp_path: Path, procs: list[Proc]) -> None:
    spec = hub_spec("RTM1", "127.0.121.1")
    config = write_cluster(tmp_path / "cluster.toml", [spec],
                           {"store": f"sqlite:{tmp_path}/hub.db", "keep-alive": 0.5})
    hub = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(hub)
    await asyncio.to_thread(hub.wait_role, "active")
    relay = Cut(("127.0.121.3", spec.rtm_port), (spec.host, spec.rtm_port))
    await relay.start()
    state = tmp_path / "state"
    state.mkdir()
    direct = [(spec.host, spec.rtm_port)]
    # 85 s of sending at 100/s: the load goes on across the whole cut
    count = 100 * int(CUT_SECONDS + 25)
    sites = [
        Site(1, state, direct, tmp_path / "site1.log", send_to=["2", "3", "*"], count=count,
             rate=100, request_every=5),
        Site(2, state, direct, tmp_path / "site2.log", send_to=["3", "1"], count=count,
             rate=100, request_every=5),
        Site(3, state, [("127.0.121.3", spec.rtm_port)], tmp_path / "site3.log",
             send_to=["1"], count=100, rate=100),
    ]
    def connected(site: int) -> bool:
        status = json.loads(hub.http("/status/sites")[1])
        return bool(status["sites"][str(site)]["connected"])

    # site 3 first, so that the others' paced load is still going when the cut comes
    procs.append(sites[2].start())
    await asyncio.to_thread(wait_for, lambda: connected(3), 30, "site 3 connected")
    for s in sites[:2]:
        procs.append(s.start())
    try:
        def flowing() -> bool:
            status = json.loads(hub.http("/status/sites")[1])
            return all(status["sites"][str(s.site)]["connected"] for s in sites) and all(
                len(s.journal()) >= 20 for s in sites)

        await asyncio.to_thread(wait_for, flowing, 30, "all three sites exchanging")
        relay.sever()
        cut_at = time.monotonic()
        # what had passed the relay before the cut still reaches site 3's journal:
        # its count is taken once it has stood still for 2 s
        settled, last, since = None, -1, time.monotonic()
        while settled is None and time.monotonic() - cut_at < 20:
            count_now = len(sites[2].journal())
            if count_now != last:
                last, since = count_now, time.monotonic()
            elif time.monotonic() - since >= 2.0:
                settled = count_now
            await asyncio.sleep(0.25)
        assert settled is not None, "site 3's journal still grows 20 s into the cut"
        before = {s.site: len(s.journal()) for s in sites}
        before[3] = settled
        await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        during = {s.site: len(s.journal()) for s in sites}
        # sites 1 and 2 carried on with each other while 3 was away
        assert len(sites[1].sent()) < count, "the load ended before the cut"
        assert during[1] > before[1] and during[2] > before[2]
        assert during[3] == before[3]
        status = json.loads(hub.http("/status/sites")[1])
        assert not status["sites"]["3"]["connected"]
        queued = int(status["sites"]["3"]["queued"])
        assert queued > 0
        relay.heal()
        healed_at = time.monotonic()
        # what queued for site 3 while it was away reaches it after the heal (how soon is
        # printed, split into the site's reconnection and the drain of its backlog: figures
        # for the benchmark, not pass marks on a shared host)
        await asyncio.to_thread(wait_for, lambda: connected(3), 60, "site 3 back")
        reconnected = time.monotonic() - healed_at

        def journaled() -> int:
            rows = sites[2].query("SELECT count(*) FROM journal")
            return int(rows[0][0]) if rows else 0

        await asyncio.to_thread(wait_for, lambda: journaled() >= during[3] + queued,
                                60, "site 3's backlog after the heal", 0.05)
        caught_up = time.monotonic() - healed_at
        print(f"site 3: {queued} messages queued during a {CUT_SECONDS:.0f} s cut, "
              f"delivered {caught_up:.1f} s after the heal (session back after "
              f"{reconnected:.1f} s, backlog drained in {caught_up - reconnected:.1f} s)")

        def complete() -> bool:
            if any(s.outbox() != 0 or len(s.sent()) < (100 if s.site == 3 else count)
                   for s in sites):
                return False
            v = verify(sites)
            return v.handled >= v.expected and v.answered == v.requests

        await asyncio.to_thread(wait_for, complete, 90, "everything after the heal")
        v = verify(sites)
        assert (v.missing, v.duplicates, v.out_of_order) == (0, 0, [])
        assert v.answered == v.requests and v.answered_twice == 0
        assert healed_at - cut_at >= CUT_SECONDS
        assert '"rtm_site_lost"' in hub.log.read_text()
    finally:
        await relay.close()
        for s in sites:
            with contextlib.suppress(Exception):
                s.signal(signal.SIGTERM)


def test_a_site_killed_and_restarted_resends_its_outbox_and_handles_nothing_twice(
        tmp_path: Path, procs: list[Proc]) -> None:
    spec = hub_spec("RTM1", "127.0.121.9")
    config = write_cluster(tmp_path / "cluster.toml", [spec],
                           {"store": f"sqlite:{tmp_path}/hub.db", "keep-alive": 0.5})
    hub = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(hub)
    hub.wait_role("active")
    hubs = [(spec.host, spec.rtm_port)]
    state = tmp_path / "state"
    state.mkdir()
    count = 1500
    one = Site(1, state, hubs, tmp_path / "site1.log", send_to=["2", "*"], count=count,
               request_every=5)
    two = Site(2, state, hubs, tmp_path / "site2.log", send_to=["1", "3"], count=count,
               request_every=5)
    three = Site(3, state, hubs, tmp_path / "site3.log")
    sites = [one, two, three]
    for s in sites:
        procs.append(s.start())
    wait_for(lambda: len(two.journal()) >= 200 and len(one.sent()) >= 300, 90, "load flowing")
    one.kill9()  # mid-load: its outbox and journal are all that is left of it
    time.sleep(0.5)
    one.start()

    def complete() -> bool:
        if any(s.outbox() != 0 for s in sites) or len(one.sent()) < count \
                or len(two.sent()) < count:
            return False
        v = verify(sites)
        return v.handled >= v.expected and v.answered == v.requests

    wait_for(complete, 120, "everything after the site's restart")
    v = verify(sites)
    assert (v.missing, v.duplicates, v.out_of_order) == (0, 0, [])
    assert v.answered == v.requests and v.answered_twice == 0
