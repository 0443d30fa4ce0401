"""``sipcluster sip lint``: print a message normalised, validate it, exit 0/1."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.tools import sip_lint

ROOT = Path(__file__).resolve().parents[2]
TORTURE = ROOT / "tests" / "data" / "conformance"

GOOD = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP host.example.com;branch=z9hG4bK1\r\n"
    b"max-forwards: 70\r\nt: <sip:bob@example.com>\r\nf: <sip:alice@example.com>;tag=1\r\n"
    b"i: abc@host\r\nCSEQ: 7 OPTIONS\r\nl: 0\r\n\r\n"
)


def lint(data: bytes, *extra: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sip_lint.add_parser(sub)
    args = parser.parse_args(["lint", "-", *extra])
    out, err = io.StringIO(), io.StringIO()
    code = args.run(args, stdin=io.BytesIO(data), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_valid_message_prints_normalised_headers() -> None:
    code, out, err = lint(GOOD)
    assert code == 0
    assert out.splitlines() == [
        "OPTIONS sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bK1",
        "Max-Forwards: 70",
        "To: <sip:bob@example.com>",
        "From: <sip:alice@example.com>;tag=1",
        "Call-ID: abc@host",
        "CSeq: 7 OPTIONS",
        "Content-Length: 0",
    ]
    assert err == ""


def test_invalid_message_reports_reason_and_status() -> None:
    code, out, err = lint(GOOD.replace(b"CSEQ: 7 OPTIONS", b"CSEQ: 7 INVITE"))
    assert code == 1
    assert "CSeq method INVITE does not match OPTIONS" in err
    assert "a server would answer: 400 Bad Request" in err
    assert out.startswith("OPTIONS sip:bob@example.com SIP/2.0\n")


def test_unparseable_message() -> None:
    code, out, err = lint(b"OPTIONS sip:bob@example.com SIP/3.0\r\n\r\n")
    assert (code, out) == (1, "")
    assert "505 Version Not Supported" in err


def test_lf_only_input_is_converted_and_said_so() -> None:
    code, out, err = lint(GOOD.replace(b"\r\n", b"\n"))
    assert code == 0
    assert "LF line endings" in err
    assert "Call-ID: abc@host" in out


def test_rfc2543_flag() -> None:
    data = GOOD.replace(b"max-forwards: 70\r\n", b"")
    assert lint(data)[0] == 1
    assert lint(data, "--rfc2543")[0] == 0


def test_missing_file(tmp_path: Path) -> None:
    args = argparse.Namespace(file=str(tmp_path / "nope.sip"), rfc2543=False, max_size=65536)
    err = io.StringIO()
    assert sip_lint.run(args, stdout=io.StringIO(), stderr=err) == 1
    assert "cannot read" in err.getvalue()


@pytest.mark.parametrize(("name", "code", "needle"), [
    ("rfc4475/wsinv.dat", 0, "Newfangledheader"),
    ("rfc4475/baddn.dat", 1, "400 Bad Request"),
    ("rfc5118/ipv6-good.dat", 0, "LF line endings"),
])
def test_as_a_module(name: str, code: int, needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "daemons.tools.sip_lint", str(TORTURE / name)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == code
    assert needle.lower() in (proc.stdout + proc.stderr).lower()
