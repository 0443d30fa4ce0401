"""``sipcluster certs``: the installation's private CA, and mutual TLS with a
role check for every daemon that needs it (guide, status aggregator: "How
Status Aggregator uses security certificates", "Generate SSL Security
Certificates").

    sipcluster certs init    [--config F | --dir DIR]          # the CA: ca.pem, ca.key
    sipcluster certs request NAME [--config F | --dir DIR]     # NAME.key + NAME.csr, on NAME's host
    sipcluster certs issue   NAME [--csr FILE] [--days N] ...  # NAME.pem signed by the CA

The files live in ``certs/`` beside the cluster file (``--dir`` to choose).
``issue NAME`` without ``--csr`` generates the key too (a lab, or the host
that runs NAME); with ``--csr`` the key never leaves the host that made the
request. A certificate names one application of the cluster file (subject
CN and a DNS subject alternative name), so a daemon knows which application
is at the other end and whether its kind may take the role it asks for
(:func:`authorize`).

TLS contexts: :func:`server_context` and :func:`client_context` both demand
a certificate from the other end, signed by this CA, valid now; TLS 1.2 at
least. The name check is :func:`authorize` after the handshake (a client
checks the server with ``expected``), not the host name: daemons are found
by address in the cluster file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import ssl
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertError",
    "add_parser",
    "authorize",
    "certs_dir_for",
    "client_context",
    "init_ca",
    "issue",
    "peer_name",
    "request",
    "run",
    "server_context",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 825


class CertError(Exception):
    """The CA or a certificate cannot be made or used; the text says why."""


def certs_dir_for(config_file: str | os.PathLike[str]) -> Path:
    """Where the certificates of the installation whose cluster file is
    ``config_file`` live: ``certs/`` beside it."""
    return Path(config_file).resolve().parent / "certs"


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, *, name: str = "sipcluster CA", days: int = CA_DAYS,
            force: bool = False) -> Path:
    """Create the CA (``ca.pem``, ``ca.key`` mode 0600); refuses to replace one
    unless ``force`` (every certificate it signed would stop being trusted)."""
    cert_path = directory / CA_CERT
    if cert_path.exists() and not force:
        raise CertError(f"{cert_path} exists: a CA is already set up (--force replaces it)")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def request(directory: Path, name: str) -> Path:
    """On the host that will use it: ``NAME.key`` (0600) and ``NAME.csr``."""
    _check_name(name)
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    _write(directory / f"{name}.key", _key_pem(key), secret=True)
    path = directory / f"{name}.csr"
    _write(path, csr.public_bytes(serialization.Encoding.PEM))
    return path


def issue(directory: Path, name: str, *, csr: Path | None = None, days: int = CERT_DAYS,
          not_before: datetime.datetime | None = None) -> Path:
    """Sign ``NAME.pem`` with the CA of ``directory``: for the key of ``csr``
    (its subject must be ``name``), else for a key generated here (``NAME.key``)."""
    _check_name(name)
    try:
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {directory} (run: sipcluster certs init)") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / CA_KEY}: not an EC key")
    if csr is not None:
        request_ = x509.load_pem_x509_csr(csr.read_bytes())
        if not request_.is_signature_valid:
            raise CertError(f"{csr}: bad signature")
        names = request_.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [name]:
            raise CertError(f"{csr}: the request is for {names[0].value if names else '?'!r}, "
                            f"not {name!r}")
        public_key = request_.public_key()
    else:
        key = _new_key()
        _write(directory / f"{name}.key", _key_pem(key), secret=True)
        public_key = key.public_key()
    start = not_before or _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    _write(path, cert.public_bytes(serialization.Encoding.PEM))
    return path


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise CertError(f"{name!r}: an application name is letters, digits, '-', '_', '.'")


# -- TLS ---------------------------------------------------------------------


def _context(purpose: ssl.Purpose, directory: Path, name: str) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else \
        ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
        context.load_verify_locations(cafile=directory / CA_CERT)
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"certificates of {name} in {directory}: {exc}") from exc
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(directory: Path, name: str) -> ssl.SSLContext:
    """The listening side: demands a client certificate signed by the CA."""
    return _context(ssl.Purpose.CLIENT_AUTH, directory, name)


def client_context(directory: Path, name: str) -> ssl.SSLContext:
    """The dialling side: presents ``name``'s certificate, verifies the server's."""
    return _context(ssl.Purpose.SERVER_AUTH, directory, name)


def peer_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The application name (subject CN) of a verified peer certificate."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return None


def authorize(
    name: str | None,
    role: str,
    kinds_of: Mapping[str, str],
    allowed: Mapping[str, Collection[str]],
    *,
    extra: Mapping[str, Collection[str]] | None = None,
) -> str | None:
    """Why the peer ``name`` may not take ``role`` (None: it may).

    ``kinds_of`` maps application names to their kind; ``allowed`` maps a role
    to the kinds that may take it; ``extra`` a role to names (not applications
    of the cluster file: operators' tools) that may take it."""
    if name is None:
        return "no client certificate"
    named = (extra or {}).get(role, ())
    if name in named:
        return None
    kind = kinds_of.get(name)
    if kind is None:
        roles = sorted(r for r, names in (extra or {}).items() if name in names)
        if roles:
            return f"{name!r} may connect as {', '.join(roles)}; role {role} is not for it"
        return f"{name!r} is not an application of the cluster file"
    kinds = allowed.get(role, ())
    if kind not in kinds:
        return f"{name!r} is a {kind}; role {role} is for {', '.join(sorted(kinds)) or 'nobody'}"
    return None


# -- command line --------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs", help="the installation's private CA and its certificates (mutual TLS)",
        description="Create the private CA and issue one certificate per application; "
                    "the files live in certs/ beside the cluster file.")
    sub = parser.add_subparsers(dest="certs_action", metavar="ACTION", required=True)

    def where(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--config", type=Path, help="the cluster file (certs/ beside it)")
        group.add_argument("--dir", type=Path, help="the certificates directory")

    init = sub.add_parser("init", help="create the CA (ca.pem, ca.key)")
    where(init)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    req = sub.add_parser("request", help="a key and a signing request, on the host that uses them")
    req.add_argument("name")
    where(req)
    iss = sub.add_parser("issue", help="sign NAME.pem (generating NAME.key unless --csr)")
    iss.add_argument("name")
    where(iss)
    iss.add_argument("--csr", type=Path, help="sign this request (its key stays where it is)")
    iss.add_argument("--days", type=int, default=CERT_DAYS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    directory = args.dir if args.dir is not None else certs_dir_for(args.config)
    try:
        if args.certs_action == "init":
            print(init_ca(directory, force=args.force))
        elif args.certs_action == "request":
            print(request(directory, args.name))
        else:
            print(issue(directory, args.name, csr=args.csr, days=args.days))
    except (CertError, OSError, ValueError) as exc:
        print(f"certs {args.certs_action}: {exc}", file=sys.stderr)
        return 1
    return 0
