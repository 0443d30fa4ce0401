"""One site of a sip-proxy in front of one SIP Server node, for tests and benchmarks.

:func:`write_proxy_site` writes the cluster file (docs/sip-proxy.md): a switch, the
VoIP service that names the node and the proxy, the node ``SIPS_1`` (with its
T-Controller ``TC_1``) and the proxy ``SPX_1``. The SIPp scenarios play the other
ends: :data:`NODE_XML` stands in for the node (it answers REGISTER and the proxy's
OPTIONS checks), :data:`PHONE_XML` for a registered phone, and :func:`call_xml` is the
node's call to a user through the proxy.
"""

from __future__ import annotations

from pathlib import Path

#: The registrar node: 200 to REGISTER (Contact and Path echoed) and to OPTIONS checks.
NODE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registrar node">
  <recv request="REGISTER|OPTIONS" regexp_match="true"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=n[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Contact:]
[last_Path:]
Content-Length: 0

]]></send>
</scenario>
"""

#: The phone: answers INVITE with 180 and 200 (Record-Route copied, §12.1.1), then BYE.
PHONE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=p[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:1001@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=p[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:1001@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <recv request="ACK" optional="true"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def call_xml(user: str) -> str:
    """The node's call: INVITE ``user``@cluster.lab, ACK the 200, BYE (record-routed)."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
  <send retrans="500"><![CDATA[
INVITE sip:{user}@cluster.lab SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:{user}@cluster.lab>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:node@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:{user}@cluster.lab>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:node@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:{user}@cluster.lab>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
[routes]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def write_proxy_site(path: Path, *, proxy_host: str, proxy_port: int, node_host: str,
                     node_port: int, http_port: int = 0, oos: int = 2,
                     workers: int | str = 1, worker_port_base: int | None = None) -> None:
    """Write the cluster file of ``SPX_1`` at ``proxy_host`` and ``SIPS_1`` at ``node_host``.

    ``oos`` is both the proxy's ``oos-check`` and ``oos-force`` (seconds); ``workers``
    is written as given, so a test can write a value the proxy must refuse, except the
    default 1, which is left out: a sip-proxy from before the option reads the same file
    (``bench_proxy.py --baseline-root``, ``bench_instructions.py --baseline-rev``).
    """
    base = "" if worker_port_base is None else f"worker-port-base = {worker_port_base}\n"
    workers_line = "" if workers == 1 else f"workers = {workers}\n"
    path.write_text(f"""
[switch]
name = "SIP_Cluster"
domain = "cluster.lab"
[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]
[applications.SIPS_1]
kind = "sip-server"
host = "{node_host}"
geo-location = "dc1"
sip-port = {node_port}
default-port = 0
[applications.TC_1]
kind = "t-controller"
host = "{node_host}"
sip-server = "SIPS_1"
tc-port = 0
[applications.SPX_1]
kind = "sip-proxy"
host = "{proxy_host}"
geo-location = "dc1"
sip-port = {proxy_port}
replication-port = 0
http-port = {http_port}
[applications.SPX_1.sipproxy]
oos-check = {oos}
oos-force = {oos}
{workers_line}{base}""")
