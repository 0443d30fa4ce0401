"""Stuck calls ([call-cleanup]): a call whose phones vanish without BYE is
reported after ``notify-idle-tout``, its parties are probed with in-dialog
OPTIONS, and it is cleared after ``cleanup-idle-tout``; a live call whose
phones answer the probes stays.

One sip-server with short cleanup times; SIPp phones (killed with SIGKILL to
leave the call stuck).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.test_node_calls import Node, call, cluster_file, phone, start_sip_server

pytestmark = pytest.mark.timeout(60)

CLEANUP = {"periodic-check-tout": 0.5, "notify-idle-tout": 1.5, "cleanup-idle-tout": 4}


def _node(tmp_path_factory: pytest.TempPathFactory, cleanup: dict[str, float]) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node-cleanup")
    config = tmp / "cluster.toml"
    cluster_file(config, {name: 0 for name in ("sip", "default", "ip", "http", "tc")})
    options = "".join(f"{k} = {v}\n" for k, v in cleanup.items())
    config.write_text(config.read_text().replace("[switch.tserver]\n",
                                                  "[switch.tserver]\n" + options, 1))
    log_path = tmp / "sip-server.log"
    proc, ports = start_sip_server(config, "SIPS_T1", log_path)
    yield Node(proc, ports, log_path, tmp)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"sip-server did not stop on SIGTERM in 10 s:\n"
                    f"{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def node_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _node(tmp_path_factory, CLEANUP)


@pytest.fixture(scope="module")
def probing_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Probes only: no clearing after cleanup-idle-tout."""
    yield from _node(tmp_path_factory, {**CLEANUP, "cleanup-idle-tout": 0})


@pytest.fixture
def node(node_process: Node, free_port: Callable[..., int]) -> Node:
    node_process.free_port = free_port
    return node_process


def events(node: Node, name: str) -> list[dict[str, Any]]:
    return [e for e in node.log_events() if e.get("event") == name]


def wait_event(node: Node, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(node, name)
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {name} in the node's log")


def test_a_call_whose_phones_vanished_is_cleared(node: Node, require_tool: Any,
                                                 tmp_path: Path) -> None:
    sipp_bin = require_tool("sipp")
    callee = phone(node, sipp_bin, "1004", "node_uas_stay.xml")
    caller = call(node, sipp_bin, "1001", "1004", "node_uac_stay.xml")
    established = wait_event(node, "call_established", 10)
    conn_id = established["conn_id"]
    for sipp in (caller, callee):  # gone without a BYE
        sipp.proc.kill()
        sipp.proc.wait()
    killed_at = time.monotonic()
    idle = wait_event(node, "call_idle", 10)
    assert idle["conn_id"] == conn_id and sorted(idle["parties"]) == ["1001", "1004"]
    cleared = wait_event(node, "call_cleared_idle", 10)
    assert cleared["conn_id"] == conn_id
    assert time.monotonic() - killed_at >= CLEANUP["cleanup-idle-tout"] - 1
    _, calls = node.http("/status/calls")
    assert conn_id not in calls
    _, metrics = node.http("/metrics")
    assert 'sipcluster_calls_idle_total{outcome="reported"}' in metrics
    assert 'sipcluster_calls_idle_total{outcome="cleared"} 1.0' in metrics
    assert 'sipcluster_calls_total{outcome="cleaned"} 1.0' in metrics


@pytest.mark.timeout(120)
def test_a_call_whose_caller_is_silent_is_ended_for_the_callee(
    probing_node: Node, free_port: Callable[..., int], require_tool: Any
) -> None:
    """The caller vanished without BYE (its BYE lost while a proxy on its path was
    down, say); the callee still answers. The caller's probe gets no answer (408
    after timer F, 32 s), so the node ends the call and sends the callee a BYE."""
    node = probing_node
    node.free_port = free_port
    sipp_bin = require_tool("sipp")
    callee = phone(node, sipp_bin, "1004", "node_uas_stay.xml", args=("-aa", "-timeout", "90s"))
    caller = call(node, sipp_bin, "1001", "1004", "node_uac_stay.xml")
    established = wait_event(node, "call_established", 10)
    conn_id = established["conn_id"]
    caller.proc.kill()
    caller.proc.wait()
    idle = wait_event(node, "call_idle", 10)
    assert idle["conn_id"] == conn_id
    gone = wait_event(node, "call_cleared_dialog_gone", 60)
    assert (gone["conn_id"], gone["party"], gone["status"]) == (conn_id, "1001", 408)
    _, calls = node.http("/status/calls")
    assert conn_id not in calls
    _, metrics = node.http("/metrics")
    assert 'sipcluster_calls_idle_total{outcome="party_silent"} 1.0' in metrics
    # the callee got the node's BYE and its scenario ran to its end
    assert callee.proc.wait(timeout=15) == 0
