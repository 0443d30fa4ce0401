"""A t-controller's agents, published to the status-aggregator: the
t-controller's own agent table and status publisher, a real aggregator, a
desktop watching."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemons.cluster.config import load_cluster
from daemons.runtime.logs import get_logger
from daemons.t_controller.agent import AgentError, AgentOptions, AgentTable, AgentWorkMode
from daemons.t_controller.status_publisher import AgentStatusDiff, StatusPublisher
from protocols.status.messages import Role
from tests.daemons.status_aggregator.conftest import Lab, Watcher


def test_diff_publishes_changes_and_logouts_only() -> None:
    table = AgentTable(AgentOptions())
    diff = AgentStatusDiff(domain="cluster.lab", server="SIPS_1")
    table.login("1001", "5001", 0.0)
    views = lambda: [table.agent(dn) for dn in table.logged_in()]  # noqa: E731
    [first] = diff.read(views())  # type: ignore[arg-type]
    assert (first.user, first.status, first.server) == ("5001@cluster.lab", "Not Ready", "SIPS_1")
    assert diff.read(views()) == []  # type: ignore[arg-type]
    table.ready("1001", 1.0, work_mode=AgentWorkMode.MANUAL_IN)
    [ready] = diff.read(views())  # type: ignore[arg-type]
    assert (ready.status, ready.detail) == ("Available", "Manual In")
    table.logout("1001", 2.0)
    [gone] = diff.read(views())  # type: ignore[arg-type]
    assert (gone.user, gone.server, gone.status) == ("5001@cluster.lab", "", None)


async def test_agent_states_reach_a_watching_desktop(lab: Lab) -> None:
    await lab.start("SA_1")
    watcher = Watcher()
    desk = lab.client("desk", Role.CONSUMER, on_records=watcher)
    await desk.wait_open()
    await desk.watch(["5001@cluster.lab"])
    table = AgentTable(AgentOptions())
    publisher = StatusPublisher.from_config(load_cluster(lab.config_file), "TC_1", table,
                                            get_logger("test"))
    assert publisher is not None
    publisher.start()
    lab.clients.append(publisher.client)
    try:
        table.login("1001", "5001", 0.0)
        await watcher.until(lambda: (watcher.last("5001@cluster.lab") or None) is not None
                            and watcher.last("5001@cluster.lab").server == "SIPS_1")
        assert watcher.last("5001@cluster.lab").status == "Not Ready"
        table.ready("1001", 1.0)
        table.call_established("1001", "conn-1", 2.0)
        await watcher.until(lambda: watcher.last("5001@cluster.lab").on_phone)
        assert watcher.last("5001@cluster.lab").status == "Available"
        assert watcher.last("5001@cluster.lab").publisher == "TC_1"
        table.logout("1001", 3.0)
        await watcher.until(lambda: watcher.last("5001@cluster.lab").server == "")
        assert watcher.last("5001@cluster.lab").status == ""
        assert desk.gaps == 0
    finally:
        await publisher.stop()


def test_no_publisher_without_a_certificate(lab: Lab) -> None:
    (lab.certs / "TC_2.pem").unlink(missing_ok=True)
    assert StatusPublisher.from_config(load_cluster(lab.config_file), "TC_2",
                                       AgentTable(AgentOptions()), get_logger("test")) is None


_OPS = st.lists(st.tuples(st.sampled_from(["login", "ready", "not_ready", "logout", "call",
                                           "release"]),
                          st.sampled_from(["1001", "1002", "1003"]),
                          st.sampled_from(["5001", "5002", "5003"]),
                          st.booleans()), max_size=40)


@given(_OPS)
def test_changed_dns_publish_what_a_full_read_would(ops: list[tuple[str, str, str, bool]]) -> None:
    """The table notes the DNs that change; publishing only those, in batches
    of any size, leaves subscribers where a full comparison would."""
    table = AgentTable(AgentOptions())
    dirty: dict[str, None] = {}
    table.watch(lambda dn: dirty.__setitem__(dn, None))
    diff = AgentStatusDiff(domain="cluster.lab", server="SIPS_1")
    seen: dict[str, tuple[str | None, bool]] = {}
    for when, (op, dn, agent, end_batch) in enumerate(ops):
        try:
            if op == "login":
                table.login(dn, agent, float(when))
            elif op == "ready":
                table.ready(dn, float(when))
            elif op == "not_ready":
                table.not_ready(dn, float(when))
            elif op == "logout":
                table.logout(dn, float(when))
            elif op == "call":
                table.call_established(dn, f"c{dn}", float(when))
            else:
                table.call_released(dn, f"c{dn}", float(when))
        except AgentError:
            pass
        if end_batch or when == len(ops) - 1:
            batch, dirty = dirty, {}
            for record in diff.read_changed({d: table.agent(d) for d in batch}):
                if record.status is None:
                    seen.pop(record.user, None)
                else:
                    seen[record.user] = (record.status, record.on_phone)
    full = AgentStatusDiff(domain="cluster.lab", server="SIPS_1").read(
        [v for v in (table.agent(d) for d in table.logged_in()) if v is not None])
    assert seen == {r.user: (r.status, r.on_phone) for r in full}
    assert diff.read([v for v in (table.agent(d) for d in table.logged_in())
                      if v is not None]) == []
