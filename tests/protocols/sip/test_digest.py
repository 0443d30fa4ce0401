"""Digest authentication: RFC 7616 / RFC 2617 vectors, UAC <-> UAS round trips, attacks."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sip.digest import (
    LEGACY_USER_AGENTS,
    AlgorithmPolicy,
    AuthFailure,
    DigestAuthenticator,
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    DigestError,
    compute_ha1,
    compute_response,
    make_credentials,
    parse_auth_params,
    parse_challenge,
    parse_credentials,
    select_challenge,
)
from protocols.sip.errors import ParseError

# RFC 7616 §3.9.1 (password has a lower-case "of", erratum 4495).
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_CHALLENGE = (
    'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
    "    algorithm={alg},\r\n"
    f'    nonce="{RFC7616_NONCE}",\r\n    opaque="{RFC7616_OPAQUE}"'
)
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}

# RFC 2617 §3.5 (password "Circle Of Life", capital O).
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

ALL_ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
NOW = 1_700_000_000.0
URI = "sip:bob@biloxi.example.com"
USERS = {"bob": "zanzibar", "alice": 'p"w\\d'}


def counter_cnonce() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"cn{next(counter):04d}"


# ---------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vectors(algorithm: str) -> None:
    challenge = parse_challenge(RFC7616_CHALLENGE.format(alg=algorithm))
    assert challenge.realm == "http-auth@example.org"
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == algorithm
    creds = make_credentials(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert creds.response == RFC7616_RESPONSES[algorithm]
    value = creds.serialize()
    assert "qop=auth," in value and "nc=00000001" in value and f"algorithm={algorithm}" in value
    assert f'opaque="{RFC7616_OPAQUE}"' in value
    # The client object with an injected cnonce source gives the same answer.
    client = DigestClient(
        "Mufasa", password="Circle of Life", cnonce_factory=lambda: RFC7616_CNONCE
    )
    answer = client.authorize(challenge, method="GET", uri="/dir/index.html")
    assert parse_credentials(answer).response == RFC7616_RESPONSES[algorithm]


def test_rfc7616_authorization_header_parses() -> None:
    value = (
        'Digest username="Mufasa",\r\n realm="http-auth@example.org",\r\n uri="/dir/index.html",'
        f'\r\n algorithm=SHA-256,\r\n nonce="{RFC7616_NONCE}",\r\n nc=00000001,\r\n'
        f' cnonce="{RFC7616_CNONCE}",\r\n qop=auth,\r\n'
        f' response="{RFC7616_RESPONSES["SHA-256"]}",\r\n opaque="{RFC7616_OPAQUE}"'
    )
    creds = parse_credentials(value)
    assert creds.username == "Mufasa"
    assert creds.nc == 1 and creds.qop == "auth" and creds.algorithm == "SHA-256"
    ha1 = compute_ha1("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life")
    expected = compute_response(
        algorithm="SHA-256",
        ha1=ha1,
        nonce=creds.nonce,
        method="GET",
        uri=creds.uri,
        qop=creds.qop,
        nc=creds.nc,
        cnonce=creds.cnonce,
    )
    assert expected == creds.response


def test_rfc2617_example() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.algorithm == "MD5"  # absent means MD5
    creds = make_credentials(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    parsed = parse_credentials(RFC2617_AUTHORIZATION)
    assert parsed.response == creds.response
    assert parsed.algorithm is None and parsed.effective_algorithm == "MD5"


def test_rfc2069_form_without_qop() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'
    )
    creds = make_credentials(
        challenge, username="Mufasa", password="Circle Of Life", method="GET", uri="/dir/index.html"
    )
    ha1 = hashlib.md5(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    expected = hashlib.md5(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}".encode()).hexdigest()
    assert creds.response == expected
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert "nc=" not in creds.serialize() and "qop=" not in creds.serialize()


def test_sess_and_auth_int_hashing_matches_rfc7616_formulas() -> None:
    nonce, cnonce, body = "n0nce", "c0nce", b"v=0\r\n"
    base = hashlib.sha256(b"u:r:p").hexdigest()
    ha1 = hashlib.sha256(f"{base}:{nonce}:{cnonce}".encode()).hexdigest()
    ha2 = hashlib.sha256(f"INVITE:sip:x@y:{hashlib.sha256(body).hexdigest()}".encode()).hexdigest()
    expected = hashlib.sha256(
        f"{ha1}:{nonce}:00000002:{cnonce}:auth-int:{ha2}".encode()
    ).hexdigest()
    challenge = DigestChallenge(realm="r", nonce=nonce, algorithm="SHA-256-sess", qop=("auth-int",))
    creds = make_credentials(
        challenge,
        username="u",
        password="p",
        method="INVITE",
        uri="sip:x@y",
        body=body,
        cnonce=cnonce,
        nc=2,
    )
    assert creds.qop == "auth-int"
    assert creds.response == expected


# ---------------------------------------------------------------------------
# Parsing and serialising
# ---------------------------------------------------------------------------


def test_param_names_case_insensitive_and_escapes() -> None:
    challenge = parse_challenge(
        r'DIGEST REALM="a \"quoted\" realm\\x", NONCE=abc/def==, Algorithm=sha-256, '
        r'QOP="AUTH", Stale=TRUE, opaque="", foo="bar"'
    )
    assert challenge.realm == 'a "quoted" realm\\x'
    assert challenge.nonce == "abc/def=="
    assert challenge.algorithm == "SHA-256"
    assert challenge.qop == ("auth",)
    assert challenge.stale is True
    assert challenge.opaque == ""
    assert challenge.extra == (("foo", "bar"),)
    again = parse_challenge(challenge.serialize())
    assert again == challenge


def test_challenge_serialisation_quoting_rules() -> None:
    value = DigestChallenge(
        realm="r", nonce="n", algorithm="SHA-256", qop=("auth", "auth-int"), stale=True
    ).serialize()
    assert (
        value == 'Digest realm="r", nonce="n", stale=true, algorithm=SHA-256, qop="auth,auth-int"'
    )


def test_credentials_round_trip() -> None:
    creds = DigestCredentials(
        username='we"ird\\user',
        realm="r",
        nonce="n",
        uri="sip:a@b;transport=tcp",
        response="ab" * 16,
        algorithm="MD5",
        cnonce="c",
        opaque="o",
        qop="auth",
        nc=0x1F,
    )
    value = creds.serialize()
    assert "nc=0000001f" in value and "qop=auth" in value and "algorithm=MD5" in value
    assert parse_credentials(value) == creds


def test_unknown_algorithm_is_kept_but_not_chosen() -> None:
    values = [
        'Digest realm="r", nonce="1", algorithm=SHA-512-256, qop="auth"',
        'Basic realm="r"',
        'Digest realm="r", nonce="2", algorithm=MD5, qop="auth"',
        "Digest garbage",
        'Digest realm="r", nonce="3", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="4", algorithm=SHA-256, qop="auth"',
    ]
    assert parse_challenge(values[0]).algorithm == "SHA-512-256"
    assert not parse_challenge(values[0]).supported
    chosen = select_challenge(values)
    assert (chosen.algorithm, chosen.nonce) == ("SHA-256", "3")
    assert select_challenge(values[:3]).nonce == "2"
    with pytest.raises(DigestError):
        select_challenge(values[:2])


def test_client_with_md5_ha1_only_picks_md5() -> None:
    ha1 = compute_ha1("MD5", "bob", "r", "zanzibar")
    client = DigestClient("bob", ha1={"MD5": ha1}, cnonce_factory=lambda: "c")
    values = [
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"',
    ]
    answer = parse_credentials(client.authorize(values, method="REGISTER", uri="sip:r"))
    assert answer.algorithm == "MD5"
    expected = make_credentials(
        parse_challenge(values[1]),
        username="bob",
        password="zanzibar",
        method="REGISTER",
        uri="sip:r",
        cnonce="c",
    )
    assert answer.response == expected.response


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Digest ",
        'Digest realm="unterminated',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", realm="s", nonce="n"',
        'Digest realm=, nonce="n"',
        'Digest realm="r", nonce="n", stale=maybe',
        'Digest nonce="n"',
        'Digest realm="r", nonce="n", qop=""',
        'Digest realm="r\\',
        "Digest =x",
        'Digest realm="r", nonce="n", qop="auth bad"',
        'Digest realm="a\r\nb", nonce="n"',
    ],
)
def test_malformed_challenges(value: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(value)


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        'Digest username="u", realm="r", nonce="n", uri="x"',
        'Digest username="u", realm="r", nonce="n", uri="x", response="zz"',
        'Digest username="u", realm="r", nonce="n", uri="x", response="ab", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="x", response="ab", qop=auth, nc=1,'
        ' cnonce="c"',
        'Digest username="u", realm="r", nonce="n", uri="x", response="ab", nc=00000001',
        'Digest username="u", realm="r", nonce="n", uri="x", response="ab", userhash=yes',
    ],
)
def test_malformed_credentials(value: str) -> None:
    with pytest.raises(DigestError):
        parse_credentials(value)


def test_digest_error_is_a_typed_parse_error() -> None:
    assert issubclass(DigestError, ParseError) and issubclass(DigestError, ValueError)
    with pytest.raises(DigestError) as info:
        parse_credentials("Digest")
    assert info.value.status == 400


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_digest_error(text: str) -> None:
    for parse in (parse_challenge, parse_credentials, parse_auth_params):
        try:
            parse(text)  # type: ignore[operator]
        except DigestError:
            pass


_AUTH_ALPHABET = st.sampled_from(list('Digest realm=nonce,"\\ qop=auth algorithm=MD5 uri=x nc'))


@settings(max_examples=400, deadline=None)
@given(st.lists(_AUTH_ALPHABET, max_size=80).map("".join))
def test_grammar_shaped_noise_never_crashes_verifier(text: str) -> None:
    auth = DigestAuthenticator("r", b"secret")
    for parse in (parse_challenge, parse_credentials):
        try:
            parse(text)
        except DigestError:
            pass
    result = auth.verify("REGISTER", text, now=NOW, password_lookup=USERS.get)
    assert not result.ok


@settings(max_examples=300, deadline=None)
@given(
    realm=st.text(st.characters(blacklist_characters="\r\n\x00"), max_size=40),
    nonce=st.text(st.characters(blacklist_characters="\r\n\x00"), min_size=1, max_size=40),
    qop=st.sampled_from([(), ("auth",), ("auth", "auth-int")]),
    stale=st.booleans(),
)
def test_challenge_round_trip_property(
    realm: str, nonce: str, qop: tuple[str, ...], stale: bool
) -> None:
    challenge = DigestChallenge(realm=realm, nonce=nonce, algorithm="SHA-256", qop=qop, stale=stale)
    assert parse_challenge(challenge.serialize()) == challenge


# ---------------------------------------------------------------------------
# UAC <-> UAS
# ---------------------------------------------------------------------------


def _pick(values: list[str], algorithm: str) -> str:
    return next(v for v in values if parse_challenge(v).algorithm == algorithm)


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("use_ha1", [False, True])
def test_round_trip_each_algorithm(algorithm: str, use_ha1: bool) -> None:
    auth = DigestAuthenticator("biloxi.example.com", b"s3cret", algorithms=ALL_ALGORITHMS)
    values = auth.challenge(NOW)
    assert [parse_challenge(v).algorithm for v in values] == list(ALL_ALGORITHMS)
    client = DigestClient("bob", password="zanzibar", cnonce_factory=counter_cnonce())
    answer = client.authorize(_pick(values, algorithm), method="REGISTER", uri=URI)
    if use_ha1:

        def ha1_lookup(user: str, realm: str, base: str) -> str | None:
            return compute_ha1(base, user, realm, USERS[user]) if user in USERS else None

        result = auth.verify(
            "REGISTER", answer, now=NOW + 1, ha1_lookup=ha1_lookup, request_uri=URI
        )
    else:
        result = auth.verify("REGISTER", answer, now=NOW + 1, password_lookup=USERS.get)
    assert result.ok, result
    assert result.username == "bob" and result.algorithm == algorithm
    # Same nonce again: the client counts up and the server accepts nc=2.
    answer2 = client.authorize(_pick(values, algorithm), method="REGISTER", uri=URI)
    assert parse_credentials(answer2).nc == 2
    assert auth.verify("REGISTER", answer2, now=NOW + 2, password_lookup=USERS.get).ok


def test_client_prefers_sha256_from_server_challenges() -> None:
    auth = DigestAuthenticator("r", b"k")  # SHA-256 then MD5
    client = DigestClient("alice", password=USERS["alice"])
    answer = client.authorize(list(reversed(auth.challenge(NOW))), method="INVITE", uri=URI)
    assert parse_credentials(answer).algorithm == "SHA-256"
    assert auth.verify("INVITE", answer, now=NOW, password_lookup=USERS.get).ok


def test_auth_int_covers_the_body() -> None:
    auth = DigestAuthenticator("r", b"k", qop=("auth-int",))
    client = DigestClient("bob", password="zanzibar")
    answer = client.authorize(auth.challenge(NOW)[0], method="INVITE", uri=URI, body=b"v=0\r\n")
    assert parse_credentials(answer).qop == "auth-int"
    bad = auth.verify("INVITE", answer, now=NOW, password_lookup=USERS.get, body=b"v=1\r\n")
    assert bad.reason is AuthFailure.BAD_RESPONSE
    ok = auth.verify("INVITE", answer, now=NOW, password_lookup=USERS.get, body=b"v=0\r\n")
    assert ok.ok


def test_userhash_round_trip() -> None:
    def userhash_lookup(hashed: str, base: str) -> str | None:
        name = "md5" if base == "MD5" else "sha256"
        for user in USERS:
            if hashlib.new(name, f"{user}:r".encode()).hexdigest() == hashed:
                return user
        return None

    auth = DigestAuthenticator("r", b"k", userhash_lookup=userhash_lookup)
    value = auth.challenge(NOW)[0]
    challenge = parse_challenge(value)
    challenge = DigestChallenge(**{**challenge.__dict__, "userhash": True})
    client = DigestClient("bob", password="zanzibar")
    answer = parse_credentials(client.authorize(challenge, method="REGISTER", uri=URI))
    assert answer.userhash and answer.username == hashlib.sha256(b"bob:r").hexdigest()
    result = auth.verify("REGISTER", answer.serialize(), now=NOW, password_lookup=USERS.get)
    assert result.ok and result.username == "bob"


# ---------------------------------------------------------------------------
# Attacks and expiry
# ---------------------------------------------------------------------------


def _answer(auth: DigestAuthenticator, now: float, user: str = "bob", pw: str = "zanzibar") -> str:
    client = DigestClient(user, password=pw, cnonce_factory=lambda: "abc")
    return client.authorize(auth.challenge(now), method="REGISTER", uri=URI)


def test_stale_nonce_with_right_answer_gets_stale() -> None:
    auth = DigestAuthenticator("r", b"k", nonce_ttl=300.0)
    answer = _answer(auth, NOW)
    late = auth.verify("REGISTER", answer, now=NOW + 301, password_lookup=USERS.get)
    assert not late.ok and late.stale and late.reason is AuthFailure.STALE_NONCE
    # A wrong password on an old nonce is a plain failure, not stale.
    wrong = auth.verify(
        "REGISTER", _answer(auth, NOW, pw="nope"), now=NOW + 301, password_lookup=USERS.get
    )
    assert not wrong.ok and not wrong.stale and wrong.reason is AuthFailure.BAD_RESPONSE
    # The stale challenge says so and the client answers it without a new password prompt.
    challenge = parse_challenge(auth.challenge(NOW + 301, stale=True)[0])
    assert challenge.stale


def test_nonce_survives_restart_with_same_secret_only() -> None:
    first = DigestAuthenticator("r", b"shared-secret")
    answer = _answer(first, NOW)
    restarted = DigestAuthenticator("r", b"shared-secret")
    assert restarted.verify("REGISTER", answer, now=NOW + 10, password_lookup=USERS.get).ok
    other = DigestAuthenticator("r", b"other-secret")
    result = other.verify("REGISTER", answer, now=NOW + 10, password_lookup=USERS.get)
    assert result.reason is AuthFailure.BAD_NONCE


def test_nc_replay_rejected() -> None:
    auth = DigestAuthenticator("r", b"k")
    answer = _answer(auth, NOW)
    assert auth.verify("REGISTER", answer, now=NOW, password_lookup=USERS.get).ok
    replay = auth.verify("REGISTER", answer, now=NOW + 1, password_lookup=USERS.get)
    assert not replay.ok and replay.reason is AuthFailure.REPLAYED_NC and not replay.stale


def test_nc_must_increase_but_may_skip() -> None:
    auth = DigestAuthenticator("r", b"k")
    challenge = parse_challenge(auth.challenge(NOW)[0])

    def answer(nc: int) -> str:
        return make_credentials(
            challenge,
            username="bob",
            password="zanzibar",
            method="REGISTER",
            uri=URI,
            cnonce=f"c{nc}",
            nc=nc,
        ).serialize()

    assert auth.verify("REGISTER", answer(1), now=NOW, password_lookup=USERS.get).ok
    assert auth.verify("REGISTER", answer(5), now=NOW, password_lookup=USERS.get).ok
    assert auth.verify("REGISTER", answer(3), now=NOW, password_lookup=USERS.get).reason is (
        AuthFailure.REPLAYED_NC
    )
    assert auth.verify("REGISTER", answer(6), now=NOW, password_lookup=USERS.get).ok


def test_unknown_nonce_with_high_nc_is_sent_a_fresh_nonce() -> None:
    auth = DigestAuthenticator("r", b"k")
    challenge = parse_challenge(auth.challenge(NOW)[0])
    value = make_credentials(
        challenge,
        username="bob",
        password="zanzibar",
        method="REGISTER",
        uri=URI,
        cnonce="c",
        nc=7,
    ).serialize()
    result = auth.verify("REGISTER", value, now=NOW, password_lookup=USERS.get)
    assert not result.ok and result.stale


def test_nonce_table_is_bounded_and_eviction_does_not_open_replay() -> None:
    auth = DigestAuthenticator("r", b"k", max_nonces=5)
    answers = [_answer(auth, NOW + i) for i in range(12)]
    for i, answer in enumerate(answers):
        assert auth.verify("REGISTER", answer, now=NOW + i, password_lookup=USERS.get).ok
    assert auth.tracked_nonces == 5
    # Still remembered: a replay is refused outright.
    assert auth.verify("REGISTER", answers[-1], now=NOW + 12, password_lookup=USERS.get).reason is (
        AuthFailure.REPLAYED_NC
    )
    # Evicted: the replay is not accepted either; the answer is a fresh nonce.
    evicted = auth.verify("REGISTER", answers[0], now=NOW + 12, password_lookup=USERS.get)
    assert not evicted.ok and evicted.stale
    assert auth.tracked_nonces == 5
    # A nonce issued after the evictions is still accepted on first use.
    assert auth.verify(
        "REGISTER", _answer(auth, NOW + 13), now=NOW + 13, password_lookup=USERS.get
    ).ok


def test_nonces_past_their_lifetime_leave_the_table() -> None:
    """A phone that answers a fresh challenge each time it registers: the table
    keeps only the nonces still within ``nonce_ttl``, not ``max_nonces`` of them."""
    auth = DigestAuthenticator("r", b"k", nonce_ttl=300.0)
    for i in range(0, 3000, 2):  # a REGISTER every 2 s for 50 minutes
        assert auth.verify("REGISTER", _answer(auth, NOW + i), now=NOW + i,
                           password_lookup=USERS.get).ok
    assert 140 <= auth.tracked_nonces <= 151
    # a nonce still alive is remembered: its replay is refused
    recent = _answer(auth, NOW + 3000)
    assert auth.verify("REGISTER", recent, now=NOW + 3000, password_lookup=USERS.get).ok
    assert auth.verify("REGISTER", recent, now=NOW + 3001,
                       password_lookup=USERS.get).reason is AuthFailure.REPLAYED_NC
    # a fresh nonce is still accepted on first use
    assert auth.verify("REGISTER", _answer(auth, NOW + 3002), now=NOW + 3002,
                       password_lookup=USERS.get).ok


def test_unknown_user_and_wrong_password_look_alike() -> None:
    auth = DigestAuthenticator("r", b"k")
    unknown = auth.verify(
        "REGISTER", _answer(auth, NOW, user="mallory", pw="x"), now=NOW, password_lookup=USERS.get
    )
    wrong = auth.verify(
        "REGISTER", _answer(auth, NOW, user="bob", pw="x"), now=NOW, password_lookup=USERS.get
    )
    assert unknown.reason is AuthFailure.UNKNOWN_USER
    assert wrong.reason is AuthFailure.BAD_RESPONSE
    # What the peer sees is derived from (ok, stale) only: identical.
    assert (unknown.ok, unknown.stale) == (wrong.ok, wrong.stale) == (False, False)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("response", "0" * 64, AuthFailure.BAD_RESPONSE),
        ("uri", "sip:evil@example.com", AuthFailure.URI_MISMATCH),
        ("realm", "other", AuthFailure.BAD_REALM),
        ("cnonce", "tampered", AuthFailure.BAD_RESPONSE),
        ("username", "alice", AuthFailure.BAD_RESPONSE),
        ("algorithm", "MD5-sess", AuthFailure.UNSUPPORTED_ALGORITHM),
        ("qop", "auth-int", AuthFailure.UNSUPPORTED_QOP),
        ("qop", None, AuthFailure.UNSUPPORTED_QOP),
    ],
)
def test_tampered_fields(field: str, value: object, reason: AuthFailure) -> None:
    auth = DigestAuthenticator("r", b"k")
    creds = parse_credentials(_answer(auth, NOW))
    changes: dict[str, object] = {field: value}
    if field == "qop" and value is None:
        changes.update(nc=None, cnonce=None)
    tampered = DigestCredentials(**{**creds.__dict__, **changes})  # type: ignore[arg-type]
    result = auth.verify(
        "REGISTER", tampered.serialize(), now=NOW, password_lookup=USERS.get, request_uri=URI
    )
    assert not result.ok and result.reason is reason


def test_tampered_nonce_and_method() -> None:
    auth = DigestAuthenticator("r", b"k")
    answer = _answer(auth, NOW)
    creds = parse_credentials(answer)
    nonce = creds.nonce
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    forged = DigestCredentials(**{**creds.__dict__, "nonce": flipped})
    assert (
        auth.verify("REGISTER", forged.serialize(), now=NOW, password_lookup=USERS.get).reason
        is AuthFailure.BAD_NONCE
    )
    assert auth.verify("INVITE", answer, now=NOW, password_lookup=USERS.get).reason is (
        AuthFailure.BAD_RESPONSE
    )
    future = DigestAuthenticator("r", b"k")
    ahead = _answer(future, NOW + 3600)
    assert auth.verify("REGISTER", ahead, now=NOW, password_lookup=USERS.get).reason is (
        AuthFailure.BAD_NONCE
    )


def test_failed_attempts_do_not_burn_the_nonce_count() -> None:
    auth = DigestAuthenticator("r", b"k")
    challenge = parse_challenge(auth.challenge(NOW)[0])
    wrong = make_credentials(
        challenge, username="bob", password="bad", method="REGISTER", uri=URI, cnonce="c", nc=1
    )
    right = make_credentials(
        challenge,
        username="bob",
        password="zanzibar",
        method="REGISTER",
        uri=URI,
        cnonce="c",
        nc=1,
    )
    assert not auth.verify("REGISTER", wrong.serialize(), now=NOW, password_lookup=USERS.get).ok
    assert auth.verify("REGISTER", right.serialize(), now=NOW, password_lookup=USERS.get).ok


def test_malformed_credentials_give_malformed_result() -> None:
    auth = DigestAuthenticator("r", b"k")
    result = auth.verify("REGISTER", 'Digest username="x', now=NOW, password_lookup=USERS.get)
    assert not result.ok and result.reason is AuthFailure.MALFORMED and result.username is None


def test_rfc2069_answers_only_when_allowed() -> None:
    strict = DigestAuthenticator("r", b"k", algorithms=("MD5",))
    lenient = DigestAuthenticator("r", b"k", algorithms=("MD5",), allow_rfc2069=True)
    challenge = parse_challenge(strict.challenge(NOW)[0])
    legacy = DigestChallenge(realm="r", nonce=challenge.nonce, algorithm="MD5")
    value = make_credentials(
        legacy, username="bob", password="zanzibar", method="REGISTER", uri=URI
    ).serialize()
    assert strict.verify("REGISTER", value, now=NOW, password_lookup=USERS.get).reason is (
        AuthFailure.UNSUPPORTED_QOP
    )
    assert lenient.verify("REGISTER", value, now=NOW, password_lookup=USERS.get).ok


# --------------------------------------------------------------- algorithm policy


@pytest.mark.parametrize(("user_agent", "offer"), [
    ("baresip v1.0.0 (x86_64/linux)", ("MD5",)),        # fails on any SHA-256 challenge
    ("sipsak 0.9.8.1", ("MD5",)),                       # reads the first challenge only
    (None, ("MD5", "SHA-256")),                         # SIPp scenarios send no User-Agent
    ("", ("MD5", "SHA-256")),
    ("Linphone/5.1.65 (belle-sip/5.1.64)", ("SHA-256", "MD5")),  # RFC 8760 order
    ("baresip v3.10.0 (x86_64/linux)", ("SHA-256", "MD5")),      # newer libre: both
])
def test_policy_offers_rfc8760_order_except_to_known_legacy_clients(
    user_agent: str | None, offer: tuple[str, ...],
) -> None:
    assert AlgorithmPolicy().offer(user_agent) == offer


def test_policy_never_leaves_what_the_account_accepts() -> None:
    policy = AlgorithmPolicy(("SHA-256", "MD5"), LEGACY_USER_AGENTS)
    # a SHA-256-only account stays so, whatever the client says it is
    assert policy.offer("baresip v1.0.0", accepted=("SHA-256",)) == ("SHA-256",)
    assert policy.offer(None, accepted=("SHA-256",)) == ("SHA-256",)
    custom = AlgorithmPolicy(("SHA-256", "MD5"), (("Acme*", ("MD5",)),))
    assert custom.offer("ACME phone 2") == ("MD5",)      # patterns ignore case
    assert custom.offer("baresip v1.0.0") == ("SHA-256", "MD5")


def test_challenge_and_verify_follow_the_offer() -> None:
    auth = DigestAuthenticator("r", b"k", algorithms=("SHA-256", "MD5"))
    values = auth.challenge(100.0, algorithms=("MD5",))
    assert [parse_challenge(v).algorithm for v in values] == ["MD5"]
    assert [parse_challenge(v).algorithm for v in auth.challenge(100.0)] == ["SHA-256", "MD5"]
    with pytest.raises(ValueError):
        auth.challenge(100.0, algorithms=("SHA-256-sess",))
    md5 = parse_challenge(values[0])
    creds = make_credentials(md5, username="u", method="REGISTER", uri="sip:r",
                             password="pw", cnonce="c")
    lookup = {"u": "pw"}.get
    # an account that accepts SHA-256 only refuses a right MD5 answer
    refused = auth.verify("REGISTER", creds.serialize(), now=101.0,
                          password_lookup=lookup, algorithms=("SHA-256",))
    assert not refused.ok and refused.reason is AuthFailure.UNSUPPORTED_ALGORITHM
    assert auth.verify("REGISTER", creds.serialize(), now=101.0, password_lookup=lookup).ok
