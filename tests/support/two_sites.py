"""The cluster file of two data centres for the director's tests and benchmark: one
node each (sip-server ``SIPS_A`` / ``SIPS_C`` with its t-controller ``TC_A`` /
``TC_C`` at the site's ``.11``), agents' extensions with fixed contacts (their SIPp
phones), routing point 5000 and virtual queue 8000 (docs/director.md).

A data centre is a /24 prefix such as ``"127.0.145."``; ``dc`` maps ``"dc1"`` and
``"dc2"`` to theirs. Ports are in one dict: ``sip_A``, ``default_A``, ``http_A``,
``tc_A``, ``tchttp_A`` (likewise ``_C``) and ``phone_<DN>`` for each phone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

#: node letter -> data centre
NODES = (("A", "dc1"), ("C", "dc2"))


def node_ports(free_port: Callable[[str], int], dc: Mapping[str, str]) -> dict[str, int]:
    """Free ports for both nodes' SIP, default, HTTP, T-Library and t-controller HTTP."""
    ports: dict[str, int] = {}
    for n, geo in NODES:
        for key in ("sip", "default", "http", "tc", "tchttp"):
            ports[f"{key}_{n}"] = free_port(dc[geo] + "11")
    return ports


def head_text(*, domain: str, tserver: str, service: str = "") -> str:
    """``[switch]`` with its ``tserver`` options, the nodes' VoIP service (T-Library-based
    DN ownership, with ``service`` options), routing point 5000 and virtual queue 8000."""
    return f"""
[switch]
name = "SIP_Cluster"
domain = "{domain}"

[switch.tserver]
{tserver.strip()}

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_A", "SIPS_C"]
dn-owner-applications = ["Cluster"]
{service.strip()}

[dns.5000]
type = "RoutingPoint"

[dns.8000]
type = "VirtualQueue"
"""


def extensions_text(phones: Iterable[tuple[str, str]], ports: Mapping[str, int]) -> str:
    """An Extension for each (DN, phone's host), its contact the phone's SIPp."""
    return "".join(f'\n[dns.{dn}]\ntype = "Extension"\n'
                   f'contact = "sip:{dn}@{host}:{ports[f"phone_{dn}"]}"\n'
                   for dn, host in phones)


def nodes_text(dc: Mapping[str, str], ports: Mapping[str, int]) -> str:
    """Both nodes' sip-server and t-controller applications."""
    text = ""
    for n, geo in NODES:
        host = dc[geo] + "11"
        text += f"""
[applications.SIPS_{n}]
kind = "sip-server"
host = "{host}"
geo-location = "{geo}"
sip-port = {ports[f"sip_{n}"]}
default-port = {ports[f"default_{n}"]}
http-port = {ports[f"http_{n}"]}

[applications.TC_{n}]
kind = "t-controller"
host = "{host}"
sip-server = "SIPS_{n}"
tc-port = {ports[f"tc_{n}"]}
http-port = {ports[f"tchttp_{n}"]}
"""
    return text
