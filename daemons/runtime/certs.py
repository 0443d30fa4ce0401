"""``sipcluster certs``: the installation's private CA, and mutual TLS with a
role check for every daemon that needs it (guide, status aggregator: "How
Status Aggregator uses security certificates", "Generate SSL Security
Certificates").

    sipcluster certs init    [--config F | --dir DIR]          # the CA: ca.pem, ca.key
    sipcluster certs request NAME [--config F | --dir DIR]     # NAME.key + NAME.csr, on NAME's host
    sipcluster certs issue   NAME [--csr FILE] [--days N] [--san NAME|ADDRESS ...]  # NAME.pem

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
import asyncio
import datetime
import ipaddress
import os
import ssl
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertError",
    "TlsAcceptor",
    "TlsTransport",
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
          not_before: datetime.datetime | None = None, dns_names: Sequence[str] = (),
          ip_addresses: Sequence[str] = ()) -> Path:
    """Sign ``NAME.pem`` with the CA of ``directory``: for the key of ``csr``
    (its subject must be ``name``), else for a key generated here (``NAME.key``).

    ``dns_names`` and ``ip_addresses`` are more subject alternative names, for
    a server that clients check by the name they dialled (a SIP Proxy: the SIP
    domain, the SRV name and its host names, RFC 5922 §7.2)."""
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
        # an address is also written as a DNS name: mbed TLS (linphone's TLS) matches
        # the host it dialled against DNS names only
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dict.fromkeys([name, *dns_names, *ip_addresses])]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    _write(path, cert.public_bytes(serialization.Encoding.PEM))
    return path


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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


# -- accepting -----------------------------------------------------------------

#: seconds a new connection has to complete its TLS handshake
HANDSHAKE_TIMEOUT = 10.0
_READ_SIZE = 256 * 1024


def refusal_reason(exc: BaseException) -> str:
    """A bounded label for a refused handshake (metrics, log lines)."""
    text = str(exc).lower()
    for needle, reason in (("expired", "certificate_expired"),
                           ("unknown ca", "unknown_ca"),
                           ("certificate verify failed", "certificate_verify_failed"),
                           ("peer did not return a certificate", "no_certificate"),
                           ("certificate required", "no_certificate"),
                           ("wrong version number", "not_tls"),
                           ("http request", "not_tls"),
                           ("record layer failure", "not_tls"),
                           ("unexpected eof", "eof")):
        if needle in text:
            return reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__.lower()


class TlsTransport(asyncio.WriteTransport):
    """The application side of one accepted TLS connection: what is written is
    encrypted onto the TCP transport under it."""

    def __init__(self, acceptor: TlsAcceptor) -> None:
        super().__init__()
        self._acceptor = acceptor

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._acceptor.send(bytes(data))

    def is_closing(self) -> bool:
        return self._acceptor.closing

    def get_write_buffer_size(self) -> int:
        return self._acceptor.write_buffer_size()

    def close(self) -> None:
        self._acceptor.close()

    def abort(self) -> None:
        self._acceptor.close(abort=True)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._acceptor.extra_info(name, default)


class TlsAcceptor(asyncio.Protocol):
    """Server side of a mutual-TLS connection, the TLS done here in memory
    (``ssl.SSLObject`` over two ``MemoryBIO``), so that a refused handshake
    (foreign CA, no or expired certificate, plaintext) is the daemon's to log
    and count: asyncio's own TLS server drops it without a word.

    ``on_refused(peer, reason, error)`` runs for a failed handshake;
    ``on_open(transport, peer, name)`` once the peer is verified (``name`` is
    its certificate's application name) and returns ``(on_data, on_lost)``
    callbacks for the application bytes and the end of the connection.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        on_open: Callable[[TlsTransport, str, str | None],
                          tuple[Callable[[bytes], None], Callable[[], None]]],
        on_refused: Callable[[str, str, str], None],
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._context = context
        self._on_open = on_open
        self._on_refused = on_refused
        self._handshake_timeout = handshake_timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self.peer = "?"
        self.closing = False

    @property
    def established(self) -> bool:
        """True once the handshake has succeeded."""
        return self._on_data is not None

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        address = transport.get_extra_info("peername")
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self._sslobj = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timer = asyncio.get_running_loop().call_later(
            self._handshake_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.closing or self._sslobj is None:
            return
        self._incoming.write(data)
        if self._on_data is None and not self._handshake():
            return
        chunks = []
        while True:
            try:
                chunk = self._sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:
                self.close(abort=True)
                break
            if not chunk:  # the peer's close_notify
                self.close()
                break
            chunks.append(chunk)
        self._flush()
        if chunks and self._on_data is not None:
            self._on_data(b"".join(chunks))

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    # -- the handshake ----------------------------------------------------------
    def _handshake(self) -> bool:
        assert self._sslobj is not None
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            self._refuse(refusal_reason(exc), str(exc))
            return False
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        name = peer_name(self._sslobj)
        self._on_data, self._on_lost = self._on_open(TlsTransport(self), self.peer, name)
        return True

    def _timed_out(self) -> None:
        self._timer = None
        if self._on_data is None and not self.closing:
            self._refuse("timeout", f"no TLS handshake in {self._handshake_timeout:g} s")

    def _refuse(self, reason: str, error: str) -> None:
        self._on_refused(self.peer, reason, error)
        self.close()  # the TLS alert goes out first

    # -- output -------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.closing or self._sslobj is None:
            return
        view = memoryview(data)
        while view:
            written = self._sslobj.write(view)
            view = view[written:]
        self._flush()

    def _flush(self) -> None:
        out = self._outgoing.read()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def close(self, *, abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        if self._sslobj is not None and self._on_data is not None and not abort:
            try:
                self._sslobj.unwrap()
            except ssl.SSLError:
                pass
            self._flush()
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()

    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        if self._transport is None:
            return 0
        return self._transport.get_write_buffer_size() + self._outgoing.pending

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "peercert" and self._sslobj is not None:
            return self._sslobj.getpeercert()
        if self._transport is not None:
            return self._transport.get_extra_info(name, default)
        return default


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
    iss.add_argument("--san", action="append", default=[], metavar="NAME|ADDRESS",
                     help="one more subject alternative name, a DNS name or an IP address "
                          "(repeat; a SIP Proxy's: the SIP domain, the SRV name, its address)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    directory = args.dir if args.dir is not None else certs_dir_for(args.config)
    try:
        if args.certs_action == "init":
            print(init_ca(directory, force=args.force))
        elif args.certs_action == "request":
            print(request(directory, args.name))
        else:
            sans: list[str] = args.san
            addresses = [n for n in sans if _is_address(n)]
            names = [n for n in sans if not _is_address(n)]
            print(issue(directory, args.name, csr=args.csr, days=args.days, dns_names=names,
                        ip_addresses=addresses))
    except (CertError, OSError, ValueError) as exc:
        print(f"certs {args.certs_action}: {exc}", file=sys.stderr)
        return 1
    return 0
