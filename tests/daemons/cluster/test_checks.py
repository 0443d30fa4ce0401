"""Cross-checks of the cluster file: every family runs, in the order of CHECKS."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemons.cluster import config
from daemons.cluster.checks import CHECKS, ClusterConfigError, cross_check
from daemons.cluster.load import parse_cluster
from daemons.runtime.config import Section

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "etc" / "cluster.toml"


def example() -> dict[str, Any]:
    with EXAMPLE.open("rb") as f:
        return tomllib.load(f)


def test_example_passes_every_check() -> None:
    cfg = config.load_cluster(EXAMPLE)
    assert [list(check(cfg)) for check in CHECKS] == [[] for _ in CHECKS]
    assert cross_check(cfg) == []


def test_problems_of_several_families_come_in_table_order() -> None:
    data = example()
    apps, dns = data["applications"], data["dns"]
    # in reverse table order: strict auth, default-dn, ports, cluster node DN
    del dns["1001"]["password"]
    data["switch"]["tserver"]["default-dn"] = "5998"
    apps["TC_dc1_1"]["tc-port"] = apps["SIPS_dc1_1"]["default-port"]
    dns["SIP_Cluster_DN"]["switchover-on-sipp-oos"] = True
    with pytest.raises(ClusterConfigError) as info:
        parse_cluster(Section(data, file="cluster.toml"))
    assert [p.key for p in info.value.problems] == [
        "dns.SIP_Cluster_DN.switchover-on-sipp-oos",
        "applications.TC_dc1_1.tc-port",
        "switch.tserver.default-dn",
        "dns.1001.password",
    ]
    assert str(info.value).startswith("cluster.toml: 4 problems:\n")
    assert info.value.problems[2].reason == (
        "'5998' is not a DN of the switch (did you mean '5999'?)"
    )


def test_facade_exports_the_same_objects() -> None:
    from daemons.cluster import checks, load, model, schema

    assert config.ClusterConfigError is checks.ClusterConfigError
    assert config.load_cluster is load.load_cluster
    assert config.parse_cluster is load.parse_cluster
    for name in ("AppKind", "Application", "ClusterConfig", "ClusterNodes", "Dn", "DnType",
                 "OutboundProxy", "OwnershipKind", "Switch", "TServerOptions"):
        assert getattr(config, name) is getattr(model, name)
    assert config.TSERVER_OPTIONS is schema.TSERVER_OPTIONS
    assert config.DIGEST_ALGORITHMS is schema.DIGEST_ALGORITHMS
