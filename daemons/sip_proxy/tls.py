"""The SIP Proxy's TLS listener settings: ``sip-tls-port`` and the
``[sipproxy]`` options ``tls-cert``, ``tls-key``, ``tls-ca`` (docs/sip-proxy.md,
RFC 3261 §26.2, RFC 5630, RFC 5922).

:func:`proxy_tls_context` reads them at load and refuses what cannot serve
with a :class:`~daemons.runtime.config.ConfigError` naming the option and the
file: a missing or unreadable file, a file that holds no PEM certificate or no
private key, a key that does not belong to the certificate, a CA file with no
certificate. Without ``tls-cert``/``tls-key`` the proxy uses the
installation's certificate of its application name (``certs/NAME.pem`` and
``NAME.key`` beside the cluster file, ``sipcluster certs issue NAME``).

Phones rarely carry certificates: a client certificate is asked for, not
required (``CERT_OPTIONAL``); one that is shown must come from the CA of
``tls-ca`` (default: ``certs/ca.pem`` when it exists), else the handshake is
refused, logged and counted (``sip_tls_refused_total{reason="unknown_ca"}``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from daemons.cluster.config import Application, ClusterConfig
from daemons.runtime.certs import CA_CERT, certs_dir_for
from daemons.runtime.config import ConfigError

__all__ = ["TlsFiles", "proxy_tls_context", "tls_files"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a proxy's certificate, key and client CA come from, and the option
    that names each (for error messages)."""

    cert: Path
    key: Path
    ca: Path | None
    cert_key: str
    key_key: str
    ca_key: str


def tls_files(cfg: ClusterConfig, app: Application) -> TlsFiles | None:
    """The files of ``app``'s TLS listener; None when it has no ``sip-tls-port``.
    Relative paths are taken from the cluster file's directory."""
    if app.port("sip-tls-port") is None:
        return None
    base = Path(cfg.file).resolve().parent
    certs = certs_dir_for(cfg.file)
    opts = app.options
    prefix = f"applications.{app.name}.sipproxy"

    def path(option: str, default: Path | None) -> tuple[Path | None, str]:
        value = opts.get(option)
        if value:
            return base / str(value), f"{prefix}.{option}"
        return default, f"applications.{app.name}.sip-tls-port"

    cert, cert_key = path("tls-cert", certs / f"{app.name}.pem")
    key, key_key = path("tls-key", certs / f"{app.name}.key")
    ca_default = certs / CA_CERT
    ca, ca_key = path("tls-ca", ca_default if ca_default.exists() else None)
    assert cert is not None and key is not None
    return TlsFiles(cert, key, ca, cert_key=cert_key, key_key=key_key, ca_key=ca_key)


def _read(file: str, key: str, path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        hint = "" if key.endswith(("tls-cert", "tls-key", "tls-ca")) else \
            " (set tls-cert/tls-key in [sipproxy], or run: sipcluster certs issue NAME)"
        raise ConfigError(file, key, f"{what} {path} does not exist{hint}") from exc
    except OSError as exc:
        raise ConfigError(file, key, f"{what} {path}: {exc.strerror or exc}") from exc


def proxy_tls_context(cfg: ClusterConfig, app: Application) -> ssl.SSLContext | None:
    """The server context of ``app``'s TLS listener (TLS 1.2 at least), checked
    file by file; None without ``sip-tls-port``. Raises
    :class:`~daemons.runtime.config.ConfigError`."""
    files = tls_files(cfg, app)
    if files is None:
        return None
    file = cfg.file
    cert_pem = _read(file, files.cert_key, files.cert, "certificate")
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ConfigError(file, files.cert_key,
                          f"{files.cert} holds no PEM certificate ({exc})") from exc
    key_pem = _read(file, files.key_key, files.key, "private key")
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(file, files.key_key,
                          f"{files.key} holds no usable PEM private key "
                          f"(unencrypted PKCS#8, PKCS#1 or SEC1): {exc}") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        reason = "the private key does not match the certificate" \
            if "mismatch" in str(exc).lower() else str(exc)
        raise ConfigError(file, files.key_key, f"{files.key} and {files.cert}: {reason}") from exc
    if files.ca is not None:
        _read(file, files.ca_key, files.ca, "CA file")
        try:
            context.load_verify_locations(cafile=files.ca)
        except ssl.SSLError as exc:
            raise ConfigError(file, files.ca_key,
                              f"{files.ca} holds no PEM CA certificate ({exc})") from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
