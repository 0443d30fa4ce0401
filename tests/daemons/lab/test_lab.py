"""`sipcluster lab`: the two-data-centre lab starts, answers, survives a
killed daemon, and stops with no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.runtime.dns import SipResolver

SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]


def lab(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIPCLUSTER, "lab", *args, "--dir", str(directory)],
        capture_output=True, text=True, timeout=timeout,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def running_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("lab")
    started = lab(directory, "start")
    try:
        assert started.returncode == 0, started.stderr
        yield directory
    finally:
        lab(directory, "stop")


def test_lab_json_describes_both_data_centres(running_lab: Path) -> None:
    desc = json.loads((running_lab / "lab.json").read_text())
    assert desc["srv_fqdn"] == "spx-srv.cluster.lab"
    assert desc["domain"] == "cluster.lab"
    assert desc["dns"] == {"host": "127.0.1.53", "port": 5300, "http_port": 9053}
    assert set(desc["data_centres"]) == {"dc1", "dc2"}
    for geo, prefix in (("dc1", "127.0.1."), ("dc2", "127.0.2.")):
        centre = desc["data_centres"][geo]
        assert len(centre["proxies"]) == 2 and len(centre["nodes"]) == 2
        for node in centre["nodes"]:
            assert node["host"].startswith(prefix)
            for key in ("name", "sip_port", "default_port", "tc_port", "ip_port",
                        "smart_proxy_port", "http_port"):
                assert node[key], key
            assert node["running"] is True
        for proxy in centre["proxies"]:
            assert proxy["host"].startswith(prefix) and proxy["sip_port"] == 5060
    dns_numbers = [a["dn"] for a in desc["accounts"]]
    assert dns_numbers == [str(n) for n in range(1001, 1011)]
    assert all(a["password"] for a in desc["accounts"])


async def test_lab_dns_is_geo_aware(running_lab: Path) -> None:
    for source, local in (("127.0.1.100", "127.0.1."), ("127.0.2.100", "127.0.2.")):
        resolver = SipResolver(["127.0.1.53:5300"], timeout=1.0, source=source)
        targets = await resolver.resolve("spx-srv.cluster.lab", transport="UDP")
        assert targets, source
        # the local data centre's proxies come first (priority 10), the others after (200)
        assert all(t.host_ip.startswith(local) for t in targets[:2]), targets
        assert all(not t.host_ip.startswith(local) for t in targets[2:]), targets


def test_status_kill_restart(running_lab: Path) -> None:
    status = lab(running_lab, "status")
    assert status.returncode == 0, status.stdout
    assert "SIPS_dc1_2       healthy" in status.stdout
    killed = lab(running_lab, "kill", "SIPS_dc1_2")
    assert killed.returncode == 0, killed.stderr
    status = lab(running_lab, "status")
    assert status.returncode == 1
    assert "SIPS_dc1_2       stopped" in status.stdout
    restarted = lab(running_lab, "restart", "SIPS_dc1_2")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert lab(running_lab, "status").returncode == 0


def test_unknown_application_is_refused(running_lab: Path) -> None:
    result = lab(running_lab, "kill", "NoSuchApp")
    assert result.returncode == 2
    assert "unknown application 'NoSuchApp'" in result.stderr


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    # a second lab beside the module's one: the same cluster on other addresses
    cfg = Path(__file__).resolve().parents[3] / "deploy" / "etc" / "cluster.toml"
    text = cfg.read_text().replace("127.0.1.", "127.0.5.").replace("127.0.2.", "127.0.6.")
    custom = tmp_path / "custom.toml"
    custom.write_text(text)
    started = subprocess.run(
        [*SIPCLUSTER, "lab", "start", "--dir", str(tmp_path / "lab"), "--config", str(custom)],
        capture_output=True, text=True, timeout=120,
    )
    pids = json.loads((tmp_path / "lab" / "pids.json").read_text())
    try:
        assert started.returncode == 0, started.stderr
        assert len(pids) >= 9
        assert all(pid_alive(pid) for pid in pids.values())
    finally:
        stopped = lab(tmp_path / "lab", "stop")
    assert stopped.returncode == 0
    assert not any(pid_alive(pid) for pid in pids.values())
    logs = (tmp_path / "lab" / "logs" / "SIPS_dc1_1.log").read_text()
    assert "daemon_stopped" in logs


def _reachable(source: str, target: tuple[str, int]) -> bool:
    import socket

    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        try:
            sock.connect(target)
        except OSError:
            return False
        return True


def test_partition_and_heal(running_lab: Path, require_tool: object) -> None:
    require_tool("nft")  # type: ignore[operator]
    dc2_node = ("127.0.2.11", 7000)
    assert _reachable("127.0.1.200", dc2_node)
    try:
        cut = lab(running_lab, "partition", "dc1", "dc2")
        assert cut.returncode == 0, cut.stderr
        assert not _reachable("127.0.1.200", dc2_node)
        assert not _reachable("127.0.2.200", ("127.0.1.11", 7000))
        assert _reachable("127.0.1.200", ("127.0.1.11", 7000))  # inside a data centre: fine
        assert "partitioned" in lab(running_lab, "status").stdout
    finally:
        healed = lab(running_lab, "heal")
    assert healed.returncode == 0
    assert _reachable("127.0.1.200", dc2_node)
    bad = lab(running_lab, "partition", "dc1", "dc9")
    assert bad.returncode == 2 and "two geo-locations" in bad.stderr


def test_a_site_is_killed_and_restarted_as_one(running_lab: Path) -> None:
    """`lab kill site:Lyon` stops every daemon of that site's cluster file, and
    only those; lab.json says so; `lab restart site:Lyon` brings them back."""
    killed = lab(running_lab, "kill", "site:Lyon")
    assert killed.returncode == 0, killed.stderr
    status = lab(running_lab, "status").stdout
    for name in ("SIPS_Lyon", "TC_Lyon", "SIPProxy_Lyon", "Collective_Lyon"):
        assert f"{name:<16} stopped" in status, status
    assert f"{'SIPS_Indy':<16} healthy" in status and f"{'RTM1':<16} healthy" in status
    lyon = next(s for s in json.loads((running_lab / "lab.json").read_text())["sites"]
                if s["site_name"] == "Lyon")
    assert not lyon["collective"]["running"] and not lyon["nodes"][0]["running"]
    restarted = lab(running_lab, "restart", "site:Lyon")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert lab(running_lab, "status").returncode == 0


def test_partition_a_site_from_the_hub(running_lab: Path, require_tool: object) -> None:
    require_tool("nft")  # type: ignore[operator]
    hub = ("127.0.1.60", 7500)
    try:
        cut = lab(running_lab, "partition", "site:Indy", "RTM1")
        assert cut.returncode == 0, cut.stderr
        assert not _reachable("127.0.3.200", hub)
        assert _reachable("127.0.4.200", hub)  # the other sites still reach the hub
        assert _reachable("127.0.3.200", ("127.0.3.11", 7000))
    finally:
        healed = lab(running_lab, "heal")
    assert healed.returncode == 0
    assert _reachable("127.0.3.200", hub)
    overlap = lab(running_lab, "partition", "site:Boca", "RTM1")
    assert overlap.returncode == 2 and "share addresses" in overlap.stderr
