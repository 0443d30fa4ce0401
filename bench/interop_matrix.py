"""Run the interop matrix (tests/interop/matrix) and write docs/interop.md.

The matrix is scenario x peer x transport against the shipped lab: each cell
is one parametrized test ``test_cell[SCENARIO-PEER-TRANSPORT]``. This script
runs the module with ``--junitxml``, reads every cell's outcome and writes the
table (rows: scenarios, columns: peer/transport; a cell is ``pass``, ``FAIL``,
or a numbered note: the peer's limitation with its evidence, or a defect of
ours), then prints it.

    .venv/bin/python bench/interop_matrix.py [--out docs/interop.md] [--junit FILE]
                                             [-k EXPR] [--from-junit FILE]

``make interop`` runs it. ``--from-junit`` only renders an existing report.
The exit status is 1 when a cell failed (a strict xfail that passed counts).
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "tests/interop/matrix/test_matrix.py"
PEERS = ["baresip", "linphonec", "sipp", "kamailio"]


@dataclass(frozen=True)
class Cell:
    scenario: str
    peer: str
    transport: str
    outcome: str  # pass, fail, xfail, skip
    text: str
    seconds: float


def parse_junit(path: Path) -> tuple[list[Cell], list[Cell]]:
    """(cells, other tests) of a pytest junit XML report."""
    cells: list[Cell] = []
    others: list[Cell] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        seconds = float(case.get("time", "0") or 0)
        outcome, text = "pass", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "fail"
                text = (child.get("message") or "").splitlines()[0][:200] if \
                    child.get("message") else child.tag
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfail" if "xfail" in kind else "skip"
                text = (child.get("message") or "").strip()
        if name.startswith("test_cell[") and name.endswith("]"):
            scenario, peer, transport = _split(name[len("test_cell["):-1])
            cells.append(Cell(scenario, peer, transport, outcome, text, seconds))
        else:
            others.append(Cell(name, "", "", outcome, text, seconds))
    return cells, others


def _split(cell_id: str) -> tuple[str, str, str]:
    """``blind-transfer-baresip-udp`` -> (blind-transfer, baresip, udp)."""
    rest, transport = cell_id.rsplit("-", 1)
    scenario, peer = rest.rsplit("-", 1)
    return scenario, peer, transport


#: how each peer says its version: (command, regex of the version on its output)
VERSIONS = {
    "baresip": (["baresip", "-h"], r"baresip v(\S+)"),
    "linphonec": (["linphonec", "-v"], r"version: (\S+)"),
    "SIPp": (["sipp", "-v"], r"SIPp v(\S+?)[-.]?(?:SCTP|TLS|PCAP|\s)"),
    "Kamailio": (["kamailio", "-v"], r"kamailio (\S+)"),
    "tshark": (["tshark", "-v"], r"TShark \(Wireshark\) (\S+)"),
}


def peer_versions() -> str:
    """``baresip 1.0.0, linphonec 5.1.65, ...`` as installed here."""
    found = []
    for name, (cmd, pattern) in VERSIONS.items():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                 stdin=subprocess.DEVNULL)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        match = re.search(pattern, text)
        found.append(f"{name} {match.group(1) if match else 'not installed'}")
    return ", ".join(found)


def _clean(reason: str) -> str:
    text = reason.removeprefix("reason: ").strip()
    text = text.removeprefix("XFAIL").strip(" :")
    return " ".join(text.split()).replace("|", "/")


def render(cells: list[Cell], others: list[Cell], *, wall: float | None,
           command: str, versions: str = "") -> str:
    columns: list[tuple[str, str]] = []
    for peer in PEERS:
        for transport in ("udp", "tcp", "tls"):
            if any(c.peer == peer and c.transport == transport for c in cells):
                columns.append((peer, transport))
    scenarios: list[str] = []
    for c in cells:
        if c.scenario not in scenarios:
            scenarios.append(c.scenario)
    by_key = {(c.scenario, c.peer, c.transport): c for c in cells}
    notes: list[str] = []

    def note(text: str) -> int:
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    header = "| scenario | " + " | ".join(f"{p} {t.upper()}" for p, t in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for scenario in scenarios:
        row = [scenario]
        for peer, transport in columns:
            cell = by_key.get((scenario, peer, transport))
            if cell is None:
                row.append("—")
            elif cell.outcome == "pass":
                row.append("pass")
            elif cell.outcome == "xfail":
                text = _clean(cell.text)
                kind = "defect" if text.startswith("defect:") else "limitation"
                row.append(f"{kind} [{note(text)}]")
            elif cell.outcome == "skip":
                row.append(f"skipped [{note(_clean(cell.text))}]")
            else:
                row.append(f"**FAIL** [{note(_clean(cell.text) or 'failed')}]")
        lines.append("| " + " | ".join(row) + " |")
    counts = {k: sum(1 for c in cells if c.outcome == k) for k in ("pass", "xfail", "fail",
                                                                     "skip")}
    out = [
        "# Interop matrix",
        "",
        "Scenario x peer x transport against the shipped lab (`deploy/etc/cluster.toml`, "
        "moved to 127.0.171.x / 127.0.172.x; the second node of each data centre, the "
        "director, the status-aggregators and the rtm-server left out, as no cell needs "
        "them). Generated by `bench/interop_matrix.py` (`make interop`) from "
        "`tests/interop/matrix/test_matrix.py`; do not edit by hand.",
        "",
        "Peers: **baresip** 1.0 and **linphonec** (softphones: each plays a tone of its own "
        "and records what it hears; the recording is analysed by Goertzel, so audio is "
        "checked both ways wherever media flows), **SIPp** (scripted signalling, no media), "
        "**Kamailio** as an edge proxy (the SBC position, `tests/interop/matrix/"
        "kamailio-edge.cfg`: Path on REGISTER, Record-Route on dialogs) with baresip phones "
        "behind it. `pass`: the cell's observable result was seen (a binding in the "
        "proxy's registrar; tones heard both ways; the final status at the caller; the "
        "re-INVITE directions at the far end; the transferred parties hearing each other "
        "(SIPp: each receiving the other's media address, in the node's re-INVITE and in "
        "its ACK, and the BYE of one reaching the other; the transferor's REFER ending "
        "in a NOTIFY with a 200 sipfrag); "
        "the voicemail counting the DTMF keys; the MWI NOTIFY with `Messages-Waiting: yes` "
        "at the phone). A numbered note is a peer's limitation with its evidence, or a "
        "defect of ours (a strict xfail: it fails the run once fixed, so the table is "
        "updated); `—`: not part of the matrix.",
        "",
        *([f"Peers as run: {versions}.", ""] if versions else []),
        *lines,
        "",
        f"{counts['pass']} pass, {counts['xfail']} limitation or defect, "
        f"{counts['fail']} fail, {counts['skip']} skipped"
        + (f"; the run took {wall:.0f} s." if wall is not None else "."),
        "",
    ]
    if notes:
        out += ["Notes:", ""]
        out += [f"{i}. {text}" for i, text in enumerate(notes, 1)]
        out.append("")
    if others:
        out += ["Other checks of the run:", ""]
        for other in others:
            state = {"pass": "pass", "fail": "**FAIL**", "xfail": "xfail", "skip": "skipped"}
            extra = f" ({_clean(other.text)})" if other.text else ""
            out.append(f"- `{other.scenario}`: {state[other.outcome]}{extra}")
        out.append("")
    out += [
        "Reproduce:",
        "",
        f"    {command}",
        "",
        f"Last run: {datetime.date.today().isoformat()}.",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "interop.md")
    parser.add_argument("--junit", type=Path, default=ROOT / "build" / "interop-matrix.xml")
    parser.add_argument("--from-junit", type=Path, default=None)
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    args = parser.parse_args()
    wall: float | None = None
    junit = args.from_junit
    if junit is None:
        junit = args.junit
        junit.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", MODULE,
               f"--junitxml={junit}", "-o", "junit_family=xunit1"]
        if args.select:
            cmd += ["-k", args.select]
        started = time.monotonic()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        wall = time.monotonic() - started
        if not junit.exists():
            print(f"no junit report from pytest (exit {code})", file=sys.stderr)
            return 1
    cells, others = parse_junit(junit)
    text = render(cells, others, wall=wall,
                  command=".venv/bin/python bench/interop_matrix.py   # or: make interop",
                  versions=peer_versions())
    args.out.write_text(text)
    print(text)
    failed = any(c.outcome == "fail" for c in cells + others)
    return 1 if failed or not cells else 0


if __name__ == "__main__":
    sys.exit(main())
