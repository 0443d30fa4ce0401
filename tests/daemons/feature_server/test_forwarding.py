"""What the node does with the dial plan's other answers, on real processes:
``default-dn`` a trunk or an external number after ``router-timeout``; the
voicemail access number (``gcti::voicemail``: the caller's mailbox,
``vm=retrieve``); a busy extension forwarded to its voicemail by its calling
profile (``forward-busy``: the busy DN's mailbox, ``vm=deposit``), answered by
the feature-server's own voicemail."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.daemons.feature_server.conftest import (
    DC1,
    DC2,
    ROOT,
    Processes,
    cluster_file,
    http,
    start_gateway,
    wait_for,
)

pytestmark = pytest.mark.interop
SCENARIOS = ROOT / "tests" / "interop" / "scenarios"


def call(number: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemons.cli", "sip", "call", f"sip:{number}@{DC1}.11:5070",
         "--from", f"sip:1001@{DC1}.11", "--duration", "0.3", "--bind", f"{DC1}.50"],
        cwd=ROOT, capture_output=True, text=True, timeout=40)


def events(daemon: Any, name: str) -> list[dict[str, Any]]:
    return [line for line in daemon.lines() if line.get("event") == name]


@pytest.fixture(scope="module")
def cluster(module_processes: Processes) -> dict[str, Any]:
    processes = module_processes
    tmp_path = processes.tmp
    sipp = require_tool("sipp")
    config = cluster_file(tmp_path / "cluster.toml", 8080, voicemail_port=5080)
    gateways = {dc: start_gateway(sipp, host, tmp_path) for dc, host in
                (("dc1", f"{DC1}.40"), ("dc2", f"{DC2}.40"))}
    busy = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "node_uas_busy.xml"), "-i", f"{DC1}.60", "-p", "5060",
         "-nostdin", "-m", "1", "-timeout", "300s"],  # killed at teardown
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    busy_too = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "node_uas_busy.xml"), "-i", f"{DC1}.62", "-p", "5060",
         "-nostdin", "-m", "1", "-timeout", "300s"],  # killed at teardown
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ringing = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "node_uas_ring.xml"), "-i", f"{DC1}.61", "-p", "5060",
         "-nostdin", "-m", "1", "-timeout", "300s"],  # killed at teardown
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = processes.daemon("feature-server", config, "FS_dc1", f"http://{DC1}.31:8080/healthz")
    node = processes.daemon("sip-server", config, "SIPS_dc1", f"http://{DC1}.11:9096/healthz")
    assert wait_for(lambda: all(
        t["state"] == "in-service"
        for t in http("GET", f"http://{DC1}.11:9096/status/trunks")[1]["trunks"]), timeout=10)
    yield {"gateways": gateways, "fs": fs, "node": node, "busy": busy, "ringing": ringing,
           "busy_too": busy_too}
    for gw in gateways.values():
        gw.stop()
    for phone in (busy, ringing, busy_too):
        if phone.poll() is None:
            phone.kill()
            phone.wait()


def test_default_dn_a_trunk_or_an_external_number(cluster: dict[str, Any]) -> None:
    out = call("5000")  # default-dn = Trunk_dc2: the call leaves there with its number
    assert out.returncode == 0, out.stdout + out.stderr
    dc2 = cluster["gateways"]["dc2"]
    assert wait_for(lambda: dc2.invites(), timeout=15)
    assert dc2.invites()[0].startswith(f"INVITE sip:5000@{DC2}.40:5060")
    out = call("5001")  # default-dn = +15550001: the dial plan sends it to a trunk
    assert out.returncode == 0, out.stdout + out.stderr
    dc1 = cluster["gateways"]["dc1"]
    assert wait_for(lambda: dc1.invites(), timeout=15)
    assert dc1.invites()[0].startswith(f"INVITE sip:+15550001@{DC1}.40:5060")
    routed = [(e["rp"], e["to"]) for e in events(cluster["node"], "call_routed")]
    assert routed == [("5000", "Trunk_dc2"), ("5001", "+15550001")]
    assert [e["trunk"] for e in events(cluster["node"], "call_via_trunk")] == [
        "Trunk_dc2", "Trunk_dc1"]


def test_access_number_busy_and_no_answer_forwarding_reach_voicemail(
        cluster: dict[str, Any]) -> None:
    out = call("5555")
    assert out.returncode == 0, out.stdout + out.stderr
    out = call("1002")  # SIPp answers 486: forward-busy = gcti::voicemail
    assert out.returncode == 0, out.stdout + out.stderr
    assert cluster["busy"].wait(timeout=10) == 0
    # SIPp rings for longer than extn-no-answer-timeout (1 s): the node cancels, and
    # 1003's own profile sends the call to its mailbox
    out = call("1003")
    assert out.returncode == 0, out.stdout + out.stderr
    assert cluster["ringing"].wait(timeout=10) == 0
    node = cluster["node"]
    sent = [(e["mailbox"], e["mode"], e["uri"]) for e in events(node, "call_to_voicemail")]
    assert sent == [("1001", "retrieve", f"sip:1001@{DC1}.31:5080;vm=retrieve"),
                    ("1002", "deposit", f"sip:1002@{DC1}.31:5080;vm=deposit"),
                    ("1003", "deposit", f"sip:1003@{DC1}.31:5080;vm=deposit")]
    forwarded = events(node, "call_forwarded")
    assert [(f["dn"], f["reason"], f["action"]) for f in forwarded] == [
        ("1002", "busy", "voicemail"), ("1003", "no-answer", "voicemail")]
    assert [e["outcome"] for e in events(node, "call_finished")][-3:] == [
        "completed", "completed", "completed"]


def test_forwarding_that_fails_leaves_the_busy_answer(cluster: dict[str, Any]) -> None:
    out = call("1004")  # busy; its profile forwards to a trunk that does not exist
    assert out.returncode == 1 and "486" in out.stdout, out.stdout + out.stderr
    assert cluster["busy_too"].wait(timeout=10) == 0
    failed = events(cluster["node"], "call_forward_failed")
    assert [(f["dn"], f["reason"], f["status"]) for f in failed] == [("1004", "busy", 503)]
