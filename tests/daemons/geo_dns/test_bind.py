"""The same zones in BIND 9: the checked-in named.conf and zone files pass
BIND's checkers, and a real ``named`` with the generated views gives DC1 and
DC2 clients the same answers as the embedded server."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import pytest

from daemons.geo_dns.server import GeoDnsServer
from daemons.geo_dns.zones import ZoneSet, compile_views, write_zone_set
from daemons.runtime.management import Metrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DNS = ROOT / "deploy" / "dns"

SOURCES = ("127.0.1.101", "127.0.2.101", "127.0.0.1")
QUESTIONS = [
    ("_sip._udp.spx-srv.cluster.lab", "SRV"),
    ("_sip._tcp.spx-srv.cluster.lab", "SRV"),
    ("spx-srv.cluster.lab", "NAPTR"),
    ("cluster.lab", "NAPTR"),
    ("spx-srv.cluster.lab", "A"),
    ("spx1-dc1.cluster.lab", "A"),
    ("spx2-dc2.cluster.lab", "A"),
    ("node1-dc2.cluster.lab", "A"),
    ("cluster.lab", "TXT"),
    ("cluster.lab", "SOA"),
    ("nope.cluster.lab", "A"),              # NXDOMAIN
    ("spx1-dc1.cluster.lab", "AAAA"),       # NODATA
    ("_udp.spx-srv.cluster.lab", "SRV"),    # empty non-terminal: NODATA
    ("example.com", "A"),                   # not ours: REFUSED
]


def test_checked_in_files_pass_bind_checks(require_tool: Any) -> None:
    checkconf = require_tool("named-checkconf")
    checkzone = require_tool("named-checkzone")
    done = subprocess.run([checkconf, str(DEPLOY_DNS / "named.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    zones = sorted(DEPLOY_DNS.glob("*.zone"))
    assert [z.name for z in zones] == ["cluster.lab.dc1.zone", "cluster.lab.dc2.zone"]
    for zone in zones:
        done = subprocess.run([checkzone, "-k", "fail", "-i", "full", "cluster.lab", str(zone)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "loaded serial 1" in done.stdout


@pytest.fixture
def named(require_tool: Any, free_port: Any, tmp_path: Path,
          example_zone_set: ZoneSet) -> Iterator[tuple[str, int]]:
    """A foreground ``named`` on 127.0.0.1 with the generated views, everything in tmp_path."""
    named_bin = require_tool("named")
    port = free_port("127.0.0.1")
    write_zone_set(
        example_zone_set, tmp_path, zone_dir=str(tmp_path), directory=str(tmp_path),
        listen=[("127.0.0.1", port)], pid_file=str(tmp_path / "named.pid"),
        session_keyfile=str(tmp_path / "session.key"),
    )
    conf = tmp_path / "named.conf"
    checkconf = require_tool("named-checkconf")
    done = subprocess.run([checkconf, "-z", str(conf)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "named.log").open("w")
    proc = subprocess.Popen([named_bin, "-g", "-n", "1", "-c", str(conf), "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(proc, port, tmp_path / "named.log")
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _wait_until_serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 20.0
    query = dns.message.make_query("cluster.lab", "SOA")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"named exited with {proc.returncode}:\n{log.read_text()}")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            time.sleep(0.2)
            continue
        if reply.answer:
            return
        time.sleep(0.2)
    pytest.fail(f"named did not answer within 20 s:\n{log.read_text()}")


async def test_bind_and_embedded_server_agree_per_data_centre(
    named: tuple[str, int], example_zone_set: ZoneSet, ask: Any, answer_summary: Any
) -> None:
    embedded = GeoDnsServer(compile_views(example_zone_set), metrics=Metrics("cmp"))
    ours = (await embedded.start([("127.0.0.1", 0)]))[0]
    try:
        for source in SOURCES:
            for name, rdtype in QUESTIONS:
                for tcp in (False, True):
                    a, b = await asyncio.gather(
                        ask(named, name, rdtype, source=source, tcp=tcp),
                        ask(ours, name, rdtype, source=source, tcp=tcp),
                    )
                    assert answer_summary(a) == answer_summary(b), (source, name, rdtype, tcp)
    finally:
        await embedded.stop()


async def test_bind_geo_answers(named: tuple[str, int], sip_resolver: Any) -> None:
    """The point of the views, asked of BIND through our RFC 3263 resolver."""
    dc1 = {"127.0.1.21", "127.0.1.22"}
    dc2 = {"127.0.2.21", "127.0.2.22"}
    for source, local, remote in (("127.0.1.102", dc1, dc2), ("127.0.2.102", dc2, dc1),
                                  ("127.0.0.1", dc1, dc2)):
        resolver = sip_resolver(named, source)
        for transport in ("udp", "tcp"):
            targets = await resolver.resolve("spx-srv.cluster.lab", transport=transport)
            assert {t.host_ip for t in targets[:2]} == local
            assert {t.host_ip for t in targets[2:]} == remote
            assert {t.port for t in targets} == {5060}
