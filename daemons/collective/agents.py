"""A status asked from another site for an agent logged on through a
t-controller of this site (docs/collective.md, "Status from another site";
guide: "Trusted Access", manage handlers).

The agent state is the t-controller's: the collective changes it as a
T-Library client of the t-controller's TCport, like the agent's desktop
(``RequestRegisterAddress`` on the agent's DN, then ``RequestAgentReady`` or
``RequestAgentNotReady`` with the reason code), and the t-controller's status
publisher then tells the status-aggregator, hence every site's directory.
The DN the agent is logged in on is read from the t-controller's
``/status/dns`` page (``agent-id``), as the sip-server's roaming does.

:func:`agent_request` (sans-I/O) maps a directory status to the request:

* ``Available`` -> ``RequestAgentReady``;
* ``After Call Work`` -> ``RequestAgentNotReady``, work mode ``AfterCallWork``;
* anything else (``Not Ready``, ``At Lunch`` ...) -> ``RequestAgentNotReady``
  with ``AttributeReason`` ``{"ReasonCode": DETAIL}`` (or the status itself
  when there is no detail and the status is not ``Not Ready``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp

from daemons.cluster.config import AppKind, Application, ClusterConfig
from daemons.runtime.tlib_client import TLibClient, TLibHandshakeError

__all__ = ["AGENT_TIMEOUT", "AgentStateError", "agent_request", "change_agent_state",
           "t_controllers_of"]

#: seconds for one t-controller: its page, the connection and the answers
AGENT_TIMEOUT = 5.0


class AgentStateError(Exception):
    """The agent state could not be changed; the text says why."""


def agent_request(status: str, detail: str) -> tuple[str, dict[str, Any]]:
    """The T-Library request (name, attributes besides the DN) for ``status``."""
    if status.lower() == "available":
        return "RequestAgentReady", {}
    if status.lower() == "after call work":
        return "RequestAgentNotReady", {"AttributeAgentWorkMode": "AfterCallWork"}
    reason = detail or ("" if status.lower() == "not ready" else status)
    return "RequestAgentNotReady", ({"AttributeReason": {"ReasonCode": reason}}
                                    if reason else {})


def t_controllers_of(config: ClusterConfig, server: str) -> list[Application]:
    """The t-controllers beside sip-server ``server`` (all of the cluster
    file's when none is)."""
    every = [t for t in config.by_kind(AppKind.T_CONTROLLER) if t.port("tc-port")]
    return [t for t in every if t.sip_server == server] or every


def _is_agent(agent_id: object, user_id: str, domain: str) -> bool:
    if not isinstance(agent_id, str):
        return False
    agent = agent_id.lower()
    return agent in (user_id.lower(), f"{user_id}@{domain}".lower())


async def _agent_dn(session: aiohttp.ClientSession, tc: Application, user_id: str,
                    domain: str) -> str | None:
    port = tc.port("http-port")
    if not port:
        return None
    async with session.get(f"http://{tc.host}:{port}/status/dns") as resp:
        if resp.status != 200:
            return None
        page = await resp.json()
    dns = page.get("dns") if isinstance(page, dict) else None
    for number, entry in (dns or {}).items():
        if isinstance(entry, dict) and _is_agent(entry.get("agent-id"), user_id, domain):
            return str(number)
    return None


async def change_agent_state(config: ClusterConfig, controllers: Sequence[Application], *,
                             user_id: str, status: str, detail: str,
                             client_name: str) -> dict[str, Any]:
    """Find the DN agent ``user_id`` is logged in on at one of ``controllers``
    and send it the request for ``status``; what was done (``t_controller``,
    ``dn``, ``request``, ``answer``). AgentStateError when the agent is on none
    of them, a t-controller cannot be reached or refuses."""
    name, attributes = agent_request(status, detail)
    domain = config.switch.domain
    unreachable: list[str] = []
    timeout = aiohttp.ClientTimeout(total=AGENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for tc in controllers:
            try:
                dn = await _agent_dn(session, tc, user_id, domain)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                unreachable.append(f"{tc.name}: {exc or type(exc).__name__}")
                continue
            if dn is None:
                continue
            port = tc.port("tc-port")
            assert port is not None
            try:
                client = await TLibClient.connect(tc.host, port, client_name,
                                                  connect_timeout=AGENT_TIMEOUT)
            except (OSError, TimeoutError, TLibHandshakeError) as exc:
                raise AgentStateError(f"{tc.name} (T-Library): {exc}") from None
            try:
                async with asyncio.timeout(AGENT_TIMEOUT):
                    registered = await client.request("RequestRegisterAddress",
                                                      AttributeThisDN=dn)
                    if registered.get("message") != "EventRegistered":
                        raise AgentStateError(f"{tc.name}: DN {dn}: {_error(registered)}")
                    event = await client.request(name, attributes, AttributeThisDN=dn)
                    if event.get("message") == "EventError":
                        raise AgentStateError(f"{tc.name}: {name} on DN {dn}: {_error(event)}")
                    await client.request("RequestUnregisterAddress", AttributeThisDN=dn)
            except (TimeoutError, ConnectionError) as exc:
                raise AgentStateError(f"{tc.name}: {exc or 'no answer'}") from None
            finally:
                await client.close()
            return {"t_controller": tc.name, "dn": dn, "request": name,
                    "answer": event.get("message")}
    if unreachable:
        raise AgentStateError("agent not found; t-controllers not answering: "
                              + "; ".join(unreachable))
    raise AgentStateError(f"agent {user_id} is logged in on no DN of this site's t-controllers")


def _error(event: dict[str, Any]) -> str:
    return (f"{event.get('message')} {event.get('AttributeErrorCode', '')} "
            f"{event.get('AttributeErrorMessage', '')}").strip()
