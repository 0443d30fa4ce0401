"""Who may read a mailbox's message summary (RFC 6665 §5.2, RFC 3842 §7).

A SUBSCRIBE to ``message-summary`` is authenticated by digest (RFC 3261 §22,
RFC 7616 / RFC 8760) with the credentials a phone REGISTERs with: the
switch's realm and digest algorithms, the DN's ``password`` from the cluster
file, and the switch's nonce key, so a nonce a cluster node issued is good
here too. A DN without a password (and without ``sip-enable-strict-auth``)
registers unchallenged; its From is taken as it is, the same way. The
authenticated subscriber must then be the mailbox's owner (the DN of the
mailbox's number) or one of the DNs ``mwi-delegates`` lists for that mailbox;
anyone else gets 403.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemons.cluster.config import ClusterConfig
from protocols.sip.digest import AlgorithmPolicy, DigestAuthenticator
from protocols.sip.errors import SipError
from protocols.sip.message import Request

__all__ = ["Access", "MwiAccess"]


@dataclass(frozen=True, slots=True)
class Access:
    """The verdict on one SUBSCRIBE: ``status`` None lets it through; else the
    answer (401 with ``headers`` holding the challenge, or 403) and why."""

    status: int | None
    reason: str
    subscriber: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    detail: str = ""


class MwiAccess:
    """Digest check and mailbox ownership of MWI subscribers (see module doc)."""

    def __init__(self, cluster: ClusterConfig,
                 delegates: Mapping[str, frozenset[str]] | None = None) -> None:
        self.cluster = cluster
        switch = cluster.switch
        self.delegates: Mapping[str, frozenset[str]] = delegates or {}
        self.auth = DigestAuthenticator(switch.realm, switch.nonce_secret(),
                                        algorithms=switch.digest_algorithms)
        self.policy = AlgorithmPolicy(switch.digest_algorithms, switch.digest_user_agents)

    def _password(self, dn: str) -> str | None:
        entry = self.cluster.dns.get(dn)
        if entry is None or not entry.is_agent_dn:
            return None
        password = entry.password
        if self.cluster.strict_auth(dn) and (not password or password == dn):
            return None  # sip-enable-strict-auth: such a password never matches
        return password

    def _needs_auth(self, dn: str) -> bool:
        entry = self.cluster.dns.get(dn)
        if entry is None or not entry.is_agent_dn:
            return True  # unknown: challenged like any DN, never accepted
        return bool(entry.password) or self.cluster.strict_auth(dn)

    def _algorithms(self, dn: str) -> tuple[str, ...]:
        entry = self.cluster.dns.get(dn)
        narrowed = entry.digest_algorithms if entry is not None else None
        return narrowed or self.auth.algorithms

    def _challenge(self, request: Request, claimed: str, now: float, *, stale: bool,
                   reason: str, detail: str = "") -> Access:
        offer = self.policy.offer(request.headers.get("User-Agent"), self._algorithms(claimed))
        return Access(401, reason, claimed, tuple(
            ("WWW-Authenticate", v) for v in self.auth.challenge(now, stale, offer)), detail)

    def check(self, request: Request, mailbox: str, now: float) -> Access:
        """Authenticate the subscriber of ``request`` and authorise it for ``mailbox``.
        ``now`` is wall-clock seconds (the nonces are shared with the nodes)."""
        try:
            claimed = request.from_.sip_uri.user or ""
        except SipError:
            claimed = ""
        value = request.headers.get("Authorization")
        if value is None:
            if not claimed or self._needs_auth(claimed):
                return self._challenge(request, claimed, now, stale=False, reason="challenged")
            subscriber = claimed
        else:
            result = self.auth.verify(request.method, value, now=now,
                                      password_lookup=self._password,
                                      algorithms=self._algorithms(claimed))
            if not result.ok or not result.username:
                why = result.reason.value if result.reason is not None else "unknown"
                return self._challenge(request, claimed, now, stale=result.stale,
                                       reason="auth_failed", detail=why)
            subscriber = result.username
        if subscriber == mailbox or subscriber in self.delegates.get(mailbox, ()):
            return Access(None, "ok", subscriber)
        return Access(403, "not_owner", subscriber)
