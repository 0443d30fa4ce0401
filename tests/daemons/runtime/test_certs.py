"""``sipcluster certs``: the private CA, certificates issued here or from a
signing request (the key never leaves its host), and the role check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from daemons.cli import main
from daemons.runtime import certs


def subject_and_san(path: Path) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(cn), san.get_values_for_type(x509.DNSName)


def test_init_issue_and_a_signing_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    ca_dir, host_dir = tmp_path / "ca", tmp_path / "host"
    assert main(["certs", "init", "--dir", str(ca_dir)]) == 0
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert main(["certs", "init", "--dir", str(ca_dir)]) == 1  # never replaced by accident
    assert "already set up" in capsys.readouterr().err
    assert main(["certs", "issue", "SA_1", "--dir", str(ca_dir)]) == 0
    assert subject_and_san(ca_dir / "SA_1.pem") == ("SA_1", ["SA_1"])
    # the key of TC_1 is made on its host; only the request travels
    assert main(["certs", "request", "TC_1", "--dir", str(host_dir)]) == 0
    assert main(["certs", "issue", "TC_1", "--dir", str(ca_dir),
                 "--csr", str(host_dir / "TC_1.csr")]) == 0
    assert not (ca_dir / "TC_1.key").exists()
    assert subject_and_san(ca_dir / "TC_1.pem") == ("TC_1", ["TC_1"])
    # a request for another name is refused
    assert main(["certs", "issue", "TC_2", "--dir", str(ca_dir),
                 "--csr", str(host_dir / "TC_1.csr")]) == 1
    assert "not 'TC_2'" in capsys.readouterr().err
    # the issued certificate and the host's key make a working context
    (host_dir / "TC_1.pem").write_bytes((ca_dir / "TC_1.pem").read_bytes())
    (host_dir / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    assert certs.client_context(host_dir, "TC_1") is not None


def test_no_ca_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="no CA"):
        certs.issue(tmp_path, "SA_1")
    with pytest.raises(certs.CertError, match="application name"):
        certs.issue(tmp_path, "../etc/passwd")


def test_authorize_by_kind_and_listed_names() -> None:
    kinds = {"TC_1": "t-controller", "SA_2": "status-aggregator", "SIPS_1": "sip-server"}
    allowed = {"publisher": {"t-controller"}, "mirror": {"status-aggregator"},
               "consumer": {"t-controller", "status-aggregator", "sip-server"}}
    extra = {"consumer": {"desk"}}
    assert certs.authorize("TC_1", "publisher", kinds, allowed, extra=extra) is None
    assert certs.authorize("desk", "consumer", kinds, allowed, extra=extra) is None
    assert "role publisher is not for it" in str(
        certs.authorize("desk", "publisher", kinds, allowed, extra=extra))
    assert "not an application" in str(certs.authorize("eve", "consumer", kinds, allowed))
    assert "role mirror" in str(certs.authorize("SIPS_1", "mirror", kinds, allowed))
    assert certs.authorize(None, "consumer", kinds, allowed) == "no client certificate"
