"""Which name servers ``sipcluster sip options`` / ``sip call`` locate a URI
with: ``--dns`` (repeat, comma lists), else the lab's DNS from ``--lab`` or
``./lab-run/lab.json``, else the system's resolver; and the address their
queries leave from (the geo-aware DNS answers by it).

The tools against a real lab: tests/interop/lab/test_lab_sip_tools.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.cli import build_parser
from daemons.tools.sip_uac import NameServerError, NameServers, name_servers

ROOT = Path(__file__).resolve().parents[2]
LAB_DNS = {"host": "127.0.1.53", "port": 5300, "http_port": 9053}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["sip", *argv])


def write_lab(directory: Path, dns: object = LAB_DNS) -> Path:
    """A lab directory as ``sipcluster lab`` leaves it: lab.json with its DNS."""
    directory.mkdir(parents=True)
    path = directory / "lab.json"
    path.write_text(json.dumps({"srv_fqdn": "spx-srv.cluster.lab", "domain": "cluster.lab",
                                "dns": dns, "data_centres": {}, "accounts": []}))
    return path


def test_dns_repeated_and_comma_lists(tmp_path: Path) -> None:
    args = parse("options", "sip:spx-srv.cluster.lab", "--dns", "127.0.1.53:5300,127.0.2.53:5300",
                 "--dns", "[::1]:5353", "--dns", "192.0.2.1")
    found = name_servers(args, cwd=tmp_path)
    assert found.servers == (("127.0.1.53", 5300), ("127.0.2.53", 5300), ("::1", 5353),
                             ("192.0.2.1", 53))
    assert found.origin == "--dns"


@pytest.mark.parametrize("value", ["ns.cluster.lab:53", "127.0.1.53:0", "127.0.1.53:70000",
                                   "127.0.1.53:5300,", "127.0.1.53:x"])
def test_dns_refuses_what_is_not_an_address_and_port(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("call", "sip:1002@cluster.lab", "--dns", value)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dns: " in err
    assert "expected HOST:PORT with an IP address" in err or "port out of range" in err


def test_lab_run_in_the_current_directory_is_the_default(tmp_path: Path) -> None:
    write_lab(tmp_path / "lab-run")
    found = name_servers(parse("options", "sip:spx-srv.cluster.lab"), cwd=tmp_path)
    assert found.servers == (("127.0.1.53", 5300),)
    assert found.origin == str(tmp_path / "lab-run" / "lab.json")


def test_dns_wins_over_the_lab(tmp_path: Path) -> None:
    write_lab(tmp_path / "lab-run")
    args = parse("options", "sip:spx-srv.cluster.lab", "--dns", "127.0.2.53:5300",
                 "--lab", str(tmp_path / "lab-run"))
    assert name_servers(args, cwd=tmp_path).servers == (("127.0.2.53", 5300),)


@pytest.mark.parametrize("given", ["lab.json", "."])
def test_lab_option_takes_the_file_or_its_directory(tmp_path: Path, given: str) -> None:
    path = write_lab(tmp_path / "elsewhere", {"host": "127.0.7.53", "port": 5301})
    args = parse("call", "sip:1002@cluster.lab", "--lab", str(path.parent / given))
    found = name_servers(args, cwd=tmp_path)
    assert found.servers == (("127.0.7.53", 5301),)


def test_no_lab_here_means_the_system_resolver(tmp_path: Path) -> None:
    found = name_servers(parse("options", "sip:spx-srv.cluster.lab"), cwd=tmp_path)
    assert found == NameServers(None, "system")
    assert found.resolver("127.0.0.1").source is None


def test_a_lab_without_dns_is_skipped_unless_named(tmp_path: Path) -> None:
    write_lab(tmp_path / "lab-run", dns=None)
    assert name_servers(parse("options", "sip:x.lab"), cwd=tmp_path).servers is None
    with pytest.raises(NameServerError, match="names no DNS server"):
        name_servers(parse("options", "sip:x.lab", "--lab", str(tmp_path / "lab-run")),
                     cwd=tmp_path)


def test_a_missing_lab_is_an_error_on_the_command_line(tmp_path: Path) -> None:
    """Exit 2 and one line naming the file; nothing is sent."""
    result = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "sip", "options", "sip:spx-srv.cluster.lab",
         "--lab", str(tmp_path / "nowhere" / "lab.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"sip options: cannot read {tmp_path / 'nowhere'}/lab.json")


@pytest.mark.parametrize(
    ("bind", "servers", "source"),
    [
        # in a data centre: the geo-aware DNS answers with that data centre's view
        ("127.0.2.100", (("127.0.1.53", 5300),), "127.0.2.100"),
        ("127.0.0.1", (("127.0.1.53", 5300),), "127.0.0.1"),
        # a wildcard is no address; a loopback source cannot reach another host
        ("0.0.0.0", (("127.0.1.53", 5300),), None),
        ("127.0.0.1", (("192.0.2.53", 53),), None),
        ("::1", (("127.0.1.53", 5300),), None),
        ("192.0.2.10", (("192.0.2.53", 53), ("127.0.0.53", 53)), "192.0.2.10"),
    ],
)
def test_queries_leave_from_the_bound_address(
    bind: str, servers: tuple[tuple[str, int], ...], source: str | None
) -> None:
    assert NameServers(servers, "--dns").resolver(bind).source == source


def test_a_lab_json_with_a_bad_dns_entry_is_an_error(tmp_path: Path) -> None:
    write_lab(tmp_path / "lab", {"host": "ns.cluster.lab", "port": 5300})
    with pytest.raises(NameServerError, match="expected HOST:PORT with an IP address"):
        name_servers(parse("options", "sip:x.lab", "--lab", str(tmp_path / "lab")),
                     cwd=tmp_path)
