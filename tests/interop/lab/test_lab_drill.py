"""Faults under load (``sipcluster lab drill``) on a lab of its own.

SIPp registers every account through a proxy of each data centre and calls
the PSTN gateways while a proxy, a node and a t-controller are killed and
restarted and the data centres are cut apart and healed. Nothing the cluster
accepted may be lost: every account SIPp registered is bound on every proxy
afterwards as its last REGISTER left it (no older expiry, no contact it did
not register), and no call is left up on a node. Calls that fail while a fault
is in force are reported per fault, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LAB_SUBNETS = {"127.0.1.": "127.0.186.", "127.0.2.": "127.0.187."}

ROOT = Path(__file__).resolve().parents[3]
DURATION = 120

pytestmark = pytest.mark.timeout(330)


def test_drill_loses_nothing(lab: Any, require_tool: Any, tmp_path: Path) -> None:
    require_tool("sipp")
    require_tool("nft")  # the partition of the schedule
    report_path = tmp_path / "drill.json"
    run = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "lab", "--dir", str(lab.directory), "drill",
         "--duration", str(DURATION), "--register-rate", "10", "--call-rate", "4",
         "--json", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=290)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["lost_bindings"] == [], report
    assert report["stale_bindings"] == [], report
    assert sum(report["calls_left_up"].values()) == 0, report
    # the load really ran through every fault, and the faults really happened
    assert len(report["registered"]) == 6, report["registered"]  # 3 phones per data centre
    assert all(count >= 10 for count in report["registered"].values()), report["registered"]
    done = [f["fault"] for f in report["faults"] if f["result"] == "done"]
    assert any(f.startswith("kill SIPProxy") for f in done), report["faults"]
    assert any(f.startswith("kill SIPS") for f in done), report["faults"]
    assert any(f.startswith("kill TC") for f in done), report["faults"]
    assert any(f.startswith("partition") for f in done), report["faults"]
    steady = report["calls"].get("steady", {"ok": 0})
    assert steady["ok"] > 0, report["calls"]
    print(run.stdout)
