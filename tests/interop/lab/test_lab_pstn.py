"""9 + digits through the two-data-centre lab to its PSTN gateways.

A SIPp phone of dc1 dials 9 + digits through a dc1 SIP Proxy; the node asks
its feature-server (the lab's dial plan: ``9.=>+${DIGITS:1}@trunk``) and sends
the call out through dc1's trunk to the lab's PSTN gateway there (SIPp's UAS,
a process the lab starts). With that gateway killed, its trunk goes out of
service (oos-check / oos-force) and the next call leaves through dc2's trunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

LAB_SUBNETS = {"127.0.1.": "127.0.101.", "127.0.2.": "127.0.102."}
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


def node_events(lab: Any, name: str, event: str) -> list[dict[str, Any]]:
    log = Path(lab.directory) / "logs" / f"{name}.log"
    out = []
    text = log.read_text(errors="replace")
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


def trunk_states(lab: Any, node: dict[str, Any]) -> dict[str, str]:
    """The node's trunks to the PSTN gateways (the SBCs; not the trunks to the
    collective's other sites) and their states."""
    status = lab.http_json(node["host"], node["http_port"], "/status/trunks")
    return {t["trunk"]: t["state"] for t in status["trunks"]
            if t["trunk"].startswith("Trunk_SBC_")}


def dial(lab: Any, sipp_lab: Any, number: str) -> Any:
    return sipp_lab.run("lab_uac_call.xml", address=sipp_lab.address("dc1"),
                        proxy=lab.proxies("dc1")[0],
                        args=["-s", number, "-set", "caller", "1001", "-au", "1001",
                              "-ap", lab.password("1001"), "-d", "300"])


def test_nine_plus_digits_reaches_the_pstn_gateways(lab: Any, sipp_lab: Any) -> None:
    node = lab.nodes("dc1")[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(trunk_states(lab, node).values()) != {
            "in-service"}:
        time.sleep(0.5)
    assert set(trunk_states(lab, node).values()) == {"in-service"}, trunk_states(lab, node)

    run = dial(lab, sipp_lab, "95551234")
    assert run.ok(), run.errors()
    out = subprocess.run([sys.executable, "-m", "daemons.cli", "lab", "kill",
                          "PSTN_Trunk_SBC_dc1", "--dir", str(lab.directory)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 20  # oos-check 10 s + oos-force 2 s in the lab
    while time.monotonic() < deadline and \
            trunk_states(lab, node)["Trunk_SBC_dc1"] != "out-of-service":
        time.sleep(0.5)
    assert trunk_states(lab, node)["Trunk_SBC_dc1"] == "out-of-service"
    run = dial(lab, sipp_lab, "95550000")
    assert run.ok(), run.errors()
    trunks = [(e["trunk"], e["number"]) for e in node_events(lab, node["name"],
                                                              "call_via_trunk")]
    assert trunks == [("Trunk_SBC_dc1", "+5551234"), ("Trunk_SBC_dc2", "+5550000")]
