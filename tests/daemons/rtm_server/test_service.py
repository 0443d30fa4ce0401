"""The rtm-server daemon as operators run it: a bad config refused in one
line, /healthz and /metrics, TLS, the operators' tools, a clean SIGTERM stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.daemons.rtm_server.conftest import (
    PASSWORDS,
    ROOT,
    Hub,
    Proc,
    hub_spec,
    wait_for,
    write_cluster,
)


def sipcluster(*argv: str, env: dict[str, str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemons.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("options,key,reason", [
    ({"max-queue-bytes": "lots"}, "max-queue-bytes", "expected an integer"),
    ({"store-sync": "sometimes"}, "store-sync", "expected one of normal, full"),
    ({"max-queu-bytes": 5}, "max-queu-bytes", "unknown option"),
    ({"tls-cert": "/x.pem"}, "tls-key", "give tls-cert and tls-key together"),
    ({"pair": "NOPE"}, "pair", "expected another rtm-server application"),
])
def test_a_bad_option_is_refused_in_one_line(tmp_path: Path, options: dict[str, object],
                                             key: str, reason: str) -> None:
    spec = hub_spec("RTM1", "127.0.125.1")
    config = write_cluster(tmp_path / "c.toml", [spec], options)
    result = sipcluster("rtm-server", "--config", str(config), "--name", "RTM1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"applications.RTM1.options.{key}" in lines[0] and reason in lines[0]


def test_a_bad_site_id_is_refused(tmp_path: Path) -> None:
    spec = hub_spec("RTM1", "127.0.125.1")
    config = write_cluster(tmp_path / "c.toml", [spec], {}, sites={1000: "x"})
    result = sipcluster("rtm-server", "--config", str(config), "--name", "RTM1")
    assert result.returncode == 2
    assert "options.sites.1000: a site id is an integer 1-999" in result.stderr


def test_daemon_over_tls_with_the_operators_tools_and_a_clean_stop(
        tmp_path: Path, procs: list[Proc]) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.125.2")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hub.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    spec = hub_spec("RTM1", "127.0.125.2")
    config = write_cluster(tmp_path / "c.toml", [spec], {
        "store": f"sqlite:{tmp_path}/hub.db", "tls-cert": str(tmp_path / "hub.pem"),
        "tls-key": str(tmp_path / "hub.pem")})
    hub = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(hub)
    hub.wait_role("active")
    tls = ["--config", str(config), "--tls", "--ca", str(tmp_path / "ca.pem")]
    (tmp_path / "pw2").write_text(PASSWORDS[2] + "\n")

    check = sipcluster("rtm", "check-site", "2", *tls, "--password-file", str(tmp_path / "pw2"))
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] is True and report["connected"] is False and report["hub"] == "RTM1"
    refused = sipcluster("rtm", "check-site", "2", *tls, "--password", "indy-secret")
    assert refused.returncode == 1 and json.loads(refused.stdout)["code"] == "auth-failed"
    plain = sipcluster("rtm", "check-site", "2", "--config", str(config), "--password-file",
                       str(tmp_path / "pw2"), "--timeout", "2")
    assert plain.returncode == 2  # a clear-text logon to a TLS hub goes nowhere

    sent = sipcluster("rtm", "send", *tls, "--site", "1", "--to", "2", "--object", "Multisite",
                      "--event", "Hello", "-s", "jdoe", "-i", "42", "--state", str(tmp_path),
                      env={"SIPCLUSTER_RTM_PASSWORD": PASSWORDS[1]})
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"seq": 1, "held": True}
    listen = Proc([sys.executable, "-m", "daemons.cli", "rtm", "listen", *tls, "--site", "2",
                   "--handler", "ops", "--state", str(tmp_path), "--log-level", "info"],
                  tmp_path / "listen.out",
                  env={"SIPCLUSTER_RTM_PASSWORD": PASSWORDS[2]}).start()
    procs.append(listen)
    wait_for(lambda: '"event":"Hello"' in listen.log.read_text(), 60, "the message printed")
    assert listen.stop() == 0
    lines = [json.loads(x) for x in listen.log.read_text().splitlines() if x.startswith("{")
             and '"handler"' in x]
    assert len(lines) == 1
    assert lines[0]["id"] >= 1 and lines[0]["origin"] == 1
    assert lines[0]["elements"] == [["string", "jdoe"], ["integer", 42]]
    # the handler's journal keeps it: a restarted listener does not print it again
    again = Proc(listen.argv, tmp_path / "listen2.out", env=listen.env).start()
    procs.append(again)
    wait_for(lambda: "rtm_connected" in again.log.read_text(), 60, "reconnected")
    assert again.stop() == 0
    assert '"handler"' not in again.log.read_text()

    status, body = hub.http("/healthz")
    assert status == 200 and json.loads(body)["checks"]["hub"]["role"] == "active"
    assert hub.metric("sipcluster_rtm_messages_delivered_total", site="2") == 1
    assert hub.metric("sipcluster_rtm_messages_received_total", site="1") == 1
    assert hub.metric("sipcluster_rtm_link_up", site="2") == 0
    hub.signal(signal.SIGTERM)
    assert hub.process is not None and hub.process.wait(timeout=10) == 0
    assert '"daemon_stopped"' in hub.log.read_text()


async def test_dead_letters_are_listed_for_operators(tmp_path: Path, procs: list[Proc]) -> None:
    import asyncio

    from daemons.runtime.rtm_client import RtmClient
    from protocols.rtm.elements import MessageBuilder

    spec = hub_spec("RTM1", "127.0.125.3")
    config = write_cluster(tmp_path / "c.toml", [spec], {
        "store": f"sqlite:{tmp_path}/hub.db", "max-queue-bytes": 2048})
    hub = Hub(config, spec, tmp_path / "hub.log").start()
    procs.append(hub)
    await asyncio.to_thread(hub.wait_role, "active")
    client = RtmClient(site=1, password=PASSWORDS[1], hubs=[(spec.host, spec.rtm_port)],
                       state=tmp_path / "s1.db")
    await client.start()
    try:
        for i in range(20):  # site 2 is away: its queue fills up
            await client.send_event(2, "Multisite", "Big",
                                    MessageBuilder().put_integer(i).put_string("x" * 200)
                                    .elements)
        await asyncio.wait_for(client.flushed(), 10)
    finally:
        await client.close()
    result = await asyncio.to_thread(sipcluster, "rtm", "dead-letters", "--config",
                                     str(config), "--name", "RTM1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and all(r["reason"] == "queue-full" and r["dest"] == 2 for r in rows)
    queued = await asyncio.to_thread(hub.metric, "sipcluster_rtm_queue_messages", site="2")
    assert len(rows) + queued == 20
    assert await asyncio.to_thread(
        hub.metric, "sipcluster_rtm_dead_letters_total", reason="queue-full") == len(rows)


def test_the_store_defaults_to_the_state_directory(tmp_path: Path, procs: list[Proc]) -> None:
    spec = hub_spec("RTM1", "127.0.125.4")
    config = write_cluster(tmp_path / "c.toml", [spec], {})
    hub = Hub(config, spec, tmp_path / "hub.log")
    hub.env = {"SIPCLUSTER_STATE_DIR": str(tmp_path / "state")}
    procs.append(hub.start())
    hub.wait_role("active")
    assert (tmp_path / "state" / "RTM1" / "rtm.db").is_file()
