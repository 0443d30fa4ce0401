"""The systemd units of deploy/systemd/: systemd's own checks (``systemd-analyze
verify`` and ``security --offline``, ``systemd-sysusers``/``systemd-tmpfiles``
into a scratch root) and the directives every sipcluster daemon relies on
(``Type=notify`` with the watchdog of daemons/runtime/service.py, the
sandbox, one capability only where a port below 1024 is bound).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemons.cli import build_parser, command_names

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
INSTALLED_BINARY = "/opt/sipcluster/bin/sipcluster"
CONFIG = "/etc/sipcluster/cluster.toml"

#: template -> daemon kind; an example instance name for `verify`. A daemon
#: gets its unit when `sipcluster KIND` exists, not before.
TEMPLATES = {
    "sipcluster-sip-server@.service": ("sip-server", "SIPS_dc1_1"),
    "sipcluster-t-controller@.service": ("t-controller", "TC_dc1_1"),
    "sipcluster-sip-proxy@.service": ("sip-proxy", "SIPProxy_dc1_1"),
    "sipcluster-director@.service": ("director", "Director"),
    "sipcluster-feature-server@.service": ("feature-server", "FS_dc1"),
    "sipcluster-rtm-server@.service": ("rtm-server", "RTM1"),
    "sipcluster-status-aggregator@.service": ("status-aggregator", "SA_1"),
    "sipcluster-collective@.service": ("collective", "Collective_Boca"),
}
GEO_DNS = "sipcluster-geo-dns.service"
#: units whose daemon binds a port below 1024 (SIP 5060, DNS 53)
BINDS_LOW_PORT = {"sipcluster-sip-proxy@.service", GEO_DNS}
SERVICES = [*TEMPLATES, GEO_DNS]
RELOADS_ON_SIGHUP = {"sipcluster-feature-server@.service"}

SANDBOX = {
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "NoNewPrivileges": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelLogs": "true",
    "ProtectControlGroups": "true",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
}
LIFECYCLE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30s",
    "Restart": "on-failure",
    "RestartSec": "2s",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "20",
    "User": "sipcluster",
    "Group": "sipcluster",
    "DynamicUser": "no",
    "LimitNOFILE": "65536",
    "ReadWritePaths": "/var/lib/sipcluster",
    "ConfigurationDirectory": "sipcluster",
    "EnvironmentFile": "-/etc/default/sipcluster",
}


def _instance(unit_name: str) -> str:
    """The unit name `verify` is given: an instance of a template."""
    if unit_name in TEMPLATES:
        return unit_name.replace("@.", f"@{TEMPLATES[unit_name][1]}.")
    return unit_name


def _installable_copy(tmp_path: Path) -> Path:
    """deploy/systemd copied with ExecStart= pointing at this venv's sipcluster
    (``verify`` insists that the binary exists)."""
    binary = Path(sys.executable).parent / "sipcluster"
    assert binary.exists(), f"{binary} missing: install the package (pip install -e .)"
    out = tmp_path / "units"
    out.mkdir()
    for path in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")]:
        text = path.read_text(encoding="utf-8").replace(INSTALLED_BINARY, str(binary))
        (out / path.name).write_text(text, encoding="utf-8")
    return out


def _verify(analyze: str, unit_dir: Path, unit: str) -> list[str]:
    """Problems `systemd-analyze verify` reports for ``unit``: its exit status
    and every output line (it only warns, exit 0, on unknown keys or values)."""
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit_dir / unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0:
        lines.insert(0, f"exit status {proc.returncode}")
    return lines


@pytest.mark.parametrize("unit_name", [*SERVICES, "sipcluster.target"])
def test_systemd_analyze_verify(require_tool: Any, tmp_path: Path, unit_name: str) -> None:
    analyze = require_tool("systemd-analyze")
    unit_dir = _installable_copy(tmp_path)
    assert _verify(analyze, unit_dir, _instance(unit_name)) == []


def test_verify_check_catches_a_broken_unit(require_tool: Any, tmp_path: Path) -> None:
    """The check above would see a misspelt key and a bad value."""
    analyze = require_tool("systemd-analyze")
    unit_dir = _installable_copy(tmp_path)
    good = (unit_dir / "sipcluster-sip-server@.service").read_text(encoding="utf-8")
    bad = good.replace("KillSignal=SIGTERM", "KillSignl=SIGTERM").replace(
        "Type=notify", "Type=notfy")
    (unit_dir / "broken@.service").write_text(bad, encoding="utf-8")
    problems = _verify(analyze, unit_dir, "broken@x.service")
    assert any("KillSignl" in p for p in problems)
    assert any("notfy" in p for p in problems)


@pytest.mark.parametrize("unit_name", SERVICES)
def test_security_exposure_is_low(require_tool: Any, tmp_path: Path, unit_name: str) -> None:
    """``systemd-analyze security --offline``: overall exposure at most 2.0 ("OK")."""
    analyze = require_tool("systemd-analyze")
    unit_dir = _installable_copy(tmp_path)
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", "--no-pager",
         str(unit_dir / _instance(unit_name))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("unit_name", SERVICES)
def test_lifecycle_and_sandbox_directives(
    unit_files: dict[str, Path], read_unit: Callable[[Path], Any],
    unit_values: Callable[..., list[str]], unit_name: str,
) -> None:
    unit = read_unit(unit_files[unit_name])
    for key, expected in {**LIFECYCLE, **SANDBOX}.items():
        assert unit_values(unit, "Service", key) == [expected], key
    # only the feature-server reloads (its dial plan) on SIGHUP
    reload = ["/bin/kill -HUP $MAINPID"] if unit_name in RELOADS_ON_SIGHUP else []
    assert unit_values(unit, "Service", "ExecReload") == reload
    assert unit_values(unit, "Unit", "PartOf") == ["sipcluster.target"]
    assert unit_values(unit, "Install", "WantedBy") == ["sipcluster.target"]
    assert "network-online.target" in unit_values(unit, "Unit", "After")
    # one state and runtime directory per application, below the shared ones
    name = "%i" if unit_name in TEMPLATES else "geo-dns"
    assert unit_values(unit, "Service", "StateDirectory") == [f"sipcluster/{name}"]
    assert unit_values(unit, "Service", "RuntimeDirectory") == [f"sipcluster/{name}"]


@pytest.mark.parametrize("unit_name", SERVICES)
def test_capabilities(
    unit_files: dict[str, Path], read_unit: Callable[[Path], Any],
    unit_values: Callable[..., list[str]], unit_name: str,
) -> None:
    unit = read_unit(unit_files[unit_name])
    bounding = unit_values(unit, "Service", "CapabilityBoundingSet")
    ambient = unit_values(unit, "Service", "AmbientCapabilities")
    if unit_name in BINDS_LOW_PORT:
        assert bounding == ["CAP_NET_BIND_SERVICE"]
        assert ambient == ["CAP_NET_BIND_SERVICE"]
    else:
        assert bounding == [""]  # empty: no capability at all
        assert ambient == []


@pytest.mark.parametrize("unit_name", list(TEMPLATES))
def test_template_exec_start(
    unit_files: dict[str, Path], read_unit: Callable[[Path], Any],
    unit_values: Callable[..., list[str]], unit_name: str,
) -> None:
    kind, instance = TEMPLATES[unit_name]
    unit = read_unit(unit_files[unit_name])
    (exec_start,) = unit_values(unit, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv == [INSTALLED_BINARY, kind, "--config", CONFIG, "--name", "%i"]
    assert unit_values(unit, "Service", "SyslogIdentifier") == [f"sipcluster-{kind}"]
    # the command line is one the real CLI accepts
    assert kind in command_names(), f"`sipcluster {kind}` does not exist"
    args = build_parser().parse_args([a.replace("%i", instance) for a in argv[1:]])
    assert str(args.config) == CONFIG
    assert args.name == instance


def test_geo_dns_exec_start_and_documented_options(
    unit_files: dict[str, Path], read_unit: Callable[[Path], Any],
    unit_values: Callable[..., list[str]],
) -> None:
    unit = read_unit(unit_files[GEO_DNS])
    (exec_start,) = unit_values(unit, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv == [INSTALLED_BINARY, "geo-dns", "--config", CONFIG, "$SIPCLUSTER_GEO_DNS_OPTS"]
    # the example of /etc/default/sipcluster is a valid geo-dns command line
    env = (REPO / "deploy" / "etc" / "default" / "sipcluster").read_text(encoding="utf-8")
    (example,) = re.findall(r"^#SIPCLUSTER_GEO_DNS_OPTS=(.+)$", env, re.MULTILINE)
    assert "geo-dns" in command_names()
    args = build_parser().parse_args(["geo-dns", "--config", CONFIG, *shlex.split(example)])
    assert args.listen == [("10.0.1.53", 53), ("10.0.2.53", 53)]
    assert args.http == ("127.0.0.1", 9053)


def test_target_is_wanted_by_multi_user(
    unit_files: dict[str, Path], read_unit: Callable[[Path], Any],
    unit_values: Callable[..., list[str]],
) -> None:
    target = read_unit(unit_files["sipcluster.target"])
    assert unit_values(target, "Install", "WantedBy") == ["multi-user.target"]
    assert set(unit_files) == {*SERVICES, "sipcluster.target"}


def test_environment_file() -> None:
    """/etc/default/sipcluster: plain KEY=value lines systemd reads as is."""
    text = (REPO / "deploy" / "etc" / "default" / "sipcluster").read_text(encoding="utf-8")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
        env[key] = value
    assert env["SIPCLUSTER_LOG_LEVEL"] in {"debug", "info", "warning", "error"}
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "SIPCLUSTER_GEO_DNS_OPTS" in env


def test_sysusers_and_tmpfiles_into_a_scratch_root(require_tool: Any, tmp_path: Path) -> None:
    """The sysusers.d snippet creates the `sipcluster` system user; the
    tmpfiles.d snippet then creates its directories, owned by it, and makes the
    cluster file (it holds digest passwords) readable by its group only."""
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to chown in the scratch root")
    root = tmp_path / "root"
    (root / "etc" / "sipcluster").mkdir(parents=True)
    cluster = root / "etc" / "sipcluster" / "cluster.toml"
    cluster.write_text("", encoding="utf-8")
    cluster.chmod(0o644)
    subprocess.run(
        [sysusers, f"--root={root}", str(SYSTEMD / "sysusers.d" / "sipcluster.conf")],
        check=True, capture_output=True, timeout=60,
    )
    passwd = {ln.split(":")[0]: ln.split(":") for ln in
              (root / "etc" / "passwd").read_text(encoding="utf-8").splitlines()}
    user = passwd["sipcluster"]
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000  # a system user
    assert user[5:] == ["/var/lib/sipcluster", "/usr/sbin/nologin"]
    subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "tmpfiles.d" / "sipcluster.conf")],
        check=True, capture_output=True, timeout=60,
    )
    for path in ("var/lib/sipcluster", "run/sipcluster"):
        st = (root / path).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o750), path
    st = cluster.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, gid, 0o640)
