"""Zone generation from the cluster file (guide: "Configuring DNS Records"),
the checked-in deploy/dns files, the views file and view selection."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.name
import dns.rdatatype
import pytest

from daemons.cluster.config import load_cluster
from daemons.geo_dns.zones import (
    ViewSpec,
    ZoneError,
    ZoneSet,
    compile_views,
    generate_zone_set,
    load_views_file,
    render_named_conf,
    render_views_file,
    select_view,
    write_zone_set,
)
from daemons.runtime.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"
DEPLOY_DNS = ROOT / "deploy" / "dns"


def _srv(zone_set: ZoneSet, view: str, proto: str) -> dict[str, tuple[int, int, int]]:
    """target address -> (priority, weight, port) of _sip._PROTO.spx-srv in ``view``."""
    compiled = {v.name: v for v in compile_views(zone_set)}[view]
    zone = compiled.zones[dns.name.from_text("cluster.lab.")]
    srv = zone.get_rdataset(f"_sip._{proto}.spx-srv.cluster.lab.", "SRV")
    assert srv is not None
    out = {}
    for rd in srv:
        a = zone.get_rdataset(rd.target, "A")
        assert a is not None, rd.target
        out[a[0].address] = (rd.priority, rd.weight, rd.port)
    return out


def test_checked_in_files_are_up_to_date(example_zone_set: ZoneSet, tmp_path: Path) -> None:
    written = write_zone_set(example_zone_set, tmp_path)
    names = {p.name for p in written}
    assert names == {"cluster.lab.dc1.zone", "cluster.lab.dc2.zone", "views.toml", "named.conf"}
    for path in written:
        checked_in = DEPLOY_DNS / path.name
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in} is stale: run sipcluster geo-dns zones "
            f"--config deploy/etc/cluster.toml --out deploy/dns"
        )


def test_guide_priorities_per_data_centre(example_zone_set: ZoneSet) -> None:
    dc1 = {"127.0.1.21", "127.0.1.22"}
    dc2 = {"127.0.2.21", "127.0.2.22"}
    for proto in ("udp", "tcp"):
        for view, local, remote in (("dc1", dc1, dc2), ("dc2", dc2, dc1), ("default", dc1, dc2)):
            srv = _srv(example_zone_set, view, proto)
            assert srv == {**{a: (10, 50, 5060) for a in local},
                           **{a: (200, 50, 5060) for a in remote}}


def test_views_match_lab_subnets(example_zone_set: ZoneSet) -> None:
    views = compile_views(example_zone_set)
    assert [v.name for v in views] == ["dc1", "dc2", "default"]
    pick = {addr: select_view(views, addr) for addr in
            ("127.0.1.9", "127.0.1.254", "127.0.2.9", "127.0.0.1", "127.0.3.1", "::1",
             "::ffff:127.0.2.7")}
    assert {a: v.name if v else None for a, v in pick.items()} == {
        "127.0.1.9": "dc1", "127.0.1.254": "dc1", "127.0.2.9": "dc2", "127.0.0.1": "default",
        "127.0.3.1": "default", "::1": "default", "::ffff:127.0.2.7": "dc2",
    }
    assert select_view(views, "not-an-address") is None


def test_longest_prefix_wins_whatever_the_order() -> None:
    zone = ("$ORIGIN x.lab.\n$TTL 60\n@ IN SOA ns hm 1 60 60 60 60\n@ IN NS ns\n"
            "ns IN A 127.0.0.53\n")
    specs = (
        ViewSpec("wide", (ipaddress.ip_network("127.0.0.0/8"),), {"x.lab": "x.zone"}),
        ViewSpec("narrow", (ipaddress.ip_network("127.0.1.0/24"),), {"x.lab": "x.zone"}),
        ViewSpec("host", (ipaddress.ip_network("127.0.1.7/32"),), {"x.lab": "x.zone"}),
    )
    views = compile_views(ZoneSet(specs, {"x.zone": zone}))
    assert select_view(views, "127.0.1.7").name == "host"  # type: ignore[union-attr]
    assert select_view(views, "127.0.1.8").name == "narrow"  # type: ignore[union-attr]
    assert select_view(views, "127.0.2.8").name == "wide"  # type: ignore[union-attr]
    assert select_view(views, "10.0.0.1") is None


def test_records_of_the_example(example_zone_set: ZoneSet) -> None:
    text = example_zone_set.files["cluster.lab.dc1.zone"]
    for line in (
        'cluster.lab.\tIN\tNAPTR\t10 50 "s" "SIP+D2T" "" _sip._tcp.spx-srv.cluster.lab.',
        'spx-srv.cluster.lab.\tIN\tNAPTR\t20 50 "s" "SIP+D2U" "" _sip._udp.spx-srv.cluster.lab.',
        "spx1-dc1.cluster.lab.\tIN\tA\t127.0.1.21",
        "spx2-dc2.cluster.lab.\tIN\tA\t127.0.2.22",
        "node1-dc2.cluster.lab.\tIN\tA\t127.0.2.11",
        "ns.cluster.lab.\tIN\tA\t127.0.1.53",
        "spx-srv.cluster.lab.\tIN\tA\t127.0.1.21",
    ):
        assert line in text.splitlines()
    assert "spx-srv.cluster.lab.\tIN\tA\t127.0.2.21" not in text
    assert "127.0.2.53" in example_zone_set.files["cluster.lab.dc2.zone"]


def test_explicit_subnets_default_view_and_ns(example_zone_set: ZoneSet) -> None:
    cfg = load_cluster(EXAMPLE_CLUSTER)
    zs = generate_zone_set(
        cfg, subnets={"dc1": ["10.1.0.0/16", "127.0.1.0/24"], "dc2": ["10.2.0.0/16"]},
        default_view="dc2", dns_addresses={"dc1": "10.1.0.53"},
    )
    views = compile_views(zs)
    assert select_view(views, "10.1.200.3").name == "dc1"  # type: ignore[union-attr]
    assert select_view(views, "127.0.2.5").name == "default"  # type: ignore[union-attr]
    assert zs.views[-1].zones == {"cluster.lab": "cluster.lab.dc2.zone"}
    assert "ns.cluster.lab.\tIN\tA\t10.1.0.53" in zs.files["cluster.lab.dc1.zone"]
    assert zs.views[0].name == "dc1"  # the /24 is the most specific: BIND checks it first
    conf = render_named_conf(zs)
    assert conf.index('view "dc1"') < conf.index('view "dc2"') < conf.index('view "default"')
    assert "match-clients { 10.1.0.0/16; 127.0.1.0/24; };" in conf


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"default_view": "dc9"}, "default view 'dc9'"),
        ({"subnets": {"dc1": ["127.0.1.0/24"]}}, "no client subnet for geo-location 'dc2'"),
        ({"subnets": {"dc1": ["127.0.1.1/24"], "dc2": ["127.0.2.0/24"]}}, "host bits set"),
        ({"subnets": {"dc7": ["127.0.7.0/24"]}}, "unknown geo-location 'dc7'"),
    ],
)
def test_bad_generation_options(kwargs: dict[str, Any], reason: str) -> None:
    cfg = load_cluster(EXAMPLE_CLUSTER)
    with pytest.raises(ConfigError, match=reason):
        generate_zone_set(cfg, **kwargs)


def test_proxy_without_fixed_port_is_refused(tmp_path: Path) -> None:
    text = EXAMPLE_CLUSTER.read_text()
    marker = '[applications.SIPProxy_dc2_2]\nkind = "sip-proxy"\nhost = "127.0.2.22"\n' \
             'geo-location = "dc2"\nsip-port = 5060'
    assert marker in text
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace(marker, marker[: -len("5060")] + "0"))
    with pytest.raises(ConfigError) as info:
        generate_zone_set(load_cluster(path))
    assert info.value.key == "applications.SIPProxy_dc2_2.sip-port"


def test_views_file_round_trip(example_zone_set: ZoneSet) -> None:
    loaded = load_views_file(DEPLOY_DNS)
    assert loaded == example_zone_set
    assert render_views_file(loaded) == (DEPLOY_DNS / "views.toml").read_text()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[view]]\nname = "a"\nmatch-clients = ["any"]\nzonez = {}\n', "view[0].zonez"),
        ('[[view]]\nname = "a"\nmatch-clients = ["300.0.0.0/8"]\n'
         '[view.zones]\n"x.lab" = "x.zone"\n', "view[0].match-clients"),
        ('[[view]]\nname = "a"\nmatch-clients = ["any"]\n[view.zones]\n"x.lab" = "nope.zone"\n',
         "view[0].zones.x.lab"),
        ('colour = 1\n', "colour"),
        ('', "view"),
    ],
)
def test_bad_views_file(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "views.toml").write_text(text)
    with pytest.raises(ZoneError) as info:
        load_views_file(tmp_path)
    assert info.value.key == key


def test_broken_zone_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "views.toml").write_text(
        '[[view]]\nname = "a"\nmatch-clients = ["any"]\n[view.zones]\n"x.lab" = "x.zone"\n')
    (tmp_path / "x.zone").write_text("$ORIGIN x.lab.\n@ 60 IN SOA ns hm 1 2\n")
    with pytest.raises(ZoneError) as info:
        compile_views(load_views_file(tmp_path))
    assert info.value.file == "x.zone"


def test_client_of_no_data_centre_gets_the_view_of_the_address_it_asked(
    example_zone_set: ZoneSet,
) -> None:
    views = compile_views(example_zone_set)

    def name(source: str, destination: str | None) -> str | None:
        view = select_view(views, source, destination)
        return view.name if view is not None else None

    assert name("127.0.0.1", "127.0.2.53") == "dc2"   # a resolver on 127.0.0.1 asks DC2's DNS
    assert name("127.0.0.1", "127.0.1.53") == "dc1"
    assert name("127.0.1.9", "127.0.2.53") == "dc1"   # a data centre's client keeps its own
    assert name("127.0.0.1", "127.0.0.1") == "default"
    assert name("127.0.0.1", None) == "default"
