"""MWI notifier: SUBSCRIBE/NOTIFY ``message-summary`` (RFC 6665, RFC 3842).

A phone subscribes to ``mailbox@`` its proxy; the proxies forward the
SUBSCRIBE here (guide: "Configure Message Waiting Indicator (MWI)"). The
subscriber is challenged and must own the mailbox or be one of its delegates
(:mod:`.mwi_access`). The subscription's dialog keeps the proxy's
Record-Route as its route set (RFC 3261 §12.1.1, RFC 6665 §4.1.2.1), so every
NOTIFY goes back through the proxy that holds the phone's flow (a TCP or TLS
phone has no listener of its own). Each
accepted subscription gets an immediate NOTIFY with the counts (RFC 6665
§4.2.1.4), another after every deposit, delete or save in its mailbox, and a
last one when it ends. Subscriptions are written to the store with their
dialog, so a restarted feature-server keeps notifying the same phones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from daemons.feature_server.voicemail.mwi_access import MwiAccess
from daemons.feature_server.voicemail.store import MailboxStore, StoredSubscription
from daemons.runtime.driver import TimerSlot
from daemons.runtime.sip_endpoint import IncomingRequest, SipEndpoint
from daemons.runtime.sip_transport import TransportError
from protocols.sip.dialog import Dialog, DialogError, DialogId
from protocols.sip.errors import SipError
from protocols.sip.headers import parse_name_addr
from protocols.sip.message import Request, Response
from protocols.sip.mwi import CONTENT_TYPE, EVENT_PACKAGE, MessageSummary, MwiError, Subscription

__all__ = ["MwiNotifier", "record_route"]

DEFAULT_EXPIRES = 3600
#: how far the NOTIFY CSeq of a restored subscription jumps past the stored one
#: (RFC 3261 §12.2.1.1: it must only grow; NOTIFYs sent since the last store
#: write are fewer than this)
CSEQ_RESTART_STEP = 100_000
MIN_EXPIRES = 60


def record_route(request: Request) -> list[tuple[str, str]]:
    """The request's Record-Route, copied into a 2xx that creates a dialog
    (RFC 3261 §12.1.1): the proxies that asked stay on the dialog's path."""
    return [("Record-Route", value) for value in request.headers.get_lines("Record-Route")]


class _Subscriber:
    __slots__ = ("dialog", "mailbox", "state", "transport")

    def __init__(self, mailbox: str, dialog: Dialog, state: Subscription, transport: str) -> None:
        self.mailbox = mailbox
        self.dialog = dialog
        self.state = state
        self.transport = transport


class MwiNotifier:
    """The subscriptions of one feature-server and the NOTIFYs they get."""

    def __init__(self, endpoint: SipEndpoint, store: MailboxStore, *, domain: str,
                 metrics: Any, log: Any, max_expires: int = DEFAULT_EXPIRES,
                 access: MwiAccess | None = None) -> None:
        self.endpoint = endpoint
        #: who may subscribe to which mailbox; None: anyone (no cluster file)
        self.access = access
        self.store = store
        self.domain = domain
        self.log = log
        self.max_expires = max_expires
        self.loop = asyncio.get_running_loop()
        self._subs: dict[str, _Subscriber] = {}
        self._by_mailbox: dict[str, set[str]] = {}
        self._timer = TimerSlot(self.loop, self._on_timer)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.notifies = metrics.tally("mwi_notify_sent", "MWI NOTIFYs sent, by outcome",
                                      ("result",))
        self.refused = metrics.tally("mwi_subscribe_refused", "SUBSCRIBEs refused",
                                     ("reason",))
        self.gauge = metrics.gauge("mwi_subscriptions", "Active MWI subscriptions")
        self.notify_latency = metrics.histogram(
            "mwi_notify_latency_seconds", "From a mailbox change stored to its NOTIFY sent",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0))

    def __len__(self) -> int:
        return len(self._subs)

    def subscriptions(self, mailbox: str) -> int:
        return len(self._by_mailbox.get(mailbox, ()))

    # ---------------------------------------------------------------- SUBSCRIBE
    async def subscribe(self, incoming: IncomingRequest, mailbox_exists: bool) -> Response:
        """Answer a SUBSCRIBE (new or refresh) and send the NOTIFY it calls for."""
        request = incoming.request
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != EVENT_PACKAGE:
            return self._refuse(incoming, 489, "bad_event", headers=[
                ("Allow-Events", EVENT_PACKAGE)])
        accept = request.headers.get("Accept")
        if accept and CONTENT_TYPE not in accept.lower() and "*/*" not in accept:
            return self._refuse(incoming, 406, "accept", headers=[("Accept", CONTENT_TYPE)])
        expires = request.expires
        expires = DEFAULT_EXPIRES if expires is None else expires
        now = self.loop.time()
        if request.to.tag:
            return await self._refresh(incoming, expires, now)
        mailbox = request.ruri.user or ""
        if self.access is not None:
            # before 404: whether a mailbox exists is nobody else's business
            verdict = self.access.check(request, mailbox, time.time())
            if verdict.status is not None:
                return self._refuse(incoming, verdict.status, verdict.reason,
                                    headers=list(verdict.headers), mailbox=mailbox,
                                    subscriber=verdict.subscriber,
                                    peer=f"{incoming.flow.remote[0]}:{incoming.flow.remote[1]}",
                                    **({"detail": verdict.detail} if verdict.detail else {}))
        if not mailbox_exists:
            return self._refuse(incoming, 404, "no_mailbox")
        try:
            state = Subscription(expires, now, min_expires=MIN_EXPIRES,
                                 max_expires=self.max_expires)
        except MwiError as exc:
            return self._refuse(incoming, exc.status, "interval_too_brief", headers=[
                ("Min-Expires", str(MIN_EXPIRES))])
        transport = incoming.flow.transport
        # the proxy's Record-Route: NOTIFYs and refreshes pass through it
        response = incoming.response(200, headers=[
            *record_route(request),
            ("Expires", str(state.remaining(now))),
            ("Contact", f"<{self.endpoint.contact_uri(transport, user=mailbox)}>")])
        try:
            dialog = Dialog.create_uas(request, response, transport=transport)
        except DialogError as exc:
            return self._refuse(incoming, 400, "no_dialog", detail=str(exc))
        if expires == 0:  # a fetch: one NOTIFY, no subscription (RFC 6665 §4.4.3)
            state.refresh(0, now)
        sub = _Subscriber(mailbox, dialog, state, transport)
        if state.active:
            self._add(request.call_id, sub)
            await self._persist(request.call_id, sub)
            self.log.info("mwi_subscribed", mailbox=mailbox, call_id=request.call_id,
                          expires=state.remaining(now))
        self._spawn(self._notify(request.call_id, sub, None))
        return response

    async def _refresh(self, incoming: IncomingRequest, expires: int, now: float) -> Response:
        request = incoming.request
        sub = self._subs.get(request.call_id)
        if sub is None or sub.dialog.id.local_tag != request.to.tag:
            return self._refuse(incoming, 481, "no_subscription")
        try:
            sub.dialog.receive_request(request)
            sub.state.refresh(expires, now)
        except MwiError as exc:
            return self._refuse(incoming, exc.status, "interval_too_brief", headers=[
                ("Min-Expires", str(MIN_EXPIRES))])
        except DialogError as exc:
            return self._refuse(incoming, 500, "out_of_order", detail=str(exc))
        if sub.state.active:
            await self._persist(request.call_id, sub)
        else:
            self._remove(request.call_id)
            self.log.info("mwi_unsubscribed", mailbox=sub.mailbox, call_id=request.call_id)
        self._spawn(self._notify(request.call_id, sub, None))
        self._arm()
        return incoming.response(200, headers=[("Expires", str(sub.state.remaining(now)))])

    def _refuse(self, incoming: IncomingRequest, status: int, reason: str, *,
                headers: list[tuple[str, str]] | None = None, **log: Any) -> Response:
        self.refused.labels(reason).inc()
        self.log.info("mwi_subscribe_refused", status=status, why=reason,
                      call_id=incoming.request.call_id, **log)
        return incoming.response(status, headers=headers or [])

    # ---------------------------------------------------------------- bookkeeping
    def _add(self, call_id: str, sub: _Subscriber) -> None:
        self._subs[call_id] = sub
        self._by_mailbox.setdefault(sub.mailbox, set()).add(call_id)
        self.gauge.set(len(self._subs))
        self._arm()

    def _remove(self, call_id: str) -> None:
        sub = self._subs.pop(call_id, None)
        if sub is None:
            return
        ids = self._by_mailbox.get(sub.mailbox)
        if ids is not None:
            ids.discard(call_id)
            if not ids:
                del self._by_mailbox[sub.mailbox]
        self.gauge.set(len(self._subs))
        self._spawn(self.store.delete_subscription(call_id))

    async def _persist(self, call_id: str, sub: _Subscriber) -> None:
        d = sub.dialog
        await self.store.save_subscription(StoredSubscription(
            call_id=call_id, mailbox=sub.mailbox, local_tag=d.id.local_tag,
            remote_tag=d.id.remote_tag, local_uri=str(d.local), remote_uri=str(d.remote),
            remote_target=d.remote_target, route_set="\n".join(d.route_set),
            transport=sub.transport, cseq=d.local_seq or 0,
            expires_at=time.time() + sub.state.expires_at - self.loop.time()))

    def _arm(self) -> None:
        deadlines = [t for s in self._subs.values() if (t := s.state.next_timer()) is not None]
        self._timer.arm(min(deadlines) if deadlines else None)

    def _on_timer(self, now: float) -> None:
        for call_id, sub in list(self._subs.items()):
            sub.state.handle_timer(now)
            if not sub.state.active:
                self.log.info("mwi_subscription_expired", mailbox=sub.mailbox, call_id=call_id)
                self._remove(call_id)
                self._spawn(self._notify(call_id, sub, None))
        self._arm()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- NOTIFY
    def mailbox_changed(self, mailbox: str) -> None:
        """Notify every subscriber of ``mailbox`` (after a deposit, delete or save)."""
        changed = self.loop.time()
        for call_id in list(self._by_mailbox.get(mailbox, ())):
            sub = self._subs.get(call_id)
            if sub is not None:
                self._spawn(self._notify(call_id, sub, changed))

    async def _notify(self, call_id: str, sub: _Subscriber, changed: float | None) -> None:
        new, old = await self.store.counts(sub.mailbox)
        summary = MessageSummary(new, old, account=f"sip:{sub.mailbox}@{self.domain}")
        now = self.loop.time()
        try:
            request = sub.dialog.create_request(
                "NOTIFY",
                contact=f"<{self.endpoint.contact_uri(sub.transport, user=sub.mailbox)}>",
                headers=[("Event", EVENT_PACKAGE),
                         ("Subscription-State", sub.state.state_header(now)),
                         ("Content-Type", CONTENT_TYPE)],
                body=summary.serialize())
        except DialogError:
            return
        if changed is not None:
            # from the change stored to the NOTIFY on the wire (the answer's
            # round trip is the subscriber's, not ours)
            self.notify_latency.observe(self.loop.time() - changed)
        try:
            response = await self.endpoint.request(request)
        except (TransportError, OSError) as exc:  # the subscriber is unreachable
            response = None
            self.log.info("mwi_notify_failed", call_id=call_id, reason=str(exc))
        if response is None or response.status >= 300:
            status = response.status if response is not None else 0
            self.notifies.labels("failed").inc()
            self.log.info("mwi_notify_refused", call_id=call_id, mailbox=sub.mailbox,
                          status=status)
            if status != 491:  # anything but "request pending" ends it (§4.2.2)
                if sub.state.active:
                    sub.state.rejected()
                self._remove(call_id)
            return
        self.notifies.labels("ok").inc()

    # ---------------------------------------------------------------- restart
    async def restore(self) -> int:
        """Take back the stored subscriptions (a restart); each gets a NOTIFY."""
        now = self.loop.time()
        wall = time.time()
        restored = 0
        for stored in await self.store.list_subscriptions(wall):
            try:
                dialog = Dialog(
                    DialogId(stored.call_id, stored.local_tag, stored.remote_tag),
                    local=parse_name_addr(stored.local_uri),
                    remote=parse_name_addr(stored.remote_uri),
                    remote_target=stored.remote_target,
                    route_set=[r for r in stored.route_set.split("\n") if r],
                    # the CSeq is stored when the subscription is made or
                    # refreshed, not at every NOTIFY: a restart jumps ahead
                    local_seq=stored.cseq + CSEQ_RESTART_STEP)
                state = Subscription(max(1, int(stored.expires_at - wall)), now,
                                     min_expires=1, max_expires=self.max_expires)
            except (SipError, ValueError) as exc:
                self.log.warning("mwi_subscription_unreadable", call_id=stored.call_id,
                                 reason=str(exc))
                await self.store.delete_subscription(stored.call_id)
                continue
            sub = _Subscriber(stored.mailbox, dialog, state, stored.transport)
            self._add(stored.call_id, sub)
            await self._persist(stored.call_id, sub)
            self._spawn(self._notify(stored.call_id, sub, None))
            restored += 1
        return restored

    async def close(self) -> None:
        self._timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
