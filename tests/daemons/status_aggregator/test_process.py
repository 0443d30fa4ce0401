"""The real process: ``sipcluster status-aggregator`` started from a cluster
file, driven by ``sipcluster status``, stopped by SIGTERM; a bad cluster file
refused in one line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import aiohttp

from tests.daemons.status_aggregator.conftest import SA_HOSTS, Lab
from tests.support.processes import START_TIMEOUT

SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *SIPCLUSTER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_healthy(lab: Lab) -> None:
    url = f"http://{SA_HOSTS['SA_1']}:{lab.ports['SA_1_http']}/healthz"
    deadline = time.monotonic() + START_TIMEOUT  # a loaded host starts Python slowly
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("status-aggregator did not become healthy")


async def wait_watching(lab: Lab) -> None:
    url = f"http://{SA_HOSTS['SA_1']}:{lab.ports['SA_1_http']}/metrics"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            async with http.get(url) as answer:
                if "sipcluster_status_watches 1.0" in await answer.text():
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the watcher never watched")


async def test_daemon_serves_the_operators_tool_and_stops_on_sigterm(lab: Lab) -> None:
    daemon = await asyncio.create_subprocess_exec(
        *SIPCLUSTER, "status-aggregator", "--config", str(lab.config_file), "--name", "SA_1",
        "--log-format", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_healthy(lab)
        cfg = str(lab.config_file)
        watch = asyncio.create_task(run_cli(
            "status", "watch", "--config", cfg, "--as", "desk", "--aggregator", "SA_1",
            "eve@cluster.lab", "--count", "2", "--timeout", "30"))
        await wait_watching(lab)  # its first record is the empty one, then the change
        code, _, err = await run_cli("status", "publish", "--config", cfg, "--as", "ops",
                                     "eve@cluster.lab", "On Vacation", "--persistent",
                                     "--until", "2027-01-04T09:00:00")
        assert code == 0, err
        code, out, _ = await run_cli("status", "query", "--config", cfg, "--as", "desk",
                                     "eve@cluster.lab")
        record = json.loads(out)
        assert (record["status"], record["persistent"], record["server"]) == (
            "On Vacation", True, "ops")
        code, out, err = await watch
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["status"] == "On Vacation"
        # a consumer that publishes is refused
        code, _, err = await run_cli("status", "publish", "--config", cfg, "--as", "desk",
                                     "eve@cluster.lab", "Busy")
        assert code == 1 and "role publisher is not for it" in err
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(daemon.communicate(), 10)
    assert daemon.returncode == 0
    events = [json.loads(line)["event"] for line in err.decode().splitlines()
              if line.startswith("{")]
    assert "daemon_stopped" in events


async def test_a_bad_option_is_refused_in_one_line(lab: Lab) -> None:
    lab.write("publisher-timeout = \"soon\"")
    code, _, err = await run_cli("status-aggregator", "--config", str(lab.config_file),
                                   "--name", "SA_1")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "applications.SA_1.options.publisher-timeout" in err


async def test_missing_certificates_are_refused_in_one_line(lab: Lab) -> None:
    (lab.certs / "SA_1.pem").unlink()
    code, _, err = await run_cli("status-aggregator", "--config", str(lab.config_file),
                                 "--name", "SA_1")
    assert code == 2 and err.strip().count("\n") == 0
    assert "sipcluster certs issue SA_1" in err
