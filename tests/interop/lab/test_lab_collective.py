"""The lab is a collective (docs/collective.md, "The lab"): ``sipcluster lab
start`` with the shipped example runs site 1 Boca (the two data centres,
127.0.1.x / 127.0.2.x), sites Indy (127.0.3.x) and Lyon (127.0.4.x), each
from its own cluster file, linked through the hub RTM1; lab.json describes
every site, the hub and the credentials.

Roaming: agent a1001 (home Boca, extension 1001) logs in at Indy on DN 3001,
whose phone is a SIPp UAS registered through Indy's proxy. SIPp at Lyon and
at Boca dial 1001 (as a trunk call to their site's node, caller +15550177):
both INVITEs reach the SIPp UAS at Indy, with the original caller, over the
sites' trunks; after the log-off Lyon locates 1001 at home again.

This module runs the lab on its default addresses: only the lab's owner runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemons.runtime.tlib_client import TLibClient
from tests.integration.support import SCENARIOS, until
from tests.support.agents import agent_login

SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
CALLER = "+15550177"
pytestmark = pytest.mark.timeout(240)


def _lab(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIPCLUSTER, "lab", *args, "--dir", str(directory)],
                          capture_output=True, text=True, timeout=150)


@pytest.fixture(scope="module")
def collective_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("collective-lab")
    started = _lab(directory, "start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        desc = json.loads((directory / "lab.json").read_text())
        desc["_dir"] = str(directory)
        desc["_guide"] = started.stdout
        yield desc
    finally:
        _lab(directory, "stop")


def _get(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=3) as resp:
        return json.loads(resp.read())


def _site(desc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in desc["sites"] if s["site_name"] == name)


def _locate(site: dict[str, Any], extension: str) -> dict[str, Any]:
    c = site["collective"]
    return dict(_get(c["host"], c["http_port"], f"/locate/{extension}"))


def test_lab_json_describes_every_site_and_the_hub(collective_lab: dict[str, Any]) -> None:
    desc = collective_lab
    sites = {s["site_name"]: s for s in desc["sites"]}
    assert [(s["site_identifier"], s["site_name"]) for s in desc["sites"]] == \
        [(1, "Boca"), (2, "Indy"), (3, "Lyon")]
    assert sites["Boca"]["subnets"] == ["127.0.1.0/24", "127.0.2.0/24"]
    assert sites["Indy"]["subnets"] == ["127.0.3.0/24"]
    assert sites["Lyon"]["subnets"] == ["127.0.4.0/24"]
    assert Path(sites["Indy"]["cluster_file"]).is_file()
    assert sites["Indy"]["domain"] == "indy.lab" and sites["Lyon"]["domain"] == "lyon.lab"
    hub = desc["hub"]
    assert (hub["name"], hub["host"], hub["rtm_port"], hub["running"]) == \
        ("RTM1", "127.0.1.60", 7500, True)
    for site in desc["sites"]:
        assert hub["credentials"][str(site["site_identifier"])] == site["password"]
        assert site["collective"]["running"], site["site_name"]
        assert all(n["running"] for n in site["nodes"]) and site["proxies"]
    assert sites["Lyon"]["site_trunks"]["Indy"]["contact"] == "127.0.3.11:5070"
    assert sites["Indy"]["accounts"][0]["dn"] == "3001"
    assert "site 2 Indy" in desc["_guide"] and "register: user 3001@indy.lab" in desc["_guide"]
    # every site's accounts are users of the company-wide directory at every site
    wanted = sum(len(s["accounts"]) for s in desc["sites"])
    for site in desc["sites"]:
        c = site["collective"]
        users = _get(c["host"], c["http_port"], "/users")
        assert len(users) == wanted, (site["site_name"], users)


def _sipp(tmp: Path, sipp: str, scenario: str, address: str, port: int,
          target: tuple[str, int], service: str, domain: str, *args: str,
          free_port: Callable[..., int]) -> tuple[subprocess.Popen[str], Path]:
    workdir = tmp / f"sipp-{scenario}-{address}-{port}"
    workdir.mkdir()
    cmd = [sipp, f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario),
           "-i", address, "-p", str(port), "-mi", address, "-mp", str(free_port(address)),
           "-s", service, "-t", "u1", "-nostdin", "-trace_err",
           "-error_file", str(workdir / "errors.log"), "-trace_msg",
           "-message_file", str(workdir / "wire.log"), "-timeout", "30s", "-timeout_error",
           "-set", "domain", domain, *args]
    out = (workdir / "stdout.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TERM": "dumb"})
    return proc, workdir


def _finished(proc: subprocess.Popen[str], workdir: Path, timeout: float = 30) -> str:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    wire = (workdir / "wire.log").read_text(errors="replace") \
        if (workdir / "wire.log").exists() else ""
    errors = (workdir / "errors.log").read_text(errors="replace") \
        if (workdir / "errors.log").exists() else ""
    assert code == 0, f"sipp exited {code}\n{errors[-3000:]}\n{wire[-4000:]}"
    return wire


def _log_events(directory: str, name: str, event: str) -> list[dict[str, Any]]:
    lines = (Path(directory) / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
    out = []
    for line in lines:
        if f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


async def test_calls_to_a_roaming_user_go_to_the_site_it_is_logged_on_at(
        collective_lab: dict[str, Any], require_tool: Any, tmp_path: Path,
        free_port: Callable[..., int]) -> None:
    desc = collective_lab
    sipp = require_tool("sipp")
    boca, indy, lyon = (_site(desc, n) for n in ("Boca", "Indy", "Lyon"))
    assert _locate(lyon, "1001")["site"] == 1

    # the phone of DN 3001 at Indy registers through Indy's proxy, then answers twice
    proxy = indy["proxies"][0]
    phone = "127.0.3.150"
    port = free_port(phone)
    account = next(a for a in indy["accounts"] if a["dn"] == "3001")
    register, workdir = _sipp(tmp_path, sipp, "register.xml", phone, port,
                              (proxy["host"], proxy["sip_port"]), "3001", indy["domain"],
                              "-m", "1", "-au", "3001", "-ap", account["password"],
                              "-set", "expires", "300", free_port=free_port)
    await asyncio.to_thread(_finished, register, workdir)
    uas, uas_dir = _sipp(tmp_path, sipp, "uas_answer.xml", phone, port, ("127.0.0.1", 9),
                         "3001", indy["domain"], "-m", "2", free_port=free_port)

    # agent a1001 of Boca logs in on DN 3001 at Indy's t-controller
    node = indy["nodes"][0]
    desk = await TLibClient.connect(node["host"], node["tc_port"], "Desk", "legacy",
                                    local_addr=("127.0.3.151", 0))
    try:
        async with asyncio.timeout(30):
            registered = await desk.request("RequestRegisterAddress", AttributeThisDN="3001")
            assert registered["message"] == "EventRegistered", registered
            # the DN comes in service at the t-controller a moment after the phone's 200
            login = await agent_login(desk, "3001", "a1001", "AutoIn")
            assert login["message"] == "EventAgentLogin", login
        for site in (boca, lyon):
            def there(s: dict[str, Any] = site) -> bool:
                return bool(_locate(s, "1001")["site"] == 2)
            await until(f"1001 located at Indy from {site['site_name']}", there, 15)

        # SIPp at Lyon and at Boca dial 1001: a trunk call to their site's node
        for caller_site, address in ((lyon, "127.0.4.150"), (boca, "127.0.1.150")):
            target = caller_site["nodes"][0]
            call, call_dir = _sipp(tmp_path, sipp, "uac_inbound.xml", address,
                                   free_port(address), (target["host"], target["sip_port"]),
                                   "1001", caller_site["domain"], "-m", "1",
                                   "-set", "caller", CALLER, free_port=free_port)
            await asyncio.to_thread(_finished, call, call_dir)
        wire = await asyncio.to_thread(_finished, uas, uas_dir)
    finally:
        try:
            async with asyncio.timeout(5):
                await desk.request("RequestAgentLogout", AttributeThisDN="3001")
        finally:
            await desk.close()

    # on the wire at Indy's phone: two INVITEs for DN 3001 showing the original caller,
    # sent by Indy's node (the calls came over the trunks, not through Boca)
    invites = [m for m in wire.split("----------------------------------------------")
               if "INVITE sip:" in m and "received" in m.lower()]
    assert len(invites) == 2, wire[-4000:]
    for message in invites:
        assert f"From: <sip:{CALLER}@" in message, message
    # Lyon's and Boca's nodes sent them over the trunk to Indy; Indy's rang DN 3001
    assert [e["trunk"] for e in _log_events(desc["_dir"], "SIPS_Lyon", "roaming_call")] \
        == ["Trunk_Site_Indy"]
    boca_calls = [e for n in boca["nodes"]
                  for e in _log_events(desc["_dir"], n["name"], "roaming_call")]
    assert [e["trunk"] for e in boca_calls] == ["Trunk_Site_Indy"]
    assert [e["dn"] for e in _log_events(desc["_dir"], "SIPS_Indy", "roaming_call")] == \
        ["3001", "3001"]

    # logged off at Indy: calls go home again
    await until("1001 located at home from Lyon", lambda: _locate(lyon, "1001")["site"] == 1, 15)
