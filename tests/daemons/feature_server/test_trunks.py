"""A call to 9 + digits, end to end on real processes: a phone's INVITE to the
node, the node's dial-plan query to its feature-server (the first URL of the
Dial Plan DN is down: fail-over to url-1), the trunk of the node's data centre
to a PSTN gateway that is SIPp's UAS; the other data centre's trunk once the
first is out of service; feature-servers down: the failed look-up is logged
and counted and the caller gets an error, not silence; the other data centre's
feature-server up: external calls work again."""

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


def call(number: str, *, expect_ok: bool = True, caller: str = "1001",
         bind: str = f"{DC1}.50") -> subprocess.CompletedProcess[str]:
    """``sipcluster sip call`` from extension 1001 (a SIP client in dc1) to the node."""
    result = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "sip", "call", f"sip:{number}@{DC1}.11:5070",
         "--from", f"sip:{caller}@{DC1}.11", "--duration", "0.2", "--bind", bind],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    if expect_ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def trunk_state(name: str) -> str:
    _, status = http("GET", f"http://{DC1}.11:9096/status/trunks")
    return next(t["state"] for t in status["trunks"] if t["trunk"] == name)


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url, timeout=15) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def cluster(module_processes: Processes) -> dict[str, Any]:
    """One cluster for the module; the tests run in file order (the last ones stop
    a gateway, then the feature-server)."""
    processes = module_processes
    tmp_path = processes.tmp
    sipp = require_tool("sipp")
    config = cluster_file(tmp_path / "cluster.toml", 8080)
    gateways = {dc: start_gateway(sipp, host, tmp_path) for dc, host in
                (("dc1", f"{DC1}.40"), ("dc2", f"{DC2}.40"))}
    fs = processes.daemon("feature-server", config, "FS_dc1", f"http://{DC1}.31:8080/healthz")
    node = processes.daemon("sip-server", config, "SIPS_dc1", f"http://{DC1}.11:9096/healthz")
    # both trunks answer their OPTIONS checks
    assert wait_for(lambda: trunk_state("Trunk_dc1") == trunk_state("Trunk_dc2") ==
                    "in-service", timeout=10), http("GET", f"http://{DC1}.11:9096/status/trunks")
    yield {"config": config, "gateways": gateways, "fs": fs, "node": node,
           "processes": processes}
    for gw in gateways.values():
        gw.stop()


def test_rule_names_a_trunk_rejects_unknown_numbers_and_inbound_profile(
        cluster: dict[str, Any]) -> None:
    call("85551111")  # 8.=>+${DIGITS:1}@Trunk_dc2: that trunk, whatever the location
    dc2 = cluster["gateways"]["dc2"]
    assert wait_for(lambda: dc2.invites(), timeout=15)
    assert dc2.invites()[0].startswith(f"INVITE sip:+5551111@{DC2}.40:5060")
    rejected = call("7123", expect_ok=False)
    assert "403" in rejected.stdout + rejected.stderr
    unknown = call("4242", expect_ok=False)  # .=>${DIGITS}: not a DN, no trunk
    assert "404" in unknown.stdout + unknown.stderr
    # a call that comes in from Trunk_dc2's address gets that trunk's calling profile
    inbound = call("95551234", expect_ok=False, caller="+4930123", bind=f"{DC2}.40")
    assert "488" in inbound.stdout + inbound.stderr
    assert cluster["gateways"]["dc1"].invites() == []


def test_nine_plus_digits_leaves_through_the_local_trunk_then_the_other(
        cluster: dict[str, Any]) -> None:
    dc1, dc2 = cluster["gateways"]["dc1"], cluster["gateways"]["dc2"]
    seen = len(dc2.invites())
    out = call("95551234")
    assert "200 OK" in out.stdout
    assert wait_for(lambda: dc1.invites(), timeout=15)
    assert dc1.invites()[0].startswith(f"INVITE sip:+5551234@{DC1}.40:5060 SIP/2.0")
    assert dc2.invites(seen) == []

    # the dc1 gateway dies: after oos-force its trunk is out of service and the
    # next call leaves through dc2's trunk
    dc1.stop()
    assert wait_for(lambda: trunk_state("Trunk_dc1") == "out-of-service", timeout=8)
    call("95550000")
    assert wait_for(lambda: dc2.invites(seen), timeout=15)
    assert dc2.invites(seen)[0].startswith(f"INVITE sip:+5550000@{DC2}.40:5060 SIP/2.0")

    lines = cluster["node"].lines()
    trunks = [(line["trunk"], line["number"]) for line in lines
              if line.get("event") == "call_via_trunk"]
    assert trunks[-2:] == [("Trunk_dc1", "+5551234"), ("Trunk_dc2", "+5550000")]
    # the first URL of the Dial Plan DN has no feature-server: url-1 answered
    failed = [line for line in lines if line.get("event") == "dial_plan_query_failed"]
    assert failed and failed[0]["url"] == f"http://{DC1}.32:8080/dialplan"
    answers = [line for line in lines if line.get("event") == "dial_plan_answer"]
    assert {a["url"] for a in answers} == {f"http://{DC1}.31:8080/dialplan"}


def test_feature_servers_down_the_lookup_fails_loudly(cluster: dict[str, Any]) -> None:
    cluster["fs"].stop()
    # extension to extension goes on: 1002 (a SIPp UAS at its fixed contact) answers
    phone = start_gateway(require_tool("sipp"), f"{DC1}.60", cluster["config"].parent)
    try:
        assert "200 OK" in call("1002").stdout
    finally:
        phone.stop()
    # its forward-all look-up failed, and the DN rang as if it had no profile
    asked = [line["event"] for line in cluster["node"].lines()
             if line.get("event", "").startswith("dial_plan") and
             line.get("digits") == "1002"]
    assert "dial_plan_unavailable" in asked and "dial_plan_answer" not in asked, asked
    node_metrics = f"http://{DC1}.11:9096/metrics"
    before = metric(node_metrics, 'sipcluster_dialplan_queries_total{result="failed"}')
    out = call("95551234", expect_ok=False)
    assert "480" in out.stdout + out.stderr
    after = metric(node_metrics, 'sipcluster_dialplan_queries_total{result="failed"}')
    assert after == before + 1
    assert any(line.get("event") == "dial_plan_unavailable"
               for line in cluster["node"].lines())

    # the other data centre's feature-server comes up: external calls work again
    cluster["processes"].daemon("feature-server", cluster["config"], "FS_dc2",
                                f"http://{DC2}.31:8080/healthz")
    assert "200 OK" in call("95557777").stdout
    answers = [line for line in cluster["node"].lines()
               if line.get("event") == "dial_plan_answer"]
    assert answers[-1]["url"] == f"http://{DC2}.31:8080/dialplan"
