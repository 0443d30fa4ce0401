"""``sipcluster fs``: the operators' commands against a running feature-server."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

from daemons.cli import main
from tests.daemons.feature_server.conftest import DC1, ROOT, SIPCLUSTER, Processes, cluster_file


def fs(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``sipcluster fs --config CONFIG --name FS_dc1 ARGS``, run in this process (the
    command line is parsed and run as the installed command does)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["fs", "--config", str(config), "--name", "FS_dc1", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_operators_provision_and_query(processes: Processes, tmp_path: Path) -> None:
    config = cluster_file(tmp_path / "cluster.toml", 8080, voicemail_port=5080)
    processes.daemon("feature-server", config, "FS_dc1", f"http://{DC1}.31:8080/healthz")
    out = fs(config, "partition", "Emergency", "--rule", "112=>+112@Trunk_dc1")
    assert out.returncode == 0, out.stderr
    out = fs(config, "put", "calling-profiles", "Agents", "--json",
             '{"partitions": ["Emergency", "Basic"]}')
    assert out.returncode == 0, out.stderr
    assert fs(config, "user", "carol", "--dn", "1005", "--pin", "2468").returncode == 0
    assert fs(config, "assign", "user", "carol", "Agents").returncode == 0
    answer = json.loads(fs(config, "query", "112", "--caller", "1005").stdout)
    assert (answer["number"], answer["via"]) == ("+112", "Trunk_dc1")
    users = json.loads(fs(config, "list", "users").stdout)
    assert users == {"carol": {"dns": ["1005"], "pin-set": True}}
    assert json.loads(fs(config, "status").stdout)["partitions"] == 5

    out = fs(config, "mailbox", "7777", "--pin", "1357")
    assert out.returncode == 0, out.stderr
    assert fs(config, "mailbox-pin", "7777", "2468").returncode == 0
    assert json.loads(fs(config, "show", "mailboxes", "7777").stdout)["mailbox"] == "7777"
    assert fs(config, "delete", "mailboxes", "7777").returncode == 0
    assert fs(config, "show", "mailboxes", "7777").returncode == 1

    refused = fs(config, "partition", "Bad", "--rule", "1[2=>x")
    assert refused.returncode == 1
    assert refused.stderr.startswith("fs: 422: partition Bad, rule 1")
    missing = fs(config, "show", "users", "nobody")
    assert (missing.returncode, missing.stderr.strip()) == (1, "fs: 404: no user 'nobody'")
    down = subprocess.run([*SIPCLUSTER, "fs", "--url", f"http://{DC1}.32:8080", "status"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert down.returncode == 2 and "cannot reach" in down.stderr
