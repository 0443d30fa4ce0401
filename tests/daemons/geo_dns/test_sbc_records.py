"""The SBC fail-over SRV records (guide: "SIP registration in failover scenarios
based on SRV records") and the one-port rule of the proxies' SRV records."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemons.cluster.config import load_cluster
from daemons.geo_dns.server import GeoDnsServer
from daemons.geo_dns.zones import compile_views, generate_zone_set
from daemons.runtime.config import ConfigError
from daemons.runtime.management import Metrics
from tests.daemons.geo_dns.conftest import sip_resolver

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CLUSTER = ROOT / "deploy" / "etc" / "cluster.toml"

SBCS = """
[dns.SBC_dc1]
type = "VoIPService"
service-type = "sbc"
contact = "127.0.1.45:6000"
geo-location = "dc1"

[dns.SBC_dc2]
type = "VoIPService"
service-type = "sbc"
contact = "127.0.2.45:6000"
geo-location = "dc2"
"""

PROXY_DN = 'external-contact = "spx-srv.cluster.lab"\n'


def cluster_with_sbcs(tmp_path: Path, *, sbcs: str = SBCS,
                      sbc_contact: str | None = "sip-dc.cluster.lab") -> Path:
    text = EXAMPLE_CLUSTER.read_text()
    assert PROXY_DN in text
    if sbc_contact is not None:
        text = text.replace(PROXY_DN, PROXY_DN + f'sbc-contact = "{sbc_contact}"\n', 1)
    path = tmp_path / "cluster.toml"
    path.write_text(text + sbcs)
    return path


async def test_phones_behind_sbcs_register_with_the_primary_data_centre_first(
    tmp_path: Path,
) -> None:
    """Priority 10 via DC1's SBC, 20 via DC2's, port 6000, from every data centre
    (the guide's order is the operator's, not the client's location)."""
    zones = generate_zone_set(load_cluster(cluster_with_sbcs(tmp_path)))
    server = GeoDnsServer(compile_views(zones), metrics=Metrics("test"))
    await server.start([("127.0.0.1", 0)])
    try:
        for client in ("127.0.1.9", "127.0.2.9", "127.0.0.1"):
            resolver = sip_resolver(server.bound[0], client)
            targets = await resolver.resolve("sip-dc.cluster.lab", transport="udp")
            assert [(t.host_ip, t.port) for t in targets] == [
                ("127.0.1.45", 6000), ("127.0.2.45", 6000)], client
        # the proxies' own geo-aware records are unchanged beside them
        dc2 = await sip_resolver(server.bound[0], "127.0.2.9").resolve(
            "spx-srv.cluster.lab", transport="udp")
        assert dc2[0].host_ip.startswith("127.0.2.")
    finally:
        await server.stop()


def test_explicit_priorities_win(tmp_path: Path) -> None:
    sbcs = SBCS.replace('geo-location = "dc1"\n', 'geo-location = "dc1"\npriority = 30\n', 1)
    zones = generate_zone_set(load_cluster(cluster_with_sbcs(tmp_path, sbcs=sbcs)))
    text = zones.files["cluster.lab.dc1.zone"]
    assert "_sip._udp.sip-dc.cluster.lab.\tIN\tSRV\t30 50 6000 sbc1-dc1.cluster.lab." in text
    assert "_sip._tcp.sip-dc.cluster.lab.\tIN\tSRV\t20 50 6000 sbc1-dc2.cluster.lab." in text


@pytest.mark.parametrize(("sbcs", "sbc_contact", "key", "reason"), [
    (SBCS, None, "dns.SIPProxy_DN.sbc-contact", "required with the sbc DN"),
    ("", "sip-dc.cluster.lab", "dns.SIPProxy_DN.sbc-contact", "would be empty"),
    (SBCS, "sip-dc.example.com", "dns.SIPProxy_DN.sbc-contact", "outside the switch domain"),
    (SBCS.replace('"dc2"', '"dc9"'), "sip-dc.cluster.lab", "dns.SBC_dc2.geo-location",
     "not a geo-location"),
])
def test_bad_sbc_configuration_is_refused(tmp_path: Path, sbcs: str, sbc_contact: str | None,
                                          key: str, reason: str) -> None:
    path = cluster_with_sbcs(tmp_path, sbcs=sbcs, sbc_contact=sbc_contact)
    with pytest.raises(ConfigError, match=reason) as info:
        generate_zone_set(load_cluster(path))
    assert info.value.key == key


def test_proxies_on_different_ports_are_refused(tmp_path: Path) -> None:
    """The guide: every SIP Proxy uses the same sip-port, the one of the SRV records."""
    text = EXAMPLE_CLUSTER.read_text()
    marker = 'host = "127.0.2.22"\ngeo-location = "dc2"\nsip-port = 5060'
    assert marker in text
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace(marker, marker[: -len("5060")] + "5070"))
    with pytest.raises(ConfigError, match="differs from the other SIP Proxies' 5060") as info:
        generate_zone_set(load_cluster(path))
    assert info.value.key == "applications.SIPProxy_dc2_2.sip-port"


def test_sips_records_need_one_tls_port_on_every_proxy(tmp_path: Path) -> None:
    """The _sips._tcp records give one port, like the _sip ones: a proxy whose
    sip-tls-port differs (or is 0) is refused with its key; proxies without
    sip-tls-port get no SIPS record at all."""
    text = EXAMPLE_CLUSTER.read_text()
    first = "sip-tls-port = 5061"
    assert text.count(first) == 4
    for value, reason in (("5062", "differs from the other SIP Proxies' 5061"),
                          ("0", "needs a fixed sip-tls-port")):
        path = tmp_path / f"tls-{value}.toml"
        path.write_text(text.replace(first, f"sip-tls-port = {value}", 1))
        with pytest.raises(ConfigError) as err:
            generate_zone_set(load_cluster(path))
        assert err.value.key == "applications.SIPProxy_dc1_1.sip-tls-port", str(err.value)
        assert reason in err.value.reason
    path = tmp_path / "no-tls.toml"
    path.write_text(text.replace(first, ""))
    zones = generate_zone_set(load_cluster(path))
    for zone in zones.files.values():
        assert "_sips._tcp" not in zone and "SIPS+D2T" not in zone
