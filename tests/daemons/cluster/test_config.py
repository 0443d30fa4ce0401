"""The cluster file: the example loads, every kind of error names file, key, reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemons.cluster.config import (
    AppKind,
    ClusterConfigError,
    DnType,
    OwnershipKind,
    load_cluster,
)
from daemons.runtime.config import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "etc" / "cluster.toml"

MINIMAL = """
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"

[switch.tserver]
default-dn = "5000"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]
sip-enable-strict-auth = true

[dns.5000]
type = "RoutingPoint"

[dns.1001]
type = "Extension"
contact = "*"
password = "s3cret"

[applications.SIPS_1]
kind = "sip-server"
host = "127.0.1.11"
geo-location = "dc1"
sip-port = 5070
default-port = 7000

[applications.TC_1]
kind = "t-controller"
host = "127.0.1.11"
sip-server = "SIPS_1"
tc-port = 7002

[applications.SPX_1]
kind = "sip-proxy"
host = "127.0.1.21"
geo-location = "dc1"
sip-port = 5060
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    return load_cluster(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


# -- the example file -----------------------------------------------------------


def test_example_file_loads() -> None:
    cfg = load_cluster(EXAMPLE)
    assert cfg.switch.name == "SIP_Cluster"
    assert cfg.switch.realm == "cluster.lab"
    assert cfg.geo_locations() == ["dc1", "dc2"]
    nodes = cfg.cluster_nodes()
    assert [n.name for n in nodes] == ["SIPS_dc1_1", "SIPS_dc1_2", "SIPS_dc2_1", "SIPS_dc2_2"]
    assert [n.name for n in cfg.cluster_nodes("dc2")] == ["SIPS_dc2_1", "SIPS_dc2_2"]
    for node in nodes:
        tc = cfg.t_controller_for(node.name)
        assert tc.kind is AppKind.T_CONTROLLER
        assert tc.host == node.host
        assert tc.geo_location == node.geo_location
        assert cfg.sip_server_for(tc.name) == node
    proxies = cfg.by_kind(AppKind.SIP_PROXY)
    assert len(proxies) == 4
    assert {p.geo_location for p in proxies} == {"dc1", "dc2"}
    assert all(p.host.startswith("127.0.1.") for p in cfg.by_kind(AppKind.SIP_PROXY, "dc1"))
    assert all(p.host.startswith("127.0.2.") for p in cfg.by_kind(AppKind.SIP_PROXY, "dc2"))
    extensions = [f"{n}" for n in range(1001, 1011)]
    for number in extensions:
        dn = cfg.dns[number]
        assert dn.type is DnType.EXTENSION
        assert dn.ownership_kind is OwnershipKind.SIP
        assert dn.password and dn.password != number
    assert cfg.dns["2001"].ownership_kind is OwnershipKind.TLIB
    assert cfg.dns["5000"].type is DnType.ROUTING_POINT
    ts = cfg.tserver_for("TC_dc1_1")
    assert ts.default_dn == "5999" and ts.router_timeout == 10
    assert ts.wrap_up_time == 5 and ts.logout_on_disconnect is True
    assert cfg.nodes.dn_owner_applications == ("Cluster",)
    assert cfg.nodes.agent_state_auto_restore is True
    assert cfg.outbound_proxy is not None and cfg.outbound_proxy.oos_check == 10
    assert cfg.applications["SIPProxy_dc1_1"].options["oos-check"] == 5
    assert {p.port("replication-port") for p in proxies} == {6060}
    assert cfg.strict_auth("1001", "SIPS_dc1_1") is True


def test_defaults_follow_the_guide(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    ts = cfg.tserver_for("SIPS_1")
    assert ts.router_timeout == 10.0
    assert ts.extn_no_answer_timeout == 12.0
    assert ts.wrap_up_time == 0
    assert ts.auto_logout_timeout == 0
    assert ts.emulated_login_state == "not_ready"
    n = cfg.nodes
    assert (n.addp_timeout, n.addp_remote_timeout, n.addp_trace) == (7.0, 11.0, "full")
    assert n.agent_state_auto_restore is False
    assert n.smart_proxy_enabled is False
    assert n.tc_reconnect_timeout == 0
    assert n.tc_latency_poll_interval == 10.0
    assert cfg.switch.realm == "cluster.lab"  # defaults to the domain
    assert cfg.outbound_proxy is None


def test_application_overrides_switch_tserver(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "default-port = 7000\n",
        "default-port = 7000\n[applications.SIPS_1.tserver]\n"
        "wrap-up-time = 30\nsip-enable-strict-auth = false\n",
        1,
    )
    cfg = load_text(tmp_path, text.replace('password = "s3cret"', 'password = "1001"'))
    assert cfg.tserver_for("TC_1").wrap_up_time == 30
    assert cfg.tserver_for("SIPS_1").default_dn == "5000"
    # the application level disables strict auth, so the weak password passes
    assert cfg.strict_auth("1001", "SIPS_1") is False


def test_tlib_output_bounds(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    ts = cfg.tserver_for("TC_1")  # a t-controller's ports follow its node's options
    assert (ts.tlib_output_high_water, ts.tlib_max_output) == (256 * 1024, 16 * 1024 * 1024)
    text = MINIMAL.replace('default-dn = "5000"', 'default-dn = "5000"\n'
                           "tlib-output-high-water = 65536\ntlib-max-output = 1048576", 1)
    ts = load_text(tmp_path, text).tserver_for("TC_1")
    assert (ts.tlib_output_high_water, ts.tlib_max_output) == (65536, 1048576)
    small = MINIMAL.replace('default-dn = "5000"', 'default-dn = "5000"\n'
                            "tlib-max-output = 1024", 1)
    error = error_of(tmp_path, small)
    assert error.key == "switch.tserver.tlib-max-output" and "65536" in str(error)
    # each bound is valid alone, the pair is not: the node's own level is named
    crossed = MINIMAL.replace("default-port = 7000\n", "default-port = 7000\n"
                              "[applications.SIPS_1.tserver]\ntlib-max-output = 100000\n", 1)
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, crossed).tserver_for("TC_1")
    assert info.value.key == "applications.SIPS_1.tserver.tlib-max-output"
    assert "tlib-output-high-water (262144)" in str(info.value)


def test_application_lookup_errors(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        cfg.application("SIPS_2")
    assert info.value.key == "applications.SIPS_2"
    assert "did you mean 'SIPS_1'" in info.value.reason
    with pytest.raises(ConfigError) as info:
        cfg.application("SPX_1", AppKind.T_CONTROLLER)
    assert info.value.key == "applications.SPX_1.kind"


# -- errors: file, key, reason -------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        # unknown keys, with a did-you-mean
        ('default-dn = "5000"', 'default-dn = "5000"\nx = 1', "switch.tserver.x", "unknown option"),
        (
            'default-dn = "5000"',
            'default-dn = "5000"\nrouter-timout = 3',
            "switch.tserver.router-timout",
            "did you mean 'router-timeout'",
        ),
        (
            "sip-port = 5070",
            "sip-port = 5070\nsip-prot = 1",
            "applications.SIPS_1.sip-prot",
            "did you mean 'sip-port'",
        ),
        (
            "tc-port = 7002",
            "tc-port = 7002\ntcport = 1",
            "applications.TC_1.tcport",
            "did you mean 'tc-port'",
        ),
        # bad values
        ("sip-port = 5070", "sip-port = 70000", "applications.SIPS_1.sip-port", "between 0 and"),
        ("sip-port = 5070", 'sip-port = "x"', "applications.SIPS_1.sip-port", "integer"),
        ('kind = "sip-proxy"', 'kind = "proxy"', "applications.SPX_1.kind", "expected one of"),
        ('type = "RoutingPoint"', 'type = "RP"', "dns.5000.type", "expected one of"),
        ('host = "127.0.1.21"', 'host = "a b"', "applications.SPX_1.host", "IP address"),
        (
            "sip-enable-strict-auth = true",
            "tc-reconnect-timeout = 61",
            "dns.SIP_Cluster_DN.tc-reconnect-timeout",
            "between 0 and 60",
        ),
        (
            'default-dn = "5000"',
            'wrap-up-time = "untimed"',
            "switch.tserver.wrap-up-time",
            "untimed",
        ),
        (
            'password = "s3cret"',
            'password = "s3cret"\nwrap-up-time = 5',
            "dns.1001.wrap-up-time",
            "application level",
        ),
        (
            'password = "s3cret"',
            'password = "s3cret"\nsip-cti-control = "talk,jump"',
            "dns.1001.sip-cti-control",
            "talk, hold, dtmf",
        ),
        # missing required options
        (
            'geo-location = "dc1"\nsip-port = 5060',
            "sip-port = 5060",
            "applications.SPX_1.geo-location",
            "required",
        ),
        ("tc-port = 7002", "", "applications.TC_1.tc-port", "required option is missing"),
        ('domain = "cluster.lab"', "", "switch.domain", "required option is missing"),
    ],
)
def test_option_errors_name_file_key_reason(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    assert old in MINIMAL
    err = error_of(tmp_path, MINIMAL.replace(old, new, 1))
    assert err.file == str(tmp_path / "cluster.toml")
    assert err.key == key
    assert reason in err.reason
    assert str(err).startswith(f"{err.file}: {key}: ")


def test_sip_proxy_replication_port_and_feature_server_address(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    spx = cfg.applications["SPX_1"]
    assert spx.port("replication-port") is None
    assert spx.options["feature-server-address"] is None
    text = MINIMAL.replace(
        "sip-port = 5060\n",
        "sip-port = 5060\nreplication-port = 6060\n\n[applications.SPX_1.sipproxy]\n"
        'feature-server-address = "127.0.1.31:5070"\n',
    )
    spx = load_text(tmp_path, text).applications["SPX_1"]
    assert spx.port("replication-port") == 6060
    assert spx.options["feature-server-address"] == ("127.0.1.31", 5070)
    v6 = text.replace('"127.0.1.31:5070"', '"[::1]:5070"')
    assert load_text(tmp_path, v6).applications["SPX_1"].options[
        "feature-server-address"] == ("::1", 5070)


@pytest.mark.parametrize("value", ['"127.0.1.31"', '"127.0.1.31:0"', '":5070"',
                                   '"127.0.1.31:x"', "5070"])
def test_feature_server_address_errors(tmp_path: Path, value: str) -> None:
    text = MINIMAL.replace(
        "sip-port = 5060\n",
        f"sip-port = 5060\n\n[applications.SPX_1.sipproxy]\nfeature-server-address = {value}\n",
    )
    err = error_of(tmp_path, text)
    assert err.key == "applications.SPX_1.sipproxy.feature-server-address"


def test_replication_port_collides_like_any_port(tmp_path: Path) -> None:
    text = MINIMAL.replace("sip-port = 5060\n", "sip-port = 5060\nreplication-port = 5060\n")
    assert cross_problems(tmp_path, text) == [
        (
            "applications.SPX_1.replication-port",
            "port 5060 on 127.0.1.21 is already used by applications.SPX_1.sip-port",
        )
    ]


def test_syntax_error_names_file(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL + "\n[switch\n")
    assert err.key is None and "not valid TOML" in err.reason
    err2 = error_of(tmp_path, "")
    assert err2.key == "switch" and "required" in err2.reason


def test_missing_cluster_node_dn(tmp_path: Path) -> None:
    text = MINIMAL.replace('service-type = "sip-cluster-nodes"', 'service-type = "msml"')
    text = re.sub(
        r"applications = .*\n|siproxy-applications = .*\n|sip-enable-strict.*\n", "", text, count=3
    )
    err = error_of(tmp_path, text)
    assert err.key == "dns" and "sip-cluster-nodes" in err.reason


# -- cross-checks ---------------------------------------------------------------


def cross_problems(tmp_path: Path, text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(ClusterConfigError) as info:
        load_text(tmp_path, text)
    for p in info.value.problems:
        assert p.file == str(tmp_path / "cluster.toml")
    return [(p.key, p.reason) for p in info.value.problems]


def test_duplicate_port_on_same_host(tmp_path: Path) -> None:
    problems = cross_problems(tmp_path, MINIMAL.replace("tc-port = 7002", "tc-port = 7000"))
    assert problems == [
        (
            "applications.TC_1.tc-port",
            "port 7000 on 127.0.1.11 is already used by applications.SIPS_1.default-port",
        )
    ]


def test_same_port_on_other_hosts_and_port_zero_are_fine(tmp_path: Path) -> None:
    text = MINIMAL.replace("sip-port = 5060", "sip-port = 5070")  # other host
    text = text.replace("tc-port = 7002", "tc-port = 0").replace(
        "default-port = 7000", "default-port = 0"
    )
    cfg = load_text(tmp_path, text)
    assert cfg.applications["SPX_1"].ports["sip-port"] == 5070


def test_unknown_application_references(tmp_path: Path) -> None:
    text = MINIMAL.replace('sip-server = "SIPS_1"', 'sip-server = "SIPS_l"')
    problems = cross_problems(tmp_path, text)
    assert (
        "applications.TC_1.sip-server",
        "unknown application 'SIPS_l' (did you mean 'SIPS_1'?)",
    ) in problems
    assert ("applications.SIPS_1", "cluster node without a t-controller beside it") in problems

    text = MINIMAL.replace('applications = ["SIPS_1"]', 'applications = ["SIPS_1", "SIPS_9"]')
    problems = cross_problems(tmp_path, text)
    assert problems[0][0] == "dns.SIP_Cluster_DN.applications"
    assert "unknown application 'SIPS_9'" in problems[0][1]

    text = MINIMAL.replace('siproxy-applications = ["SPX_1"]', 'siproxy-applications = ["TC_1"]')
    problems = cross_problems(tmp_path, text)
    assert (
        "dns.SIP_Cluster_DN.siproxy-applications",
        "'TC_1' is a t-controller, not a sip-proxy",
    ) in problems
    assert (
        "dns.SIP_Cluster_DN.siproxy-applications",
        "sip-proxy 'SPX_1' is not listed (every SIP Proxy must be)",
    ) in problems


def test_default_dn_must_be_a_dn(tmp_path: Path) -> None:
    problems = cross_problems(
        tmp_path, MINIMAL.replace('default-dn = "5000"', 'default-dn = "5001"')
    )
    assert problems == [
        ("switch.tserver.default-dn", "'5001' is not a DN of the switch (did you mean '5000'?)")
    ]
    problems = cross_problems(
        tmp_path, MINIMAL.replace('default-dn = "5000"', 'default-dn = "SIP_Cluster_DN"')
    )
    assert "VoIPService" in problems[0][1]


@pytest.mark.parametrize(
    ("password_line", "reason"),
    [
        ("", "a password is required"),
        ('password = ""', "a password is required"),
        ('password = "1001"', "the password must differ from the DN"),
    ],
)
def test_strict_auth_violations(tmp_path: Path, password_line: str, reason: str) -> None:
    text = MINIMAL.replace('password = "s3cret"', password_line)
    problems = cross_problems(tmp_path, text)
    assert problems == [("dns.1001.password", f"sip-enable-strict-auth is true: {reason}")]


def test_strict_auth_reported_per_dn(tmp_path: Path) -> None:
    extra = "".join(
        f'\n[dns.{n}]\ntype = "Extension"\ncontact = "*"\npassword = "{n}"\n' for n in (1002, 1003)
    )
    with pytest.raises(ClusterConfigError) as info:
        load_text(tmp_path, MINIMAL + extra)
    keys = [p.key for p in info.value.problems]
    assert keys == ["dns.1002.password", "dns.1003.password"]
    assert "2 problems" in str(info.value)


def test_strict_auth_levels(tmp_path: Path) -> None:
    weak = MINIMAL.replace('password = "s3cret"', 'password = "1001"')
    # off at cluster level: no check
    cfg = load_text(
        tmp_path, weak.replace("sip-enable-strict-auth = true", "sip-enable-strict-auth = false")
    )
    assert cfg.strict_auth("1001", "SIPS_1") is False
    # off on the DN itself wins over the cluster level
    cfg = load_text(
        tmp_path,
        weak.replace('password = "1001"', 'password = "1001"\nsip-enable-strict-auth = false'),
    )
    assert cfg.strict_auth("1001", "SIPS_1") is False
    # on at DN level with the cluster level off: checked
    text = weak.replace("sip-enable-strict-auth = true", "sip-enable-strict-auth = false")
    text = text.replace('password = "1001"', 'password = "1001"\nsip-enable-strict-auth = true')
    assert cross_problems(tmp_path, text)[0][0] == "dns.1001.password"
    # PSTN agents (contact not "*") do not register: no password needed
    cfg = load_text(tmp_path, weak.replace('contact = "*"', 'contact = "sip:+1555@10.0.0.1"'))
    assert cfg.dns["1001"].ownership_kind is OwnershipKind.TLIB


def test_ha_pairs(tmp_path: Path) -> None:
    backup = (
        '\n[applications.SIPS_1_B]\nkind = "sip-server"\nhost = "127.0.1.13"\n'
        'geo-location = "dc1"\nsip-port = 5070\ndefault-port = 7000\n'
    )
    text = MINIMAL.replace(
        'geo-location = "dc1"\nsip-port = 5070',
        'geo-location = "dc1"\nbackup = "SIPS_1_B"\nsip-port = 5070',
        1,
    )
    cfg = load_text(tmp_path, text + backup)
    assert cfg.applications["SIPS_1"].backup == "SIPS_1_B"
    # a backup in another data centre is refused
    problems = cross_problems(tmp_path, text + backup.replace('"dc1"', '"dc2"'))
    assert problems[0][0] == "applications.SIPS_1.backup"
    assert "geo-location" in problems[0][1]
    # a backup listed as a cluster node is refused
    listed = text.replace('applications = ["SIPS_1"]', 'applications = ["SIPS_1", "SIPS_1_B"]')
    problems = cross_problems(tmp_path, listed + backup)
    assert (
        "dns.SIP_Cluster_DN.applications",
        "'SIPS_1_B' is the backup of 'SIPS_1': list primaries only",
    ) in problems
    # a sip-server that is neither a node nor a backup
    problems = cross_problems(tmp_path, MINIMAL + backup)
    assert problems == [
        (
            "dns.SIP_Cluster_DN.applications",
            "sip-server 'SIPS_1_B' is neither listed nor the backup of a listed one",
        )
    ]


def test_smart_proxy_enabled_needs_smart_proxy_ports(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "sip-enable-strict-auth = true", "sip-enable-strict-auth = true\nsmart-proxy-enabled = true"
    )
    problems = cross_problems(tmp_path, text)
    assert problems == [
        (
            "applications.TC_1.smart-proxy-port",
            "required because dns.SIP_Cluster_DN.smart-proxy-enabled is true",
        )
    ]
    ok = text.replace("tc-port = 7002", "tc-port = 7002\nsmart-proxy-port = 7003")
    assert load_text(tmp_path, ok).nodes.smart_proxy_enabled is True


def test_switchover_requires_recheck(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "sip-enable-strict-auth = true",
        "sip-enable-strict-auth = true\nswitchover-on-sipp-oos = true",
    )
    assert cross_problems(tmp_path, text) == [
        ("dns.SIP_Cluster_DN.switchover-on-sipp-oos", "requires sipp-oos-recheck = true")
    ]


# -- no-answer overflow and digest secret ----------------------------------------


def test_no_answer_overflow_options(tmp_path: Path) -> None:
    text = MINIMAL.replace('default-dn = "5000"', 'default-dn = "5000"\n'
                           'extn-no-answer-overflow = "5000,1001"\n'
                           'agent-no-answer-overflow = "none"')
    ts = load_text(tmp_path, text).tserver_for("SIPS_1")
    assert ts.extn_no_answer_overflow == ("5000", "1001")
    assert ts.agent_no_answer_overflow == ()
    assert ts.posn_no_answer_overflow == ()
    problems = cross_problems(tmp_path, MINIMAL.replace(
        'default-dn = "5000"', 'default-dn = "5000"\nextn-no-answer-overflow = "1002"'))
    assert problems == [("switch.tserver.extn-no-answer-overflow",
                         "'1002' is not a DN of the switch (did you mean '1001'?)")]
    err = error_of(tmp_path, MINIMAL.replace(
        'default-dn = "5000"', 'default-dn = "5000"\nposn-no-answer-overflow = "recall"'))
    assert err.key == "switch.tserver.posn-no-answer-overflow"
    dn_level = MINIMAL.replace('password = "s3cret"',
                               'password = "s3cret"\nagent-no-answer-overflow = "5000"')
    assert "only at application level" in error_of(tmp_path, dn_level).reason


def test_digest_secret_is_shared_by_every_node(tmp_path: Path) -> None:
    derived = load_text(tmp_path, MINIMAL).switch
    assert derived.digest_secret is None
    # no secret in the file: derived from switch name + realm, the same on every node
    assert derived.nonce_secret() == load_text(tmp_path, MINIMAL).switch.nonce_secret()
    other = load_text(tmp_path, MINIMAL.replace('name = "SIP_Cluster"', 'name = "Other"'))
    assert other.switch.nonce_secret() != derived.nonce_secret()
    given = load_text(tmp_path, MINIMAL.replace(
        'domain = "cluster.lab"', 'domain = "cluster.lab"\ndigest-secret = "0123456789abcdef-x"'))
    assert given.switch.digest_secret == "0123456789abcdef-x"
    assert len(given.switch.nonce_secret()) == 32
    assert given.switch.nonce_secret() != derived.nonce_secret()
    short = error_of(tmp_path, MINIMAL.replace(
        'domain = "cluster.lab"', 'domain = "cluster.lab"\ndigest-secret = "short"'))
    assert short.key == "switch.digest-secret"


def test_digest_algorithms(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.switch.digest_algorithms == ("SHA-256", "MD5")  # RFC 8760 order
    assert ("baresip v1.*", ("MD5",)) in cfg.switch.digest_user_agents
    assert cfg.dns["1001"].digest_algorithms is None
    only_md5 = MINIMAL.replace('domain = "cluster.lab"',
                               'domain = "cluster.lab"\ndigest-algorithms = "MD5"')
    assert load_text(tmp_path, only_md5).switch.digest_algorithms == ("MD5",)
    bad = error_of(tmp_path, MINIMAL.replace(
        'domain = "cluster.lab"', 'domain = "cluster.lab"\ndigest-algorithms = ["SHA-1"]'))
    assert bad.key == "switch.digest-algorithms" and "'SHA-1'" in bad.reason


def test_dns_servers(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).switch.dns_servers == ()
    given = MINIMAL.replace('domain = "cluster.lab"', 'domain = "cluster.lab"\n'
                            'dns-servers = ["127.0.1.53:5300", "10.0.0.2", "[::1]:53"]')
    assert load_text(tmp_path, given).switch.dns_servers == (
        "127.0.1.53:5300", "10.0.0.2", "[::1]:53")
    for bad_value in ('["ns.example.com:53"]', '["127.0.1.53:0"]', '["127.0.1.53:x"]', "5"):
        bad = error_of(tmp_path, MINIMAL.replace(
            'domain = "cluster.lab"', f'domain = "cluster.lab"\ndns-servers = {bad_value}'))
        assert bad.key == "switch.dns-servers"


def test_digest_user_agents_and_account_algorithms(tmp_path: Path) -> None:
    table = MINIMAL.replace('[dns.1001]\n', '[switch.digest-user-agents]\n'
                            '"Acme*" = ["MD5"]\n"" = "MD5"\n\n[dns.1001]\n'
                            'digest-algorithms = ["SHA-256"]\n')
    cfg = load_text(tmp_path, table)
    assert cfg.switch.digest_user_agents == (("Acme*", ("MD5",)), ("", ("MD5",)))
    assert cfg.dns["1001"].digest_algorithms == ("SHA-256",)
    narrow = MINIMAL.replace('domain = "cluster.lab"',
                             'domain = "cluster.lab"\ndigest-algorithms = ["SHA-256"]')
    wider = error_of(tmp_path, narrow.replace('[dns.1001]\n', '[switch.digest-user-agents]\n'
                                              '"Acme*" = ["MD5"]\n\n[dns.1001]\n'))
    assert wider.key == "switch.digest-user-agents.Acme*" and "MD5" in wider.reason
    account = error_of(tmp_path, narrow.replace('[dns.1001]\n',
                                                '[dns.1001]\ndigest-algorithms = "MD5"\n'))
    assert "dns.1001.digest-algorithms" in str(account) and "MD5" in str(account)
