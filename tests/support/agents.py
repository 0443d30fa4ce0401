"""Agent login from a test desktop once the agent's DN is in service.

A phone's REGISTER is answered by its node before the node's news that the DN
is in service has reached the t-controllers; a login asked in between gets
EventError 52 (DN out of service), which is the right answer at that moment.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: AttributeErrorCode of EventError for a DN that is out of service
DN_OUT_OF_SERVICE = 52


async def agent_login(desk: Any, dn: str, agent_id: str, work_mode: str,
                      timeout: float = 15.0) -> Any:
    """RequestAgentLogin on ``dn``, asked again while the t-controller answers that
    the DN is out of service, for up to ``timeout`` seconds; the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await desk.request("RequestAgentLogin", AttributeThisDN=dn,
                                    AttributeAgentID=agent_id,
                                    AttributeAgentWorkMode=work_mode)
        if (answer.get("message") != "EventError"
                or answer.get("AttributeErrorCode") != DN_OUT_OF_SERVICE
                or loop.time() >= deadline):
            return answer
        await asyncio.sleep(0.1)
