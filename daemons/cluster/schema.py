"""The option tables of the cluster file and the readers behind them.

Each table maps an option's guide name to ``(reader, default)``: the
application-level ``[TServer]`` options, the options of the SIP Cluster Node
DN and of the SIP Outbound Proxy DN, the DN-level options per DN type, the
``[applications.NAME.sipproxy]`` options and the ports of each application
kind (SIP Cluster Solution Guide, "Configuring Switch and DN Objects for SIP
Cluster", "Configuring SIP Servers", "Configuring SIP Proxy"). A reader checks
one value and names file, key and reason when it is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemons.cluster.model import AppKind, DnType
from daemons.runtime.config import Section, is_host_name, is_ip_address
from protocols.sip.errors import ParseError
from protocols.sip.uri import parse_uri

__all__ = [
    "APP_LEVEL_ONLY",
    "CLUSTER_NODE_OPTIONS",
    "DIGEST_ALGORITHMS",
    "DN_OPTIONS",
    "OUTBOUND_PROXY_OPTIONS",
    "PORTS",
    "SERVICE_OPTIONS",
    "SERVICE_TYPES",
    "SIPPROXY_OPTIONS",
    "TSERVER_OPTIONS",
    "Reader",
    "Schema",
    "check_unknown",
    "read_digest_algorithms",
    "read_named",
    "read_schema",
]

#: Reads one option: (section, option name, default) -> value, or a ConfigError.
Reader = Callable[[Section, str, Any], Any]


def _opt_str(s: Section, n: str, d: Any) -> Any:
    return s.get_optional_str(n)


def _bool(s: Section, n: str, d: Any) -> Any:
    return s.get_bool(n, d)


def _opt_bool(s: Section, n: str, d: Any) -> Any:
    return None if n not in s else s.get_bool(n)


def _list(s: Section, n: str, d: Any) -> Any:
    return tuple(s.get_str_list(n, list(d)))


def _nonneg(s: Section, n: str, d: Any) -> Any:
    return s.get_int(n, d, min=0)


def _seconds(s: Section, n: str, d: Any) -> Any:
    return s.get_float(n, d, min=0)


def _opt_hostport(s: Section, n: str, d: Any) -> Any:
    """``IP:PORT`` (``[v6]:PORT`` for IPv6) or absent; read as ``(address, port)``.

    An address, not a name: the daemon sends to it as it is."""
    value = s.get_optional_str(n)
    if value is None:
        return d
    host, colon, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise s.error(n, f"expected IP:PORT, got {value!r}")
    if not is_ip_address(host):
        raise s.error(n, f"expected IP:PORT, got {value!r}: {host!r} is not an IP address")
    return (host, int(port))


def _check_contact(s: Section, n: str, value: str) -> str:
    """A ``contact``: ``"*"`` (SIP registration), a SIP URI or ``HOST[:PORT]``.

    Its host may be a name (resolved through the name servers, RFC 3263), but
    it must be an IP address or have the form of a host name, so that a typo
    such as ``127.0.1.300`` is refused here and not by a resolver at run time."""
    text = value.strip()
    if text in ("", "*"):
        return value
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        host = parse_uri(text).host
    except ParseError as exc:
        raise s.error(n, f"expected a SIP URI or HOST[:PORT], got {value!r}: {exc}") from None
    if not is_ip_address(host) and not is_host_name(host):
        raise s.error(n, f"{host!r} in {value!r} is neither an IP address nor a host name")
    return value


def _contact(s: Section, n: str, d: Any) -> Any:
    return _check_contact(s, n, s.get_str(n))


def _opt_contact(s: Section, n: str, d: Any) -> Any:
    value = s.get_optional_str(n)
    return None if value is None else _check_contact(s, n, value)


def _range(lo: int, hi: int) -> Reader:
    def read(s: Section, n: str, d: Any) -> Any:
        return s.get_int(n, d, min=lo, max=hi)

    return read


def _bytes_at_least(lo: int) -> Reader:
    def read(s: Section, n: str, d: Any) -> Any:
        return s.get_int(n, d, min=lo)

    return read


def _choice(*choices: str) -> Reader:
    def read(s: Section, n: str, d: Any) -> Any:
        return s.get_choice(n, choices, d)

    return read


def _wrap_up(s: Section, n: str, d: Any) -> Any:
    value = s.raw(n, d)
    if isinstance(value, str) and value.strip().lower() == "untimed":
        raise s.error(
            n,
            "'untimed' after-call work is not supported in a SIP Cluster "
            "(guide: untimed-wrap-up-value is not supported); give seconds, 0 for none",
        )
    return s.get_int(n, d, min=0)


def _overflow(s: Section, n: str, d: Any) -> Any:
    """``*-no-answer-overflow``: DNs tried in turn after no answer; ``none`` = none."""
    items = s.get_str_list(n, list(d))
    if [i.lower() for i in items] == ["none"]:
        return ()
    for item in items:
        if not item or item.lower() in ("none", "recall", "release"):
            raise s.error(n, f"expected DNs separated by commas or 'none', got {item!r}")
    return tuple(items)


def _cti_control(s: Section, n: str, d: Any) -> Any:
    items = s.get_str_list(n, list(d))
    allowed = ("talk", "hold", "dtmf")
    for item in items:
        if item not in allowed:
            raise s.error(n, f"expected a list of {', '.join(allowed)}, got {item!r}")
    return tuple(items)


def read_digest_algorithms(s: Section, n: str, d: Any) -> Any:
    """A list of digest algorithms (RFC 8760 §2.2), preferred first; None when not given
    and ``d`` is None."""
    if d is None and n not in s:
        return None
    algorithms = tuple(s.get_str_list(n, list(d or ())))
    for algorithm in algorithms:
        if algorithm not in DIGEST_ALGORITHMS:
            raise s.error(n, f"expected some of {', '.join(DIGEST_ALGORITHMS)}, got {algorithm!r}")
    if not algorithms:
        raise s.error(n, "must name at least one algorithm")
    if len(set(algorithms)) != len(algorithms):
        raise s.error(n, "names an algorithm twice")
    return algorithms


def _session_interval(s: Section, n: str, d: Any) -> Any:
    """0 or at least 90 seconds (RFC 4028 §4: no Min-SE below 90)."""
    value = s.get_int(n, d, min=0)
    if 0 < value < 90:
        raise s.error(n, f"expected 0 (off) or at least 90 seconds (RFC 4028), got {value}")
    return value


def _min_se(s: Section, n: str, d: Any) -> Any:
    return s.get_int(n, d, min=90)


Schema = dict[str, tuple[Reader, Any]]

#: ``[switch] digest-algorithms`` values (RFC 7616 §3.4 / RFC 8760 §2.2)
DIGEST_ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")

#: Application-level [TServer] options (guide: "Configuring SIP Servers",
#: sample [TServer] section; "Partially supported SIP Server functionality").
TSERVER_OPTIONS: Schema = {
    "router-timeout": (_seconds, 10.0),
    "default-dn": (_opt_str, None),
    "extn-no-answer-timeout": (_seconds, 12.0),
    "posn-no-answer-timeout": (_seconds, 12.0),
    "agent-no-answer-timeout": (_seconds, 12.0),
    "agent-no-answer-action": (_choice("none", "notready", "logout"), "notready"),
    "extn-no-answer-overflow": (_overflow, ()),
    "posn-no-answer-overflow": (_overflow, ()),
    "agent-no-answer-overflow": (_overflow, ()),
    "after-routing-timeout": (_seconds, 18.0),
    "set-notready-on-busy": (_bool, True),
    # [agent-reservation] (guide: "Agent Reservation in SIP Cluster"): seconds
    # reservation requests for one agent are gathered, and a reservation's hold
    "request-collection-time": (_seconds, 0.3),
    "agent-reservation-timeout": (_seconds, 6.0),
    # after-call work (guide: "Emulated Agents", supported at application level)
    "legal-guard-time": (_seconds, 0.0),
    "timed-acw-in-idle": (_bool, False),
    "acw-in-idle-force-ready": (_bool, True),
    "wrap-up-time": (_wrap_up, 0),
    "emulated-login-state": (_choice("ready", "not_ready"), "not_ready"),
    "logout-on-disconnect": (_bool, False),
    "logout-on-out-of-service": (_bool, True),
    "auto-logout-timeout": (_nonneg, 0),
    "auto-logout-ready": (_bool, True),
    "sip-enable-strict-auth": (_opt_bool, None),
    # the Dial Plan DN the node queries (guide: "Configuring SIP Servers", dial-plan);
    # absent: the feature-server DN of the node's geo-location
    "dial-plan": (_opt_str, None),
    "find-trunk-by-location": (_bool, False),
    "enable-strict-location-match": (_bool, False),
    # [call-cleanup] (guide: "Configuring SIP Servers"), seconds; 0 disables each:
    # how often calls are checked, the idle time after which a call is reported and
    # its parties probed, the idle time after which it is cleared
    "periodic-check-tout": (_seconds, 600.0),
    "notify-idle-tout": (_seconds, 300.0),
    "cleanup-idle-tout": (_seconds, 3600.0),
    # reliable provisional responses (RFC 3262) through the node (guide: sample
    # [TServer] section, sip-enable-100rel)
    "sip-enable-100rel": (_bool, True),
    # session timers (RFC 4028), seconds: the interval the node asks for (0: it asks
    # for none and ignores Session-Expires) and the smallest it accepts (422 below)
    "sip-session-expires": (_session_interval, 1800),
    "sip-min-se": (_min_se, 90),
    # T-Library clients that do not read (docs/t-controller.md): bytes queued for one
    # client past which its port stops reading its requests, and past which it is
    # dropped; the node's default-port and IPport and its t-controller's ports
    "tlib-output-high-water": (_bytes_at_least(4096), 256 * 1024),
    "tlib-max-output": (_bytes_at_least(65536), 16 * 1024 * 1024),
}

#: Options of the SIP Cluster Node DN (service-type = sip-cluster-nodes).
CLUSTER_NODE_OPTIONS: Schema = {
    "applications": (_list, ()),
    "dn-owner-applications": (_list, ()),
    "siproxy-applications": (_list, ()),
    "addp-trace": (_choice("off", "local", "remote", "full"), "full"),
    "addp-timeout": (_seconds, 7.0),
    "addp-remote-timeout": (_seconds, 11.0),
    "agent-state-auto-restore": (_bool, False),
    "replace-agent-phone": (_bool, False),
    "sip-enable-strict-auth": (_bool, False),
    "sipp-oos-recheck": (_bool, False),
    "switchover-on-sipp-oos": (_bool, False),
    "smart-proxy-enabled": (_bool, False),
    "tc-reconnect-timeout": (_range(0, 60), 0),
    "tc-latency-poll-interval": (_seconds, 10.0),
}

#: Options of the SIP Outbound Proxy DN (service-type = sip-outbound-proxy).
OUTBOUND_PROXY_OPTIONS: Schema = {
    "contact": (_contact, None),
    "external-contact": (_opt_contact, None),
    # the extra SIP Cluster FQDN phones behind SBCs use: SRV records to the SBCs
    # by priority (the "sbc" VoIPService DNs), the same in every view
    "sbc-contact": (_opt_contact, None),
    "oos-check": (_nonneg, 10),
    "oos-force": (_nonneg, 2),
}

_EXTENSION_OPTIONS: Schema = {
    "password": (_opt_str, None),
    "contact": (_opt_contact, None),
    "dual-dialog-enabled": (_bool, True),
    "make-call-rfc3725-flow": (_range(0, 1), 1),
    "refer-enabled": (_bool, False),
    "use-register-for-service-state": (_bool, True),
    "use-contact-as-dn": (_bool, True),
    "sip-ring-tone-mode": (_range(0, 2), 1),
    "sip-cti-control": (_cti_control, ()),
    "sip-enable-strict-auth": (_opt_bool, None),
    "digest-algorithms": (read_digest_algorithms, None),
    "record": (_bool, False),
    "geo-location": (_opt_str, None),
}

_GATEWAY_OPTIONS: Schema = {
    "contact": (_opt_contact, None),
    "geo-location": (_opt_str, None),
    "dual-dialog-enabled": (_bool, False),
    "oos-check": (_nonneg, 0),
    "oos-force": (_nonneg, 0),
    "oos-error-check": (_bool, False),
    "oos-options-max-forwards": (_nonneg, 0),
    "prefix": (_opt_str, None),
    "priority": (_nonneg, 0),
    # the peer site of the collective this trunk leads to (roaming calls, docs/collective.md)
    "collective-site": (_opt_str, None),
    "refer-enabled": (_bool, False),
    "sip-proxy-headers-enabled": (_bool, False),
    "sip-ring-tone-mode": (_range(0, 2), 1),
    "make-call-rfc3725-flow": (_range(0, 1), 1),
}

DN_OPTIONS: dict[DnType, Schema] = {
    DnType.EXTENSION: _EXTENSION_OPTIONS,
    DnType.ACD_POSITION: _EXTENSION_OPTIONS,
    DnType.ROUTING_POINT: {"default-dn": (_opt_str, None), "geo-location": (_opt_str, None)},
    DnType.VIRTUAL_QUEUE: {"geo-location": (_opt_str, None)},
    DnType.TRUNK_GROUP: {"contact": (_opt_contact, None), "geo-location": (_opt_str, None)},
    DnType.TRUNK: _GATEWAY_OPTIONS,
}

#: VoIP Service DNs other than the two cluster services (msml, softswitch,
#: feature-server): the guide's options for those services.
SERVICE_OPTIONS: Schema = {
    **_GATEWAY_OPTIONS,
    "cpd-capability": (_opt_str, None),
    "ring-tone-on-make-call": (_bool, True),
    "sip-uri-params": (_opt_str, None),
    "subscription-id": (_opt_str, None),
    "record": (_bool, False),
    "sip-error-conversion": (_opt_str, None),
    "url": (_opt_str, None),
    # more feature-servers of the data centre, tried in turn (guide: "Configuring
    # dial-plan DNs": url, url-1 ... url-N)
    **{f"url-{n}": (_opt_str, None) for n in range(1, 10)},
}
SERVICE_TYPES = (
    "sip-cluster-nodes",
    "sip-outbound-proxy",
    "msml",
    "softswitch",
    "feature-server",
    # a Session Border Controller in front of the proxies (guide: "SIP registration in
    # failover scenarios based on SRV records"): contact, geo-location, priority
    "sbc",
)

#: Options the guide lists as supported only at application level: a DN-level
#: value is refused with that reason rather than "unknown option".
APP_LEVEL_ONLY = {
    "wrap-up-time",
    "auto-logout-timeout",
    "auto-logout-ready",
    "logout-on-disconnect",
    "emulated-login-state",
    "agent-no-answer-timeout",
    "agent-no-answer-action",
    "agent-no-answer-overflow",
}

#: [applications.NAME.sipproxy] (guide: "Configuring SIP Proxy").
SIPPROXY_OPTIONS: Schema = {
    "oos-check": (_nonneg, 5),
    "oos-force": (_nonneg, 5),
    "registrar-default-timeout": (_nonneg, 140),
    # processes sharing sip-port (docs/sip-proxy.md, "Workers"); worker I also
    # listens on worker-port-base + I (SIP) and worker-port-base + workers + I
    # (its siblings' replication links); 0: sip-port + 100
    "workers": (_range(1, 64), 1),
    "worker-port-base": (_nonneg, 0),
    # where MWI SUBSCRIBEs go; absent: the feature-server of the geo-location
    "feature-server-address": (_opt_hostport, None),
    # SIP over TLS on sip-tls-port (docs/sip-proxy.md): PEM certificate chain and
    # key (absent: certs/NAME.pem and NAME.key beside the cluster file), and the CA
    # that client certificates must come from (absent: certs/ca.pem when present)
    "tls-cert": (_opt_str, None),
    "tls-key": (_opt_str, None),
    "tls-ca": (_opt_str, None),
}

#: Ports per application kind: (required, optional).
PORTS: dict[AppKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    AppKind.SIP_SERVER: (
        ("sip-port", "default-port"),
        ("ip-port", "http-port", "management-port"),
    ),
    AppKind.T_CONTROLLER: (("tc-port",), ("smart-proxy-port", "http-port", "tc-tls-port")),
    AppKind.SIP_PROXY: (
        ("sip-port",),
        ("replication-port", "default-port", "http-port", "mgmt-port", "sip-tls-port"),
    ),
    AppKind.FEATURE_SERVER: (("http-port",), ("sip-port", "management-port")),
    AppKind.VQ_SIP_SERVER: (("default-port",), ("sip-port", "http-port", "management-port")),
    AppKind.RTM_SERVER: (("rtm-port",), ("http-port",)),
    AppKind.STATUS_AGGREGATOR: (("status-port",), ("http-port",)),
    AppKind.DIRECTOR: (("http-port",), ("director-port",)),
    AppKind.COLLECTIVE: (("http-port",), ()),
}


def _attr(option: str) -> str:
    return option.replace("-", "_")


def read_schema(section: Section, schema: Schema, *, only_given: bool = False) -> dict[str, Any]:
    """Read every option of ``schema`` (or only those present) into attr names."""
    values: dict[str, Any] = {}
    for name, (reader, default) in schema.items():
        if only_given and name not in section:
            continue
        values[_attr(name)] = reader(section, name, default)
    return values


def check_unknown(section: Section, allowed: set[str], *, dn_level: bool = False) -> None:
    """Refuse a key not in ``allowed`` with a did-you-mean; at DN level, an
    option the guide supports only at application level is refused with that reason."""
    for name in section.keys():
        if name in allowed:
            continue
        if dn_level and name in APP_LEVEL_ONLY:
            raise section.error(
                name,
                "supported only at application level in a SIP Cluster (guide: "
                "'Partially supported SIP Server functionality'); set it in [switch.tserver]",
            )
        section.check_unknown(allowed)


def read_named(s: Section, schema: Schema) -> dict[str, Any]:
    """Read every option of ``schema`` by its guide name, defaults filled in."""
    return {name: reader(s, name, default) for name, (reader, default) in schema.items()}
