"""Trunk selection of a node (daemons/sip_server/outbound.py, ``Trunks``; guide:
"Configuring Trunk DNs", find-trunk-by-location, enable-strict-location-match):
prefix, geo-location, priority, service state and oos-error-check, driven with
a fake clock (no sockets: the OPTIONS answers are fed to the monitor)."""

from __future__ import annotations

from typing import Any

import structlog

from daemons.cluster.config import parse_cluster
from daemons.runtime.config import Section
from daemons.sip_server.outbound import PeerWatch, Trunks


def cluster(tserver: dict[str, Any], trunks: dict[str, dict[str, Any]]) -> Any:
    data: dict[str, Any] = {
        "switch": {"name": "S", "domain": "d.test", "tserver": tserver},
        "dns": {"Nodes": {"type": "VoIPService", "service-type": "sip-cluster-nodes",
                          "applications": ["SIPS_1"]}, **trunks},
        "applications": {
            "SIPS_1": {"kind": "sip-server", "host": "127.0.100.11", "geo-location": "dc1",
                       "sip-port": 5070, "default-port": 7000},
            "TC_1": {"kind": "t-controller", "host": "127.0.100.11", "sip-server": "SIPS_1",
                     "tc-port": 7002}},
    }
    return parse_cluster(Section(data, file="test.toml"))


def trunk(geo: str, host: str, **options: Any) -> dict[str, Any]:
    return {"type": "Trunk", "contact": f"{host}:5060", "geo-location": geo, **options}


TRUNKS = {
    "T_dc1": trunk("dc1", "127.0.100.40", prefix="+", **{"oos-check": 10, "oos-force": 2,
                                                         "oos-error-check": True}),
    "T_dc1_backup": trunk("dc1", "127.0.100.41", prefix="+", priority=5),
    "T_dc2": trunk("dc2", "127.0.101.40", prefix="+", **{"oos-check": 10, "oos-force": 2}),
    "T_uk": trunk("dc2", "127.0.101.44", prefix="+44"),
    "TG": {"type": "TrunkGroup", "contact": "127.0.101.50:5060", "geo-location": "dc2"},
}


def names(trunks: Trunks, number: str, via: str | None = "trunk") -> list[str]:
    return [t.name for t in trunks.candidates(number, via)]


def make(tserver: dict[str, Any]) -> Trunks:
    return Trunks(cluster(tserver, TRUNKS), "SIPS_1", lambda: None,  # type: ignore[arg-type,return-value]
                  host="127.0.100.11", log=structlog.get_logger())


def answer(trunks: Trunks, name: str, status: int, now: float) -> None:
    t = trunks.trunks[name]
    assert t.watch is not None and t.destination is not None
    t.watch.monitor.due(now)
    t.watch.monitor.answered(PeerWatch.key(t.destination), status, now)


def test_by_location_then_service_state_priority_and_prefix() -> None:
    trunks = make({"find-trunk-by-location": True})
    # nothing checked yet: location first; the unchecked watched ones after the
    # never-watched (always usable) backup of the same data centre
    assert names(trunks, "+15551234") == ["T_dc1_backup", "T_dc1", "T_dc2"]
    answer(trunks, "T_dc1", 200, 0.0)
    answer(trunks, "T_dc2", 200, 0.0)
    assert names(trunks, "+15551234") == ["T_dc1", "T_dc1_backup", "T_dc2"]
    # a longer prefix ranks first among equals; numbers without "+" match no trunk
    assert names(trunks, "+441234")[-2:] == ["T_uk", "T_dc2"]
    assert names(trunks, "15551234") == []
    # a named trunk or trunk group, whatever its prefix or location
    assert names(trunks, "5000", "TG") == ["TG"]
    assert names(trunks, "5000", "T_dc2") == ["T_dc2"]
    assert names(trunks, "5000", "Nope") == []


def test_without_location_priority_decides() -> None:
    trunks = make({"find-trunk-by-location": False})
    for name in ("T_dc1", "T_dc2"):
        answer(trunks, name, 200, 0.0)
    assert names(trunks, "+15551234") == ["T_dc1", "T_dc2", "T_dc1_backup"]


def test_strict_location_match_keeps_the_calls_home() -> None:
    trunks = make({"find-trunk-by-location": True, "enable-strict-location-match": True})
    assert names(trunks, "+441234") == ["T_dc1_backup", "T_dc1"]


def test_out_of_service_by_oos_force_and_by_oos_error_check() -> None:
    trunks = make({"find-trunk-by-location": True})
    answer(trunks, "T_dc1", 200, 0.0)
    answer(trunks, "T_dc2", 200, 0.0)
    # a check of T_dc1 unanswered for oos-force seconds: out of service
    watch = trunks.trunks["T_dc1"].watch
    assert watch is not None
    watch.monitor.due(10.0)
    watch.monitor.tick(12.5)
    assert "T_dc1" not in names(trunks, "+15551234")
    answer(trunks, "T_dc1", 200, 13.0)  # the first answer puts it back
    assert names(trunks, "+15551234")[0] == "T_dc1"
    # a 503 to a call: with oos-error-check out at once, without it untouched
    trunks.failed(trunks.trunks["T_dc1"], 503, 14.0)
    trunks.failed(trunks.trunks["T_dc2"], 503, 14.0)
    assert names(trunks, "+15551234") == ["T_dc1_backup", "T_dc2"]
    assert [s["state"] for s in trunks.status()] == [
        "out-of-service", "not-checked", "in-service", "not-checked", "not-checked"]
