"""The feature-server daemon on real sockets, with each store (SQLite, and a real
PostgreSQL server): the nodes' query, provisioning through the API, reload on
SIGHUP with a broken plan refused and the old one in force, bad input answered
with 4xx + a log line + a counter, data kept across a restart, two
feature-servers sharing PostgreSQL, a broken cluster file refused in one line."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemons.feature_server.conftest import (
    DC1,
    DC2,
    ROOT,
    SIPCLUSTER,
    Processes,
    cluster_file,
    http,
    wait_for,
)

FS1 = f"http://{DC1}.31:8080"
FS2 = f"http://{DC2}.31:8080"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the default: a file under the state directory
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


def query(base: str, digits: str, **params: str) -> dict[str, Any]:
    extra = "".join(f"&{k.replace('_', '-')}={v}" for k, v in params.items())
    status, body = http("GET", f"{base}/dialplan?digits={digits}{extra}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=15) as resp:
        return resp.read().decode()


def test_query_provisioning_and_bad_input(processes: Processes, tmp_path: Path,
                                          store: str | None) -> None:
    config = cluster_file(tmp_path / "cluster.toml", 8080, store=store)
    fs = processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")
    assert query(FS1, "95551234", caller="1001") == {
        "action": "route", "number": "+5551234", "via": "trunk", "partition": "PSTN",
        "rule": "9.=>+${DIGITS:1}@trunk"}
    assert query(FS1, "5555", caller="1001")["action"] == "voicemail"
    assert query(FS1, "1001", reason="busy")["action"] == "voicemail"
    assert query(FS1, "1001", reason="no-answer") == {"action": "none"}

    # a blocked partition, provisioned, then put in the profile
    status, _ = http("PUT", f"{FS1}/api/partitions/Premium",
                     {"rules": ["91900.=>${DIGITS}@trunk"], "block": True})
    assert status == 201
    status, _ = http("PUT", f"{FS1}/api/calling-profiles/System",
                     {"partitions": ["Premium", "Basic", "Voicemail", "PSTN"],
                      "forward-no-answer": "5000"})
    assert status == 201  # stored (the cluster file's System is replaced)
    assert query(FS1, "919005551", caller="1001")["code"] == 403
    assert query(FS1, "1001", reason="no-answer")["number"] == "5000"

    # a profile for one user: alice has DN 1002
    assert http("PUT", f"{FS1}/api/calling-profiles/Restricted",
                {"partitions": ["Basic"]})[0] == 201
    status, user = http("PUT", f"{FS1}/api/users/alice",
                        {"dns": ["1002"], "pin": "4321", "calling-profile": "Restricted"})
    assert (status, user) == (201, {"dns": ["1002"], "calling-profile": "Restricted",
                                    "pin-set": True})
    assert query(FS1, "95551234", caller="1002").get("via") is None  # Basic only: no trunk
    assert query(FS1, "95551234", caller="1001")["via"] == "trunk"
    assert http("PUT", f"{FS1}/api/assignments/extension/1003",
                {"calling-profile": "Restricted"})[0] == 200
    assert "via" not in query(FS1, "95551234", caller="1003")
    # a provisioned DN that names its user: alice's profile applies to it too
    assert http("PUT", f"{FS1}/api/dns/1006", {"user": "alice"})[0] == 201
    assert "via" not in query(FS1, "95551234", caller="1006")

    # bad input: a broken rule, a profile naming no partition, a partition in use,
    # an unknown field, a huge body, a bad query -- 4xx with the reason, plan unchanged
    status, body = http("PUT", f"{FS1}/api/partitions/Broken", {"rules": ["9.=>${NOPE}"]})
    assert status == 422 and "partition Broken, rule 1" in body["error"]
    status, body = http("PUT", f"{FS1}/api/calling-profiles/X", {"partitions": ["Nope"]})
    assert status == 422 and "no partition 'Nope'" in body["error"]
    status, body = http("DELETE", f"{FS1}/api/partitions/Premium")
    assert status == 409 and "calling profile System" in body["error"]
    status, body = http("PUT", f"{FS1}/api/users/bob", {"dns": ["1004"], "colour": "red"})
    assert status == 400 and "colour" in body["error"]
    status, body = http("PUT", f"{FS1}/api/users/bob", {"pin": "12"})
    assert status == 400 and "pin" in body["error"]
    status, body = http("PUT", f"{FS1}/api/partitions/Huge", raw=b"{" * (9 * 1024 * 1024))
    assert status == 413 and "limit" in body["error"]
    status, body = http("GET", f"{FS1}/dialplan?digits=")
    assert status == 400
    assert query(FS1, "919005551", caller="1001")["code"] == 403  # still in force
    text = metrics(FS1)
    for reason, count in (("broken_plan", 3), ("bad_object", 2), ("too_large", 1),
                          ("bad_query", 1)):
        assert f'sipcluster_feature_server_api_refused_total{{reason="{reason}"}} ' \
               f'{count}.0' in text, text
    refused = [line for line in fs.lines() if line.get("event") == "api_request_refused"]
    assert len(refused) == 7
    assert 'sipcluster_feature_server_dialplan_queries_total{action="reject"}' in text

    # what is stored survives a restart; the PIN is not stored as given
    fs.stop()
    fs = processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")
    assert query(FS1, "919005551", caller="1001")["code"] == 403
    status, users = http("GET", f"{FS1}/api/users")
    assert users == {"alice": {"dns": ["1002"], "calling-profile": "Restricted",
                               "pin-set": True}}
    if store is None:
        db = tmp_path / "FS_dc1" / "feature-server.db"
        rows = sqlite3.connect(db).execute("SELECT body FROM fs_objects WHERE kind = 'user'")
        body = rows.fetchone()[0]
        assert "4321" not in body and "pbkdf2-sha256$" in body
    assert http("DELETE", f"{FS1}/api/users/alice")[0] == 200
    assert query(FS1, "95551234", caller="1002").get("via") == "trunk"  # back to System


def test_sighup_reload_and_a_broken_plan_refused(processes: Processes, tmp_path: Path) -> None:
    config = cluster_file(tmp_path / "cluster.toml", 8080)
    fs = processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")
    assert query(FS1, "7000")["action"] == "reject"
    text = config.read_text().replace('"7.=>gcti::reject=403"', '"7.=>+${DIGITS}@trunk"')
    config.write_text(text)
    fs.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: query(FS1, "7000")["action"] == "route", timeout=15)

    config.write_text(text.replace('"7.=>+${DIGITS}@trunk"', '"7.=>+${DIGITS@trunk"'))
    fs.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any(line.get("event") == "dial_plan_refused"
                                for line in fs.lines()), timeout=15)
    assert query(FS1, "7000")["via"] == "trunk"  # the plan in force stays
    status, body = http("POST", f"{FS1}/api/dial-plan/reload")
    assert status == 422 and "rule 3" in body["error"] and "stays" in body["error"]
    assert 'sipcluster_feature_server_dialplan_reloads_total{result="refused"} 2.0' \
        in metrics(FS1)

    config.write_text(text)
    status, body = http("POST", f"{FS1}/api/dial-plan/reload")
    assert status == 200 and body["rules"] == 7
    assert fs.proc.poll() is None


def test_two_feature_servers_share_postgresql(processes: Processes, tmp_path: Path,
                                              postgres_dsn: str) -> None:
    config = cluster_file(tmp_path / "cluster.toml", 8080, store=postgres_dsn)
    config.write_text(config.read_text().replace(
        f'store = "{postgres_dsn}"', f'store = "{postgres_dsn}"\nstore-poll-interval = 0.2'))
    processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")
    processes.daemon("feature-server", config, "FS_dc2", f"{FS2}/healthz")
    assert query(FS2, "6000") == {"action": "route", "number": "6000", "partition": "Basic",
                                  "rule": ".=>${DIGITS}"}
    assert http("PUT", f"{FS1}/api/partitions/Basic",
                {"rules": [".=>${DIGITS}", "6XXX=>gcti::reject=486"]})[0] == 201
    assert wait_for(lambda: query(FS2, "6000").get("code") == 486, timeout=15)


def test_broken_cluster_file_is_refused_in_one_line(tmp_path: Path) -> None:
    config = cluster_file(tmp_path / "cluster.toml", 8080)
    config.write_text(config.read_text().replace('"5555=>gcti::voicemail"', '"55[5=>x"', 1))
    result = subprocess.run([*SIPCLUSTER, "feature-server", "--config", str(config), "--name",
                             "FS_dc1"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "applications.FS_dc1.options" in lines[0] and "unclosed '['" in lines[0]


def test_store_down_queries_go_on_writes_get_503(processes: Processes, tmp_path: Path,
                                                 postgres_server: Any) -> None:
    """PostgreSQL refuses the feature-server's database: the plan in force keeps
    answering, a write gets 503 with the reason (logged, counted), a reload is
    refused and counted; when the database is back, so is provisioning."""
    import asyncio

    import asyncpg

    dsn = postgres_server.create_database()
    database = dsn.rsplit("/", 1)[1]
    config = cluster_file(tmp_path / "cluster.toml", 8080, store=dsn)
    processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_server.dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
    asyncio.run(admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE datname = '{database}'"))
    try:
        assert query(FS1, "95551234")["via"] == "trunk"
        status, body = http("PUT", f"{FS1}/api/partitions/New", {"rules": ["1=>x"]},
                            timeout=20)
        assert status == 503 and body["error"].startswith("store unavailable")
        status, body = http("POST", f"{FS1}/api/dial-plan/reload", timeout=20)
        assert status == 503
        text = metrics(FS1)
        assert 'sipcluster_feature_server_api_refused_total{reason="store_unavailable"} 2.0' \
            in text
        assert 'sipcluster_feature_server_dialplan_reloads_total{result="store_unreachable"}' \
            in text
        assert query(FS1, "95551234")["via"] == "trunk"
    finally:
        asyncio.run(admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    assert wait_for(lambda: http("PUT", f"{FS1}/api/partitions/New",
                                 {"rules": ["1=>x"]})[0] == 201, timeout=10)
    assert http("GET", f"{FS1}/api/partitions")[1]["New"]["stored"] is True


def test_api_token_guards_provisioning_not_the_nodes_query(processes: Processes,
                                                           tmp_path: Path) -> None:
    import urllib.error

    token = "s3cret-provisioning-token"
    config = cluster_file(tmp_path / "cluster.toml", 8080, voicemail_port=5080)
    config.write_text(config.read_text().replace(
        '[applications.FS_dc1.options]\n',
        f'[applications.FS_dc1.options]\napi-token = "{token}"\n'))
    processes.daemon("feature-server", config, "FS_dc1", f"{FS1}/healthz")
    assert query(FS1, "95551234")["via"] == "trunk"  # the nodes need no token
    for method, path, body in (("GET", "/api/partitions", None),
                               ("PUT", "/api/partitions/X", {"rules": ["1=>2"]}),
                               ("GET", "/api/mailboxes", None)):
        status, answer = http(method, f"{FS1}{path}", body)
        assert status == 401, (path, answer)
    req = urllib.request.Request(f"{FS1}/api/partitions/X", method="PUT",
                                 data=b'{"rules": ["1=>2"]}',
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        assert resp.status == 201
    wrong = urllib.request.Request(f"{FS1}/api/partitions", headers={
        "Authorization": "Bearer not-the-token"})
    try:
        urllib.request.urlopen(wrong, timeout=15)
        raise AssertionError("a wrong token was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    assert 'sipcluster_feature_server_api_refused_total{reason="unauthorized"} 4.0' \
        in metrics(FS1)
    # the operators' command finds the token in the cluster file
    cli = subprocess.run([*SIPCLUSTER, "fs", "--config", str(config), "--name", "FS_dc1",
                          "show", "partitions", "X"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0 and json.loads(cli.stdout) == {"rules": ["1=>2"]}, cli.stderr
