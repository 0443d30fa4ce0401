"""TCport over TLS (``tc-tls-port``) for desktops that ask for it.

A real ``sipcluster t-controller`` process with its certificate issued by
``sipcluster certs``; desktops connect with the installation's CA: our
T-Library client and the ``sipcluster tlib`` tool register and are served. A
plaintext client is refused (log line, ``tlib_tls_refused_total``), a client
that trusts another CA refuses the server, and the TLS desktop keeps being
served throughout; a missing certificate is a
one-line refusal of the config.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.certs import init_ca, issue
from daemons.runtime.tlib_client import TLibClient
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(60)


def http_text(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


async def start_tc(tmp_path: Path, kit: Any, free_port: Any) -> tuple[Any, Any, int, int, int]:
    node = kit.FakeNode()
    node.registered["1001"] = "sip:1001@127.0.0.1:5099"
    await node.start()
    tc_port, tls_port, http_port = (free_port("127.0.0.1") for _ in range(3))
    text = kit.cluster_text(node.port, free_port("127.0.0.1")).replace(
        "tc-port = 0", f"tc-port = {tc_port}\ntc-tls-port = {tls_port}").replace(
        "http-port = 0", f"http-port = {http_port}")
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    log = (tmp_path / "tc.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(path),
        "--name", "TC_1", "--log-format", "json", cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT)
    log.close()
    async with asyncio.timeout(START_TIMEOUT):
        while '"daemon_ready"' not in (tmp_path / "tc.log").read_text():
            assert proc.returncode is None, (tmp_path / "tc.log").read_text()
            await asyncio.sleep(0.1)
    return node, proc, tc_port, tls_port, http_port


async def test_desktops_over_tls(tmp_path: Path, free_port: Any, kit: Any) -> None:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue(certs, "TC_1")
    node, proc, _, tls_port, http_port = await start_tc(tmp_path, kit, free_port)
    try:
        trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        desk = await TLibClient.connect("127.0.0.1", tls_port, "wwe-tls", tls=trust,
                                        server_hostname="TC_1")
        answer = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert answer["message"] == "EventRegistered"
        # refused: plaintext on the TLS port; a client of another CA refuses us
        with pytest.raises((ConnectionError, TimeoutError, OSError)):
            await TLibClient.connect("127.0.0.1", tls_port, "plain", connect_timeout=3)
        other = tmp_path / "other"
        init_ca(other)
        with pytest.raises(ssl.SSLCertVerificationError):
            await TLibClient.connect("127.0.0.1", tls_port, "fooled",
                                     tls=ssl.create_default_context(
                                         cafile=str(other / "ca.pem")),
                                     server_hostname="TC_1")
        # the TLS desktop is still served
        again = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert again["message"] == "EventRegistered"
        # the operators' tool over TLS
        tool = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemons.cli", "tlib", "--connect", f"127.0.0.1:{tls_port}",
            "--app", "cli-tls", "--tls-ca", str(certs / "ca.pem"), "--tls-name", "TC_1",
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(tool.communicate(
            b'{"message": "RequestRegisterAddress", "AttributeThisDN": "1001"}\n'), 20)
        assert tool.returncode == 0, err.decode()
        messages = [json.loads(line)["message"] for line in out.decode().splitlines()]
        assert "EventRegistered" in messages, out.decode()
        metrics = await asyncio.to_thread(http_text, f"http://127.0.0.1:{http_port}/metrics")
        assert 'sipcluster_tlib_tls_refused_total{port="tc-tls-port",reason="not_tls"} 1.0' \
            in metrics
        await desk.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await node.close()
    log = (tmp_path / "tc.log").read_text()
    assert '"tlib_tls_refused"' in log


async def test_missing_certificate_is_refused_in_one_line(tmp_path: Path, free_port: Any,
                                                         kit: Any) -> None:
    text = kit.cluster_text(7000, free_port("127.0.0.1")).replace(
        "tc-port = 0", "tc-port = 0\ntc-tls-port = 0")
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(path),
        "--name", "TC_1", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(run.communicate(), 20)
    assert run.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "applications.TC_1.tc-tls-port" in lines[0], lines
