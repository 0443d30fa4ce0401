"""Addresses in the cluster file are checked when it is loaded: an option that
is an address takes an IP literal, a contact may name a host but must have the
form of one. A typo is a ConfigError naming the file, the table and option, and
the value -- and the daemon started on that file says so in one line, before it
binds or resolves anything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.cluster.config import load_cluster
from daemons.runtime.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "etc" / "cluster.toml"


def _example_with(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert text.count(old) >= 1, old
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    return info.value


@pytest.mark.parametrize(
    ("old", "new", "key", "value"),
    [
        # an application's host is the address it listens on and peers send to
        ('host = "127.0.1.11"', 'host = "127.0.1.300"', "applications.SIPS_dc1_1.host",
         "127.0.1.300"),
        ('host = "127.0.1.21"', 'host = "spx1-dc1.cluster.lab"',
         "applications.SIPProxy_dc1_1.host", "spx1-dc1.cluster.lab"),
        ('host = "127.0.1.31"', 'host = "127.0.1"', "applications.FS_dc1.host", "127.0.1"),
        # where MWI SUBSCRIBEs are sent: an address too
        ("registrar-default-timeout = 140",
         'registrar-default-timeout = 140\nfeature-server-address = "127.0.1.310:5080"',
         "applications.SIPProxy_dc1_1.sipproxy.feature-server-address", "127.0.1.310"),
        ("registrar-default-timeout = 140",
         'registrar-default-timeout = 140\nfeature-server-address = "fs.cluster.lab:5080"',
         "applications.SIPProxy_dc1_1.sipproxy.feature-server-address", "fs.cluster.lab"),
        # contacts may name a host, but a mistyped dotted quad is not a name
        ('contact = "127.0.1.40:5060"', 'contact = "127.0.1.400:5060"',
         "dns.Trunk_SBC_dc1.contact", "127.0.1.400"),
        ('contact = "sip:+15550102001@127.0.1.40:5060"',
         'contact = "sip:+15550102001@127.0.1.400:5060"', "dns.2001.contact", "127.0.1.400"),
        ('contact = "sip:spx-srv.cluster.lab;transport=tcp"',
         'contact = "sip:spx-srv.cluster.lab.-bad;transport=tcp"', "dns.SIPProxy_DN.contact",
         "spx-srv.cluster.lab.-bad"),
        ('external-contact = "spx-srv.cluster.lab"', 'external-contact = "spx srv"',
         "dns.SIPProxy_DN.external-contact", "spx srv"),
    ],
)
def test_bad_address_names_file_option_and_value(
    tmp_path: Path, old: str, new: str, key: str, value: str
) -> None:
    path = _example_with(tmp_path, old, new)
    err = _error(path)
    assert (err.file, err.key) == (str(path), key)
    assert value in err.reason
    assert str(err).startswith(f"{path}: {key}: ")
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('host = "127.0.1.11"', 'host = "::1"', "SIPS_dc1_1", "::1"),
        ('contact = "127.0.1.40:5060"', 'contact = "sbc1.dc1.cluster.lab:5060"',
         "Trunk_SBC_dc1", "sbc1.dc1.cluster.lab:5060"),
        ('contact = "127.0.1.40:5060"', 'contact = "sip:[2001:db8::40]:5060"',
         "Trunk_SBC_dc1", "sip:[2001:db8::40]:5060"),
    ],
)
def test_addresses_and_names_where_allowed_load(
    tmp_path: Path, old: str, new: str, key: str, expected: str
) -> None:
    cfg = load_cluster(_example_with(tmp_path, old, new))
    if key in cfg.applications:
        assert cfg.applications[key].host == expected
    else:
        assert cfg.dns[key].contact == expected
    assert cfg.outbound_proxy is not None
    assert cfg.outbound_proxy.contact == "sip:spx-srv.cluster.lab;transport=tcp"


def _with_host(tmp_path: Path, app: str, host: str) -> Path:
    """The example file with the ``host`` of application ``app`` replaced."""
    text, count = re.subn(
        rf'(?m)(^\[applications\.{app}\]\n(?:[^\[\n].*\n|\n)*?)host = "[^"]*"',
        rf'\g<1>host = "{host}"', EXAMPLE.read_text(), count=1)
    assert count == 1, app
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("command", "app"),
    [("sip-server", "SIPS_dc1_1"), ("t-controller", "TC_dc1_1"),
     ("sip-proxy", "SIPProxy_dc1_1")],
)
def test_daemon_refuses_the_file_in_one_line(tmp_path: Path, command: str, app: str) -> None:
    """``sipcluster KIND --config F --name APP`` on a file with a mistyped
    address: exit status 2, one line naming file, option and value, no
    traceback, no lookup of the bad value."""
    path = _with_host(tmp_path, app, "127.0.1.300")
    proc = subprocess.run(
        [sys.executable, "-m", "daemons.cli", command, "--config", str(path), "--name", app,
         "--log-format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"{command}: {path}: applications.{app}.host: expected an IP address, "
        "got '127.0.1.300'"
    ]
