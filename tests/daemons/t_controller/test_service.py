"""The t-controller daemon end to end: with the real sip-server daemon and
SIPp phones, and as a process started by ``sipcluster t-controller``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import protocols.sip as sip_stack
from daemons.cluster.config import load_cluster
from daemons.sip_server.service import SipServer
from tests.support.processes import START_TIMEOUT

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def sipp_command(sipp: str, workdir: Path, scenario: Path, *args: str,
                 timeout: int = 20) -> list[str]:
    return [sipp, "-sf", str(scenario), *args, "-m", "1", "-nostdin", "-trace_err",
            "-error_file", str(workdir / f"{scenario.stem}-errors.log"),
            "-timeout", f"{timeout}s", "-timeout_error"]


async def run_sipp(cmd: list[str], workdir: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TERM": "dumb"})
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")[-3000:]


async def test_inbound_call_end_to_end_with_sip_server_and_sipp(
        tmp_path: Path, free_port: Any, require_tool: Any, kit: Any) -> None:
    sipp = require_tool("sipp")
    sip_port = free_port("127.0.0.1")
    default_port = free_port("127.0.0.1")
    uas_port = free_port("127.0.0.1")
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(kit.cluster_text(default_port, sip_port, tserver="wrap-up-time = 1"))
    node = SipServer(load_cluster(config_path), "SIPS_1")
    node_task = asyncio.create_task(node.serve())
    async with asyncio.timeout(START_TIMEOUT):
        while node.management.port is None:
            assert not node_task.done(), node_task
            await asyncio.sleep(0.02)
    service, task = await kit.start_service(config_path)
    controller = service.controller
    assert controller is not None and service.node_link is not None
    uas = None
    desk = None
    try:
        async with asyncio.timeout(10):
            await service.node_link.wait_up()
        # the phone of 1001: one SIPp answers calls, another registers its contact
        uas = await asyncio.create_subprocess_exec(
            *sipp_command(sipp, tmp_path, SCENARIOS / "uas_answer.xml",
                          "-i", "127.0.0.1", "-p", str(uas_port)),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "TERM": "dumb"})
        register = (SCENARIOS / "register_contact.xml").read_text().replace(
            "UAS_PORT", str(uas_port))
        (tmp_path / "register_contact.xml").write_text(register)
        code, out = await run_sipp(sipp_command(
            sipp, tmp_path, tmp_path / "register_contact.xml", "-s", "1001",
            "-au", "1001", "-ap", "lab-1001-secret", "-i", "127.0.0.1",
            "-p", str(free_port("127.0.0.1")), f"127.0.0.1:{sip_port}"), tmp_path)
        assert code == 0, out
        await kit.wait_until(lambda: controller.ownership.owner("1001") == "SIPS_1")
        contact = controller.dn_services["1001"].contact
        assert contact is not None and contact.startswith(f"sip:1001@127.0.0.1:{uas_port}")

        desk = await kit.Desktop.connect(service.tc_address, "wwe-1001")
        registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert registered["AttributeExtensions"]["dn-state"] == "in-service"
        assert (await desk.request("RequestAgentLogin", AttributeThisDN="1001",
                                   AttributeAgentID="a1001"))["message"] == "EventAgentLogin"
        ready = await desk.request("RequestAgentReady", AttributeThisDN="1001")
        assert ready["AttributeReason"] == {"site": "dc1"}

        code, out = await run_sipp(sipp_command(
            sipp, tmp_path, SCENARIOS / "uac_call.xml", "-s", "1001", "-i", "127.0.0.1",
            "-p", str(free_port("127.0.0.1")), f"127.0.0.1:{sip_port}"), tmp_path)
        assert code == 0, out
        async with asyncio.timeout(30):
            uas_out, _ = await uas.communicate()
        assert uas.returncode == 0, uas_out.decode(errors="replace")[-3000:]
        await desk.wait_for("EventAgentReady", count=2, timeout=5)
        assert desk.names() == [
            "EventRegistered", "EventAgentLogin", "EventAgentReady", "EventRinging",
            "EventEstablished", "EventReleased", "EventAgentNotReady", "EventAgentReady",
        ]
        ringing = desk.of("EventRinging")[0]
        assert ringing["AttributeThisDN"] == "1001"
        assert ringing["AttributeOtherDN"] == "1002"
        assert ringing["AttributeThisDNRole"] == "Destination"
        conn_ids = {e["AttributeConnID"] for e in desk.events if "AttributeConnID" in e}
        assert len(conn_ids) == 1
        assert desk.of("EventAgentNotReady")[0]["AttributeAgentWorkMode"] == "AfterCallWork"
    finally:
        if uas is not None and uas.returncode is None:
            uas.kill()
            await uas.wait()
        if desk is not None:
            await desk.close()
        await kit.stop_service(service, task)
        node.stopping.set()
        async with asyncio.timeout(10):
            await node_task


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


async def test_cli_daemon_serves_and_stops_on_sigterm(tmp_path: Path, free_port: Any,
                                                      kit: Any) -> None:
    node = kit.FakeNode()
    node.registered["1001"] = "sip:1001@127.0.0.1:5099"
    await node.start()
    tc_port, http_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    text = kit.cluster_text(node.port, free_port("127.0.0.1")).replace(
        "tc-port = 0", f"tc-port = {tc_port}").replace("http-port = 0",
                                                     f"http-port = {http_port}")
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    log = (tmp_path / "tc.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(path),
        "--name", "TC_1", "--log-format", "json",
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        status, health = 0, {}
        async with asyncio.timeout(45):  # a start on a loaded machine; bounds, not speed
            while status != 200:
                assert proc.returncode is None, (tmp_path / "tc.log").read_text()
                await asyncio.sleep(0.1)
                status, health = await asyncio.to_thread(
                    http_get, f"http://127.0.0.1:{http_port}/healthz")
        assert health["checks"]["node-link"]["ok"]
        desk = await kit.Desktop.connect(("127.0.0.1", tc_port), "wwe")
        registered = await desk.request("RequestRegisterAddress", AttributeThisDN="1001")
        assert registered["AttributeExtensions"]["dn-state"] == "in-service"
        _, page = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http_port}/status/dns")
        assert page["dns"]["1001"]["owner"] == "SIPS_1"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proc.wait()
        assert code == 0, (tmp_path / "tc.log").read_text()[-3000:]
        await desk.client.wait_closed()
        lines = [json.loads(x) for x in (tmp_path / "tc.log").read_text().splitlines()
                 if x.startswith("{")]
        assert "daemon_stopped" in [x["event"] for x in lines]
        # the start line tells operators which build of the SIP stack runs
        [starting] = [x for x in lines if x["event"] == "daemon_starting"]
        assert starting["sip_stack"] == ("compiled" if sip_stack.COMPILED else "pure-python")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await node.close()


async def test_bad_config_name_exits_2(tmp_path: Path, kit: Any) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(kit.cluster_text(7000, 5070))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "daemons.cli", "t-controller", "--config", str(path),
         "--name", "TC_2"], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "TC_1" in result.stderr  # did you mean
