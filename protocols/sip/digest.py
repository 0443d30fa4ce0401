"""SIP digest authentication, both sides, sans-I/O.

Implements the Digest scheme as SIP uses it: RFC 3261 §22 (challenge and
answer, WWW-Authenticate / Proxy-Authenticate and Authorization /
Proxy-Authorization), with the algorithms and hashing rules of RFC 7616 §3.4
(MD5, MD5-sess, SHA-256, SHA-256-sess) that RFC 8760 brings to SIP, and the
auth-param grammar of RFC 3261 §25.1 / RFC 7235 §2.1.

The module works on header *values* (the text after ``WWW-Authenticate:``),
never on whole messages, so it needs nothing from the message model.

* :func:`parse_challenge` / :class:`DigestChallenge` and
  :func:`parse_credentials` / :class:`DigestCredentials` parse and serialise.
* :class:`DigestClient` answers challenges (UAC side): picks the strongest
  supported challenge (RFC 8760 §2.4), counts nonces (RFC 7616 §3.4 ``nc``),
  draws cnonces from an injectable source.
* :class:`DigestAuthenticator` challenges and verifies (UAS / registrar side):
  stateless HMAC-signed nonces with a lifetime, ``stale=true`` answers,
  nonce-count replay protection with bounded state, constant-time compares.

Time is always passed in as ``now`` (seconds). For nonces that must stay valid
across a restart or be verified by another node holding the same secret, pass
wall-clock seconds; within one process any steady clock works.
"""

from __future__ import annotations

import base64
import enum
import fnmatch
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from protocols.sip.errors import ParseError

__all__ = [
    "ALGORITHMS",
    "LEGACY_USER_AGENTS",
    "AlgorithmPolicy",
    "AuthFailure",
    "AuthResult",
    "DigestAuthenticator",
    "DigestChallenge",
    "DigestClient",
    "DigestCredentials",
    "DigestError",
    "compute_ha1",
    "compute_response",
    "make_credentials",
    "parse_auth_params",
    "parse_challenge",
    "parse_credentials",
    "select_challenge",
]


class DigestError(ParseError, ValueError):
    """A malformed or unusable digest header value (RFC 3261 §22, §25.1).

    A :class:`~protocols.sip.errors.ParseError` (status 400) so a server can
    answer a request carrying such a header like any other malformed one.
    """


# ---------------------------------------------------------------------------
# Algorithms (RFC 7616 §3.2 / §6.1, RFC 8760 §2)
# ---------------------------------------------------------------------------

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}

#: Supported algorithm tokens, strongest first (RFC 8760 §2.4 preference).
ALGORITHMS: tuple[str, ...] = ("SHA-256-sess", "SHA-256", "MD5-sess", "MD5")

_STRENGTH = {name: len(ALGORITHMS) - i for i, name in enumerate(ALGORITHMS)}
_CANONICAL = {name.lower(): name for name in ALGORITHMS}
_HEX_LEN = {"MD5": 32, "SHA-256": 64}


def _canonical_algorithm(token: str) -> str:
    """Algorithm tokens compare case-insensitively (RFC 7616 §3.3)."""
    return _CANONICAL.get(token.lower(), token)


def _base_algorithm(algorithm: str) -> str:
    """``SHA-256-sess`` -> ``SHA-256``; raises for an unsupported token."""
    base = algorithm[:-5] if algorithm.endswith("-sess") else algorithm
    if algorithm not in _STRENGTH or base not in _HASHES:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return base


def _b(text: str) -> bytes:
    """UTF-8 bytes of a header text; lone surrogates from undecodable bytes survive."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def _h(algorithm: str, text: str) -> str:
    return _HASHES[_base_algorithm(algorithm)](_b(text))


# ---------------------------------------------------------------------------
# auth-param grammar (RFC 3261 §25.1, RFC 7235 §2.1)
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_WS = " \t\r\n"
# An unquoted value: RFC 3261 allows a token; servers in the field also send
# nonces with "/", "=" and ":" unquoted, so any visible character that cannot
# end the element is accepted.
_BARE_VALUE_RE = re.compile(r"[^\s,\"\\]+")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote (RFC 3261 §25.1)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(out), pos + 1
        if ch == "\\":
            if pos + 1 >= len(text):
                break
            nxt = text[pos + 1]
            if nxt in "\r\n":
                raise DigestError("line break in quoted-pair")
            out.append(nxt)
            pos += 2
            continue
        if ch in "\r\n\x00":
            raise DigestError("control character in quoted-string")
        out.append(ch)
        pos += 1
    raise DigestError("unterminated quoted-string")


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``Scheme name=value, name="quoted"`` into the scheme and its params.

    Parameter names are lower-cased (they are case-insensitive, RFC 7616
    §3.3); quoted values are unescaped. Empty list elements (``a=1,,b=2``) are
    tolerated as RFC 7230 §7 allows. Raises :class:`DigestError` on anything
    else that does not fit the grammar, including a repeated parameter.
    """
    if not isinstance(value, str):
        raise DigestError("header value must be a str")
    pos = _skip_ws(value, 0)
    match = _TOKEN_RE.match(value, pos)
    if match is None:
        raise DigestError("missing authentication scheme")
    scheme = match.group(0)
    pos = match.end()
    if pos < len(value) and value[pos] not in _WS:
        raise DigestError("authentication scheme must be followed by whitespace")
    params: dict[str, str] = {}
    while True:
        pos = _skip_ws(value, pos)
        if pos >= len(value):
            break
        if value[pos] == ",":
            pos += 1
            continue
        match = _TOKEN_RE.match(value, pos)
        if match is None:
            raise DigestError(f"bad auth-param name at offset {pos}")
        name = match.group(0).lower()
        pos = _skip_ws(value, match.end())
        if pos >= len(value) or value[pos] != "=":
            raise DigestError(f"auth-param {name!r} has no value")
        pos = _skip_ws(value, pos + 1)
        if pos < len(value) and value[pos] == '"':
            param_value, pos = _read_quoted(value, pos)
        else:
            match = _BARE_VALUE_RE.match(value, pos)
            if match is None:
                raise DigestError(f"auth-param {name!r} has an empty value")
            param_value, pos = match.group(0), match.end()
        if name in params:
            raise DigestError(f"auth-param {name!r} repeated")
        params[name] = param_value
        pos = _skip_ws(value, pos)
        if pos < len(value) and value[pos] != ",":
            raise DigestError(f"expected ',' at offset {pos}")
    if not params:
        raise DigestError("no auth-params")
    return scheme, params


def _quote(text: str) -> str:
    """quoted-string with ``"`` and ``\\`` escaped (RFC 3261 §25.1 quoted-pair)."""
    if any(ch in "\r\n\x00" for ch in text):
        raise DigestError("control character cannot be sent in a quoted-string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_token(text: str, what: str) -> str:
    if not _TOKEN_RE.fullmatch(text):
        raise DigestError(f"{what} {text!r} is not a token")
    return text


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise DigestError(f"{name} must be true or false, not {text!r}")


_CHALLENGE_KNOWN = {"realm", "nonce", "algorithm", "qop", "opaque", "stale", "domain", "userhash"}
_CREDENTIALS_KNOWN = {
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "cnonce",
    "opaque",
    "qop",
    "nc",
    "userhash",
}


# ---------------------------------------------------------------------------
# Challenge (RFC 3261 §22.1/§25.1 challenge, RFC 7616 §3.3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestChallenge:
    """A parsed ``Digest`` challenge (WWW-Authenticate / Proxy-Authenticate value).

    ``algorithm`` holds the canonical spelling for supported algorithms and the
    token as received otherwise (RFC 8760 §2.4: such a challenge is ignored).
    ``qop`` lists the offered qop-options, lower-cased, empty when absent
    (RFC 2069 compatibility, RFC 3261 §22.4).
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    userhash: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def supported(self) -> bool:
        """True when this side can compute answers for the algorithm and qop."""
        if self.algorithm not in _STRENGTH:
            return False
        if self.qop and not {"auth", "auth-int"} & set(self.qop):
            return False
        return bool(self.qop) or not self.algorithm.endswith("-sess")

    @property
    def strength(self) -> int:
        """Rank used to pick among several challenges; 0 for unsupported ones."""
        return _STRENGTH[self.algorithm] if self.supported else 0

    def serialize(self) -> str:
        """Header value; realm/nonce/opaque/domain/qop quoted, others tokens (RFC 7616 §3.3)."""
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={_check_token(self.algorithm, 'algorithm')}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.userhash:
            parts.append("userhash=true")
        parts.extend(f"{_check_token(k, 'param')}={_quote(v)}" for k, v in self.extra)
        return "Digest " + ", ".join(parts)

    def __str__(self) -> str:
        return self.serialize()


def parse_challenge(value: str) -> DigestChallenge:
    """Parse one WWW-Authenticate / Proxy-Authenticate value (RFC 3261 §25.1 challenge)."""
    scheme, params = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge: {scheme!r}")
    try:
        realm = params["realm"]
        nonce = params["nonce"]
    except KeyError as exc:
        raise DigestError(f"challenge lacks {exc.args[0]}") from None
    qop: tuple[str, ...] = ()
    if "qop" in params:
        qop = tuple(q.strip().lower() for q in params["qop"].split(",") if q.strip())
        if not qop:
            raise DigestError("empty qop-options")
        for option in qop:
            _check_token(option, "qop-value")
    return DigestChallenge(
        realm=realm,
        nonce=nonce,
        algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
        qop=qop,
        opaque=params.get("opaque"),
        stale=_parse_bool("stale", params["stale"]) if "stale" in params else False,
        domain=params.get("domain"),
        userhash=_parse_bool("userhash", params["userhash"]) if "userhash" in params else False,
        extra=tuple((k, v) for k, v in params.items() if k not in _CHALLENGE_KNOWN),
    )


def select_challenge(values: Iterable[str]) -> DigestChallenge:
    """Pick the challenge to answer among several header values (RFC 8760 §2.4).

    Values that are not Digest, are malformed, or use an unsupported
    algorithm or qop are skipped. The strongest algorithm wins (SHA-256 before
    MD5); among equals the first listed wins, which is the server's preference.
    Raises :class:`DigestError` when nothing usable is offered.
    """
    best: DigestChallenge | None = None
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if challenge.strength and (best is None or challenge.strength > best.strength):
            best = challenge
    if best is None:
        raise DigestError("no supported Digest challenge offered")
    return best


# ---------------------------------------------------------------------------
# Credentials (RFC 3261 §22.2/§25.1 credentials, RFC 7616 §3.4)
# ---------------------------------------------------------------------------

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


@dataclass(frozen=True)
class DigestCredentials:
    """A parsed ``Digest`` answer (Authorization / Proxy-Authorization value).

    ``algorithm`` is None when the parameter was absent (which means MD5,
    RFC 7616 §3.4); ``nc`` is the nonce-count as an int.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None
    userhash: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def effective_algorithm(self) -> str:
        return self.algorithm if self.algorithm is not None else "MD5"

    def serialize(self) -> str:
        """Header value; quoting as RFC 7616 §3.4 requires (algorithm, qop, nc unquoted)."""
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={_check_token(self.algorithm, 'algorithm')}")
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={_check_token(self.qop, 'qop')}")
        if self.nc is not None:
            if not 0 <= self.nc <= 0xFFFFFFFF:
                raise DigestError("nonce-count out of range")
            parts.append(f"nc={self.nc:08x}")
        if self.userhash:
            parts.append("userhash=true")
        parts.extend(f"{_check_token(k, 'param')}={_quote(v)}" for k, v in self.extra)
        return "Digest " + ", ".join(parts)

    def __str__(self) -> str:
        return self.serialize()


def parse_credentials(value: str) -> DigestCredentials:
    """Parse one Authorization / Proxy-Authorization value (RFC 3261 §25.1 credentials).

    Checks the structure only (required params present, nc is 8 hex digits,
    response is hex, cnonce and nc present exactly when qop is); whether the
    answer is right is :meth:`DigestAuthenticator.verify`'s business.
    """
    scheme, params = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not Digest credentials: {scheme!r}")
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestError(f"credentials lack {required}")
    response = params["response"]
    if not _HEX_RE.fullmatch(response):
        raise DigestError("response is not hex")
    qop = params["qop"].lower() if "qop" in params else None
    if qop is not None:
        _check_token(qop, "qop")
    nc: int | None = None
    if "nc" in params:
        if not _NC_RE.fullmatch(params["nc"]):
            raise DigestError("nc must be 8 hex digits")
        nc = int(params["nc"], 16)
    cnonce = params.get("cnonce")
    if qop is not None and (nc is None or cnonce is None):
        raise DigestError("qop requires cnonce and nc")
    if qop is None and nc is not None:
        raise DigestError("nc without qop")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response.lower(),
        algorithm=_canonical_algorithm(params["algorithm"]) if "algorithm" in params else None,
        cnonce=cnonce,
        opaque=params.get("opaque"),
        qop=qop,
        nc=nc,
        userhash=_parse_bool("userhash", params["userhash"]) if "userhash" in params else False,
        extra=tuple((k, v) for k, v in params.items() if k not in _CREDENTIALS_KNOWN),
    )


# ---------------------------------------------------------------------------
# Hash computation (RFC 7616 §3.4.1-§3.4.3, RFC 3261 §22.4)
# ---------------------------------------------------------------------------


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), the value a registrar may store instead of passwords.

    ``algorithm`` may be a -sess variant; the stored value is the same as for
    the base algorithm (RFC 7616 §3.4.2), the session part is added per request.
    """
    return _h(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    *,
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value for a request (RFC 7616 §3.4.1-§3.4.3).

    ``ha1`` is H(username:realm:password) for the base algorithm. Without qop
    the RFC 2069 form H(HA1:nonce:HA2) is used (RFC 3261 §22.4 keeps it).
    """
    base = _base_algorithm(algorithm)
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise DigestError(f"{algorithm} requires a cnonce")
        ha1 = _h(base, f"{ha1}:{nonce}:{cnonce}")
    if qop is None:
        a2 = f"{method}:{uri}"
        return _h(base, f"{ha1}:{nonce}:{_h(base, a2)}")
    if qop == "auth":
        a2 = f"{method}:{uri}"
    elif qop == "auth-int":
        a2 = f"{method}:{uri}:{_HASHES[base](body)}"
    else:
        raise DigestError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise DigestError("qop requires nc and cnonce")
    return _h(base, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{_h(base, a2)}")


def _choose_qop(offered: tuple[str, ...]) -> str | None:
    """qop=auth when offered, else auth-int (RFC 7616 §3.3 qop)."""
    if not offered:
        return None
    if "auth" in offered:
        return "auth"
    if "auth-int" in offered:
        return "auth-int"
    raise DigestError(f"no supported qop in {offered!r}")


def make_credentials(
    challenge: DigestChallenge,
    *,
    username: str,
    method: str,
    uri: str,
    password: str | None = None,
    ha1: str | None = None,
    body: bytes = b"",
    cnonce: str | None = None,
    nc: int = 1,
) -> DigestCredentials:
    """Answer ``challenge`` deterministically (RFC 7616 §3.4, RFC 3261 §22.2-§22.3).

    Give ``password`` or the precomputed ``ha1`` for the challenge's base
    algorithm. ``cnonce`` is required when the challenge offers qop or uses a
    -sess algorithm. With ``userhash=true`` the username sent is
    H(username:realm) (RFC 7616 §3.4.4).
    """
    if not challenge.supported:
        raise DigestError(
            f"cannot answer algorithm {challenge.algorithm!r} / qop {challenge.qop!r}"
        )
    algorithm = challenge.algorithm
    base = _base_algorithm(algorithm)
    if ha1 is None:
        if password is None:
            raise DigestError("password or ha1 required")
        ha1 = compute_ha1(base, username, challenge.realm, password)
    elif len(ha1) != _HEX_LEN[base] or not _HEX_RE.fullmatch(ha1):
        raise DigestError(f"ha1 is not a {base} hex digest")
    qop = _choose_qop(challenge.qop)
    if (qop is not None or algorithm.endswith("-sess")) and cnonce is None:
        raise DigestError("cnonce required")
    response = compute_response(
        algorithm=algorithm,
        ha1=ha1.lower(),
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc if qop is not None else None,
        cnonce=cnonce,
        body=body,
    )
    sent_username = _h(base, f"{username}:{challenge.realm}") if challenge.userhash else username
    return DigestCredentials(
        username=sent_username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce if qop is not None or algorithm.endswith("-sess") else None,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc if qop is not None else None,
        userhash=challenge.userhash,
    )


def _default_cnonce() -> str:
    return os.urandom(16).hex()


class DigestClient:
    """UAC side: answers challenges for one account (RFC 3261 §22.2, §22.3).

    Keeps a nonce-count per (realm, nonce) so a reused nonce gets nc=2, 3 ...
    (RFC 7616 §3.4). The table is bounded (oldest nonces forgotten first).
    ``ha1`` maps a base algorithm (``"MD5"``, ``"SHA-256"``) to the stored
    H(username:realm:password); challenges for algorithms with neither a
    password nor an HA1 are not chosen.
    """

    def __init__(
        self,
        username: str,
        *,
        password: str | None = None,
        ha1: Mapping[str, str] | None = None,
        cnonce_factory: Callable[[], str] = _default_cnonce,
        max_nonces: int = 64,
    ) -> None:
        if password is None and not ha1:
            raise DigestError("password or ha1 required")
        self.username = username
        self._password = password
        self._ha1 = dict(ha1 or {})
        self._cnonce_factory = cnonce_factory
        self._max_nonces = max_nonces
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def can_answer(self, challenge: DigestChallenge) -> bool:
        if not challenge.supported:
            return False
        return self._password is not None or _base_algorithm(challenge.algorithm) in self._ha1

    def choose(self, values: Iterable[str]) -> DigestChallenge:
        """The strongest answerable challenge among header values (RFC 8760 §2.4)."""
        usable = []
        for value in values:
            try:
                challenge = parse_challenge(value)
            except DigestError:
                continue
            if self.can_answer(challenge):
                usable.append(challenge.serialize())
        return select_challenge(usable)

    def authorize(
        self,
        challenge: DigestChallenge | str | Iterable[str],
        *,
        method: str,
        uri: str,
        body: bytes = b"",
    ) -> str:
        """Credentials header value answering ``challenge`` (one value or several to choose from).

        A challenge with ``stale=true`` carries a fresh nonce: counting starts
        again at 1 for it, the password is reused (RFC 7616 §3.3).
        """
        if isinstance(challenge, str):
            chosen = parse_challenge(challenge)
        elif isinstance(challenge, DigestChallenge):
            chosen = challenge
        else:
            chosen = self.choose(challenge)
        if not self.can_answer(chosen):
            raise DigestError(f"no credentials for algorithm {chosen.algorithm!r}")
        base = _base_algorithm(chosen.algorithm)
        key = (chosen.realm, chosen.nonce)
        nc = self._counts.pop(key, 0) + 1
        self._counts[key] = nc
        while len(self._counts) > self._max_nonces:
            self._counts.popitem(last=False)
        credentials = make_credentials(
            chosen,
            username=self.username,
            method=method,
            uri=uri,
            password=self._password if base not in self._ha1 else None,
            ha1=self._ha1.get(base),
            body=body,
            cnonce=self._cnonce_factory(),
            nc=nc,
        )
        return credentials.serialize()


# ---------------------------------------------------------------------------
# UAS / registrar side (RFC 3261 §22.1, §22.4; RFC 7616 §3.3, §5.4-§5.5)
# ---------------------------------------------------------------------------


class AuthFailure(enum.Enum):
    """Internal reason a verification failed: for logs and counters, never for the peer."""

    MALFORMED = "malformed"
    BAD_REALM = "bad_realm"
    BAD_NONCE = "bad_nonce"
    STALE_NONCE = "stale_nonce"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNSUPPORTED_QOP = "unsupported_qop"
    URI_MISMATCH = "uri_mismatch"
    UNKNOWN_USER = "unknown_user"
    BAD_RESPONSE = "bad_response"
    REPLAYED_NC = "replayed_nc"


@dataclass(frozen=True)
class AuthResult:
    """Outcome of :meth:`DigestAuthenticator.verify`.

    On failure the peer must get the same challenge whatever ``reason`` says
    (``challenge(now, stale=result.stale)``), so that an unknown user and a
    wrong password look alike from outside.
    """

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: AuthFailure | None = None
    algorithm: str | None = None
    credentials: DigestCredentials | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.ok


PasswordLookup = Callable[[str], "str | None"]
Ha1Lookup = Callable[[str, str, str], "str | None"]
UserhashLookup = Callable[[str, str], "str | None"]

_NONCE_TS = struct.Struct(">q")
_NONCE_SALT = 8
_NONCE_MAC = 16


class DigestAuthenticator:
    """Challenges and verifies digest credentials for one realm (RFC 3261 §22.4).

    Nonces are stateless and verifiable: base64url(timestamp_ms | salt |
    HMAC-SHA256(secret, realm | timestamp | salt)[:16]) (RFC 7616 §5.4). Any
    node or restart holding the same ``secret`` accepts them until
    ``nonce_ttl`` has passed; after that a right answer gets ``stale=True``.

    Replay protection (RFC 7616 §5.5): the highest nonce-count accepted per
    nonce is kept in a bounded LRU table of ``max_nonces`` entries, from which
    nonces past ``nonce_ttl`` go as well; an answer must raise nc. A nonce
    absent from the table is accepted only with nc=1 and only if it was issued
    after every nonce evicted so far; otherwise a
    right answer gets ``stale=True``, so the client retries on a fresh nonce
    (transparently, without asking for the password again) and a captured
    request cannot be replayed after its nonce was evicted. The table is in
    memory: after a restart, a request captured within the last ``nonce_ttl``
    with nc=1 could be replayed once.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        nonce_ttl: float = 300.0,
        *,
        qop: Iterable[str] = ("auth",),
        max_nonces: int = 10000,
        clock_skew: float = 30.0,
        allow_rfc2069: bool = False,
        opaque: str | None = None,
        userhash_lookup: UserhashLookup | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.realm = realm
        self._secret = bytes(secret)
        self.algorithms = tuple(_canonical_algorithm(a) for a in algorithms)
        for algorithm in self.algorithms:
            _base_algorithm(algorithm)
        if not self.algorithms:
            raise ValueError("at least one algorithm required")
        self.qop = tuple(q.lower() for q in qop)
        for option in self.qop:
            if option not in ("auth", "auth-int"):
                raise ValueError(f"unsupported qop {option!r}")
        if not self.qop and any(a.endswith("-sess") for a in self.algorithms):
            raise ValueError("-sess algorithms need qop")
        self.nonce_ttl = nonce_ttl
        self.clock_skew = clock_skew
        self.allow_rfc2069 = allow_rfc2069 or not self.qop
        self.opaque = opaque
        self._userhash_lookup = userhash_lookup
        self._random_bytes = random_bytes
        self._max_nonces = max_nonces
        # nonce -> (highest nc accepted, issue time), least recently used first
        self._nc: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Issue time of the newest nonce ever evicted: unknown nonces issued
        # up to then may have been used already.
        self._evicted_up_to = float("-inf")

    # -- nonces ------------------------------------------------------------

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _b(self.realm) + b"\x00" + payload, hashlib.sha256).digest()

    def make_nonce(self, now: float) -> str:
        """A fresh signed nonce carrying ``now`` (RFC 7616 §3.3 nonce, §5.4)."""
        payload = _NONCE_TS.pack(int(now * 1000)) + self._random_bytes(_NONCE_SALT)
        raw = payload + self._mac(payload)[:_NONCE_MAC]
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def nonce_issued_at(self, nonce: str) -> float | None:
        """Issue time of one of our nonces, or None if it is not ours (or tampered)."""
        expected_len = _NONCE_TS.size + _NONCE_SALT + _NONCE_MAC
        if len(nonce) != (expected_len * 4 + 2) // 3 or not nonce.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != expected_len:
            return None
        payload, mac = raw[:-_NONCE_MAC], raw[-_NONCE_MAC:]
        if not hmac.compare_digest(mac, self._mac(payload)[:_NONCE_MAC]):
            return None
        return float(_NONCE_TS.unpack_from(payload)[0]) / 1000.0

    # -- challenge ---------------------------------------------------------

    def challenge(
        self, now: float, stale: bool = False, algorithms: Iterable[str] | None = None
    ) -> list[str]:
        """One header value per algorithm, preferred first (RFC 8760 §2.4, RFC 3261 §22.1).

        All values share one nonce so whichever the client picks is counted
        against the same nonce-count. ``algorithms`` narrows or reorders the
        offer for one client (see :class:`AlgorithmPolicy`); each must be one
        this authenticator accepts.
        """
        offered = self._offered(algorithms)
        nonce = self.make_nonce(now)
        return [
            DigestChallenge(
                realm=self.realm,
                nonce=nonce,
                algorithm=algorithm,
                qop=self.qop,
                opaque=self.opaque,
                stale=stale,
            ).serialize()
            for algorithm in offered
        ]

    def _offered(self, algorithms: Iterable[str] | None) -> tuple[str, ...]:
        if algorithms is None or algorithms is self.algorithms:
            return self.algorithms
        chosen = tuple(_canonical_algorithm(a) for a in algorithms)
        unknown = [a for a in chosen if a not in self.algorithms]
        if unknown or not chosen:
            raise ValueError(f"algorithms {unknown or 'none'} not among {self.algorithms}")
        return chosen

    # -- verification ------------------------------------------------------

    def verify(
        self,
        method: str,
        credentials_value: str,
        *,
        now: float,
        password_lookup: PasswordLookup | None = None,
        ha1_lookup: Ha1Lookup | None = None,
        body: bytes = b"",
        request_uri: str | None = None,
        algorithms: Iterable[str] | None = None,
    ) -> AuthResult:
        """Check an Authorization / Proxy-Authorization value (RFC 3261 §22.4, RFC 7616 §3.4).

        ``password_lookup(username) -> password | None`` or
        ``ha1_lookup(username, realm, base_algorithm) -> hex | None`` supplies
        the secret. ``request_uri``, when given, must equal the ``uri``
        parameter (RFC 3261 §22.4 step "the Request-URI ... matches").
        ``algorithms``, when given, are the ones this account accepts (a
        subset of the authenticator's); an answer in any other algorithm
        fails with ``UNSUPPORTED_ALGORITHM``.
        Never raises for anything the peer sent.
        """
        if (password_lookup is None) == (ha1_lookup is None):
            raise ValueError("give exactly one of password_lookup and ha1_lookup")
        try:
            creds = parse_credentials(credentials_value)
        except DigestError:
            return AuthResult(ok=False, reason=AuthFailure.MALFORMED)

        def fail(reason: AuthFailure, stale: bool = False) -> AuthResult:
            return AuthResult(
                ok=False,
                username=creds.username,
                stale=stale,
                reason=reason,
                algorithm=creds.effective_algorithm,
                credentials=creds,
            )

        if creds.realm != self.realm:
            return fail(AuthFailure.BAD_REALM)
        algorithm = creds.effective_algorithm
        if algorithm not in self._offered(algorithms):
            return fail(AuthFailure.UNSUPPORTED_ALGORITHM)
        base = _base_algorithm(algorithm)
        if creds.qop is None:
            if not self.allow_rfc2069 or algorithm.endswith("-sess"):
                return fail(AuthFailure.UNSUPPORTED_QOP)
        elif creds.qop not in self.qop:
            return fail(AuthFailure.UNSUPPORTED_QOP)
        issued = self.nonce_issued_at(creds.nonce)
        if issued is None or issued > now + self.clock_skew:
            return fail(AuthFailure.BAD_NONCE)
        if request_uri is not None and creds.uri != request_uri:
            return fail(AuthFailure.URI_MISMATCH)
        if self.opaque is not None and creds.opaque != self.opaque:
            return fail(AuthFailure.MALFORMED)

        username: str | None = creds.username
        if creds.userhash:
            username = (
                self._userhash_lookup(creds.username, base)
                if self._userhash_lookup is not None
                else None
            )
        ha1: str | None = None
        if username is not None:
            if password_lookup is not None:
                password = password_lookup(username)
                if password is not None:
                    ha1 = compute_ha1(base, username, self.realm, password)
            elif ha1_lookup is not None:
                ha1 = ha1_lookup(username, self.realm, base)
            if ha1 is not None and (len(ha1) != _HEX_LEN[base] or not _HEX_RE.fullmatch(ha1)):
                ha1 = None
        known = ha1 is not None
        # An unknown user costs the same hashing as a known one.
        expected = compute_response(
            algorithm=algorithm,
            ha1=ha1.lower() if ha1 is not None else _HASHES[base](self._random_bytes(16)),
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=body,
        )
        matches = hmac.compare_digest(_b(expected), _b(creds.response))
        if not known:
            return fail(AuthFailure.UNKNOWN_USER)
        if not matches:
            return fail(AuthFailure.BAD_RESPONSE)
        if now - issued > self.nonce_ttl:
            return fail(AuthFailure.STALE_NONCE, stale=True)
        if creds.qop is not None:
            assert creds.nc is not None
            entry = self._nc.get(creds.nonce)
            if entry is None:
                if creds.nc != 1 or issued <= self._evicted_up_to:
                    return fail(AuthFailure.STALE_NONCE, stale=True)
            elif creds.nc <= entry[0]:
                return fail(AuthFailure.REPLAYED_NC)
            self._nc.pop(creds.nonce, None)
            self._nc[creds.nonce] = (creds.nc, issued)
            self._forget(now)
        return AuthResult(
            ok=True,
            username=username,
            algorithm=algorithm,
            credentials=creds,
        )

    def _forget(self, now: float) -> None:
        """Bound the nonce-count table: past ``max_nonces`` the least recently used
        entry goes; so, from the least recently used end, do entries whose nonce is
        past ``nonce_ttl`` (any answer with it is stale before the table is read).
        Phones that register with a fresh challenge each time would otherwise keep
        ``max_nonces`` entries. Both count as evictions for unknown nonces."""
        table = self._nc
        oldest = now - self.nonce_ttl
        while table:
            nonce, (_, issued) = next(iter(table.items()))
            if len(table) <= self._max_nonces and issued >= oldest:
                return
            del table[nonce]
            self._evicted_up_to = max(self._evicted_up_to, issued)

    @property
    def tracked_nonces(self) -> int:
        """Size of the nonce-count table (bounded by ``max_nonces``)."""
        return len(self._nc)


#: Client software that cannot use the RFC 8760 offer (several challenges,
#: SHA-256 first), by User-Agent pattern (``fnmatch``, case-insensitive); the
#: empty pattern stands for a request without User-Agent. Measured against
#: the Debian packages: baresip 1.0 (libre 1.1) fails the whole REGISTER with
#: ENOSYS when any challenge names an algorithm other than MD5; sipsak 0.9.8
#: and SIPp 3.6 read only the first challenge and answer only MD5 (SIPp sends
#: no User-Agent unless its scenario does).
LEGACY_USER_AGENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("baresip v0.*", ("MD5",)),
    ("baresip v1.*", ("MD5",)),
    ("sipsak*", ("MD5",)),
    ("", ("MD5", "SHA-256")),
)


@dataclass(frozen=True)
class AlgorithmPolicy:
    """Which digest algorithms to offer one client, most preferred first.

    RFC 8760 §2.4: a server sends one challenge per algorithm in its order of
    preference and a client answers the topmost one it supports. Clients that
    break on that offer are matched by their User-Agent (``user_agents``, the
    first matching pattern wins) and get the narrower offer listed for them.
    An account may accept fewer algorithms than the switch (``accepted``);
    the offer never leaves what the account accepts, so a SHA-256-only
    account stays SHA-256-only whatever the client claims to be.
    """

    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    user_agents: tuple[tuple[str, tuple[str, ...]], ...] = LEGACY_USER_AGENTS

    def offer(
        self, user_agent: str | None, accepted: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        """The algorithms to challenge a client with ``user_agent`` (None: header absent)."""
        allowed = accepted if accepted else self.algorithms
        agent = (user_agent or "").strip().lower()
        for pattern, algorithms in self.user_agents:
            hit = not agent if pattern == "" else bool(agent) and fnmatch.fnmatchcase(
                agent, pattern.lower())
            if hit:
                chosen = tuple(a for a in algorithms if a in allowed)
                return chosen if chosen else allowed
        return allowed
