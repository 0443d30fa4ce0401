"""``sipcluster lab start --wan-delay-ms 40 --wan-loss 1``: the shipped lab behind an
emulated WAN between its data centres (daemons/lab/wan.py). The lab runs in a
network namespace of its own, so its loopback addresses do not meet the other
tests' labs; the commands the lab prints are the ones run here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.lab.cli import lab_namespace

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or shutil.which("ip") is None
                                  or not os.path.exists("/dev/net/tun")),
    reason="needs root, iproute2 and /dev/net/tun (required in CI)")

ROOT = Path(__file__).resolve().parents[2]


def lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "daemons.cli", "lab", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def lab_pids(directory: Path) -> list[int]:
    pids = json.loads((directory / "pids.json").read_text())
    return [int(p) for p in (pids.values() if isinstance(pids, dict) else pids)]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return ") Z " not in stat


@pytest.fixture(name="wan_lab", scope="module")
def _wan_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("wanlab")
    started = lab("start", "--dir", str(directory), "--wan-delay-ms", "40", "--wan-loss", "1")
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield directory, started.stdout
    finally:
        lab("stop", "--dir", str(directory))
        namespace = lab_namespace(directory)
        if Path("/run/netns", namespace).exists():
            subprocess.run(["ip", "netns", "del", namespace], check=False)


def printed_command(guide: str, marker: str) -> list[str]:
    """The example command of the guide's WAN block that contains ``marker``."""
    for line in guide.splitlines():
        if marker in line and line.strip().startswith("ip netns exec"):
            return shlex.split(line.split("   (")[0])
    raise AssertionError(f"no `ip netns exec ... {marker}` in the guide:\n{guide}")


def test_the_guide_names_the_wan_and_its_namespace(wan_lab: tuple[Path, str]) -> None:
    directory, guide = wan_lab
    namespace = lab_namespace(directory)
    assert "emulated WAN between dc1 (127.0.1.0/24) and dc2 (127.0.2.0/24): 40 ms each way, " \
           "1 % loss" in guide
    assert f"ip netns exec {namespace} baresip" in guide
    desc = json.loads((directory / "lab.json").read_text())
    assert desc["wan"]["namespace"] == namespace
    assert desc["wan"]["between"] == {"dc1": "127.0.1.0/24", "dc2": "127.0.2.0/24"}
    assert (desc["wan"]["delay_ms"], desc["wan"]["loss_percent"]) == (40, 1)


def test_a_round_trip_between_the_data_centres_takes_the_wan(
        wan_lab: tuple[Path, str]) -> None:
    """The guide's OPTIONS command (DC1 to a DC2 proxy, with ``sipcluster`` as
    ``python -m daemons.cli``) waits at least two delays; the same to a DC1 proxy
    does not cross the WAN."""
    directory, guide = wan_lab
    cmd = printed_command(guide, "sip options")
    assert cmd[:4] == ["ip", "netns", "exec", lab_namespace(directory)]
    assert cmd[4] == "sipcluster"
    cmd[4:5] = [sys.executable, "-W", "ignore", "-m", "daemons.cli"]
    desc = json.loads((directory / "lab.json").read_text())
    near = desc["data_centres"]["dc1"]["proxies"][0]
    far_uri = next(c for c in cmd if c.startswith("sip:"))
    assert far_uri.startswith("sip:127.0.2.")

    def rtt(uri: str) -> float:
        best = float("inf")
        for _ in range(3):  # the shortest of three: a lost datagram costs a retransmission
            out = subprocess.run([*cmd[:cmd.index(far_uri)], uri, *cmd[cmd.index(far_uri) + 1:]],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            found = re.fullmatch(r"200 OK \(([\d.]+) ms\)", out.stdout.strip().splitlines()[-1])
            assert found, out.stdout + out.stderr
            best = min(best, float(found.group(1)))
        return best

    assert rtt(far_uri) >= 80.0
    assert rtt(f"sip:{near['host']}:{near['sip_port']}") < 80.0


def test_status_enters_the_namespace_and_counts_the_relay(wan_lab: tuple[Path, str]) -> None:
    directory, _ = wan_lab
    status = lab("status", "--dir", str(directory), timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    first = status.stdout.splitlines()[0]
    found = re.match(r"emulated WAN 127\.0\.1\.0/24 - 127\.0\.2\.0/24: 40 ms, 1 % loss "
                     rf"\(namespace {lab_namespace(directory)}\); packets delayed (\d+), "
                     r"dropped (\d+)$", first)
    assert found, status.stdout
    # the t-controllers and status-aggregators of both data centres talk all the time
    assert int(found.group(1)) > 0
    assert "healthy" in status.stdout and "stopped" not in status.stdout


def test_bad_wan_settings_are_refused(tmp_path: Path) -> None:
    loss = lab("start", "--dir", str(tmp_path / "a"), "--wan-delay-ms", "40", "--wan-loss", "100")
    assert loss.returncode == 2 and "--wan-loss within 0-100" in loss.stderr
    wrong = lab("status", "--dir", str(tmp_path / "b"), "--wan-delay-ms", "40")
    assert wrong.returncode == 2 and "go with run or start" in wrong.stderr
    assert not Path("/run/netns", lab_namespace(tmp_path / "a")).exists()


def test_stop_removes_the_namespace_and_every_process(wan_lab: tuple[Path, str]) -> None:
    directory, _ = wan_lab
    namespace = lab_namespace(directory)
    relay = json.loads((directory / "wan.json").read_text())["pid"]
    pids = lab_pids(directory)
    assert pids and alive(relay)
    stopped = lab("stop", "--dir", str(directory), timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"WAN namespace {namespace} removed" in stopped.stdout
    assert not Path("/run/netns", namespace).exists()
    assert not (directory / "wan.json").exists()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in [relay, *pids]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in [relay, *pids] if alive(p)] == []
    assert json.loads((directory / "lab.json").read_text())["wan"] is None
