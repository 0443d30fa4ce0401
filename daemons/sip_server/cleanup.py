"""Stuck calls found and cleared (guide: SIP Server ``[call-cleanup]``:
``periodic-check-tout``, ``notify-idle-tout``, ``cleanup-idle-tout``).

Every ``periodic-check-tout`` the node looks at its calls. A call with no
request or answer from any party for ``notify-idle-tout`` is reported (a log
line and ``sipcluster_calls_idle_total``) and each connected party is asked
about its dialog with an in-dialog OPTIONS (RFC 3261 §11, as a keep-alive):
answers from every party show the call is alive (its idle time starts
again). A party that answers 481 no longer has the dialog, and one that does
not answer at all (408: no response within timer F) is gone -- a phone whose
BYE was lost while a proxy on its path was down, say -- so the call is ended
for the others (BYE), as Kamailio's dialog keep-alives end a dialog. A call
idle for ``cleanup-idle-tout`` is cleared whatever the probes said. Each
option 0 turns that step off.

:meth:`CallCleanup.check_idle_calls` takes ``now``, so tests drive it with
any clock; the loop only calls it.
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any

from daemons.sip_server.call import Call, Leg
from daemons.sip_server.session import ALLOW, SessionBase

__all__ = ["PARTY_GONE", "CallCleanup"]

#: answers to the probe that say a party is gone: 481 (it has no such dialog) and
#: 408 (nothing came back before timer F)
PARTY_GONE = frozenset({408, 481})


class CallCleanup(SessionBase):
    """The periodic check of idle calls."""

    @cached_property
    def m_idle(self) -> Any:
        return self.server.metrics.counter(
            "calls_idle", "Calls found idle by call cleanup, by what followed", ("outcome",))

    @cached_property
    def _probing(self) -> set[str]:
        return set()

    async def _cleanup_loop(self) -> None:
        period = self.tserver.periodic_check_tout
        while True:
            await asyncio.sleep(period)
            try:
                self.check_idle_calls(self._now())
            except Exception as exc:  # the check must outlive one bad call
                self.log.error("call_cleanup_failed", error=repr(exc))

    def check_idle_calls(self, now: float) -> list[str]:
        """Report and probe idle calls (the probes run on), clear those idle for
        ``cleanup-idle-tout``; the ConnIDs cleared."""
        notify = self.tserver.notify_idle_tout
        cleanup = self.tserver.cleanup_idle_tout
        cleared: list[str] = []
        for call in list(self.calls.values()):
            idle = now - call.last_activity
            if cleanup and idle >= cleanup:
                self.log.warning("call_cleared_idle", conn_id=call.conn_id, idle=round(idle),
                                 parties=[leg.number for leg in call.live_legs()])
                self.m_idle.labels("cleared").inc()
                self._clear(call, "cleaned")
                cleared.append(call.conn_id)
            elif notify and idle >= notify and call.conn_id not in self._probing:
                self.log.warning("call_idle", conn_id=call.conn_id, idle=round(idle),
                                 parties=[leg.number for leg in call.live_legs()])
                self.m_idle.labels("reported").inc()
                self._probing.add(call.conn_id)
                self._spawn(self._probe_call(call, now))
        return cleared

    async def _probe_call(self, call: Call, now: float) -> None:
        """Ask each connected party about its dialog (in-dialog OPTIONS)."""
        try:
            legs = [leg for leg in call.live_legs() if leg.connected and leg.dialog is not None]
            results = await asyncio.gather(*(self._probe(leg) for leg in legs))
        finally:
            self._probing.discard(call.conn_id)
        for leg, status in zip(legs, results, strict=True):
            if call.released:
                return
            if status in PARTY_GONE:
                self.log.warning("call_cleared_dialog_gone", conn_id=call.conn_id,
                                 party=leg.number, status=status)
                self.m_idle.labels("dialog_gone" if status == 481 else "party_silent").inc()
                self._clear(call, "cleaned")
                return
        if results and all(status not in (408, 503) for status in results):
            call.last_activity = max(call.last_activity, now)  # every party answered

    async def _probe(self, leg: Leg) -> int:
        response = await self._send_in_dialog(leg, "OPTIONS", headers=[("Allow", ALLOW)])
        return response.status

    def _clear(self, call: Call, outcome: str) -> None:
        for leg in call.live_legs():
            self._end_leg(leg)
        self._finish(call, outcome)
