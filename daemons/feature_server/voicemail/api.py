"""``/api/mailboxes``: provisioning of mailboxes over HTTP (JSON).

===========  ==========================================  ==========================
method       path                                        does
===========  ==========================================  ==========================
GET          /api/mailboxes                              list (number, new, saved)
POST         /api/mailboxes                              create ``{"mailbox", "pin"}``
GET          /api/mailboxes/{mailbox}                    one mailbox with its counts
DELETE       /api/mailboxes/{mailbox}                    delete it and its messages
PUT          /api/mailboxes/{mailbox}/pin                set the PIN ``{"pin"}``
GET          /api/mailboxes/{mailbox}/messages           list its messages
DELETE       /api/mailboxes/{mailbox}/messages/{id}      delete one message
===========  ==========================================  ==========================

The PIN is never returned. Bad input is 400 with ``{"error": ...}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from daemons.feature_server.voicemail.service import VoicemailService

__all__ = ["MailboxApi"]


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def _valid_pin(pin: object) -> bool:
    return isinstance(pin, str) and pin.isdigit() and 4 <= len(pin) <= 12


def _valid_number(number: object) -> bool:
    return isinstance(number, str) and 0 < len(number) <= 32 and all(
        c.isalnum() or c in "+-_." for c in number)


class MailboxApi:
    def __init__(self, service: VoicemailService) -> None:
        self.service = service

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/mailboxes", self.list)
        app.router.add_post("/api/mailboxes", self.create)
        app.router.add_get("/api/mailboxes/{mailbox}", self.get)
        app.router.add_delete("/api/mailboxes/{mailbox}", self.delete)
        app.router.add_put("/api/mailboxes/{mailbox}/pin", self.set_pin)
        app.router.add_get("/api/mailboxes/{mailbox}/messages", self.messages)
        app.router.add_delete("/api/mailboxes/{mailbox}/messages/{message}",
                              self.delete_message)

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _describe(self, number: str) -> dict[str, Any]:
        new, saved = await self.service.store.counts(number)
        return {"mailbox": number, "new": new, "saved": saved,
                "subscriptions": self.service.mwi.subscriptions(number)}

    async def list(self, request: web.Request) -> web.Response:
        out = [await self._describe(m.number) for m in await self.service.store.list_mailboxes()]
        return web.json_response(out)

    async def create(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if body is None or not _valid_number(body.get("mailbox")):
            return _error(400, "mailbox must be a DN (letters, digits, + - _ .)")
        pin = body.get("pin", self.service.default_pin)
        if not _valid_pin(pin):
            return _error(400, "pin must be 4 to 12 digits")
        max_messages = body.get("max-messages", self.service.max_messages)
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) \
                or not 1 <= max_messages <= 10000:
            return _error(400, "max-messages must be 1 to 10000")
        number = body["mailbox"]
        if not await self.service.store.create_mailbox(number, pin, max_messages):
            return _error(409, f"mailbox {number} exists")
        self.service.log.info("voicemail_mailbox_created", mailbox=number)
        return web.json_response(await self._describe(number), status=201)

    async def get(self, request: web.Request) -> web.Response:
        number = request.match_info["mailbox"]
        mailbox = await self.service.store.get_mailbox(number)
        if mailbox is None:
            return _error(404, f"no mailbox {number}")
        out = await self._describe(number)
        out.update(max_messages=mailbox.max_messages, greeting="user" if mailbox.greeting
                   else "default")
        return web.json_response(out)

    async def delete(self, request: web.Request) -> web.Response:
        number = request.match_info["mailbox"]
        store = self.service.store
        mailbox = await store.get_mailbox(number)
        if mailbox is None:
            return _error(404, f"no mailbox {number}")
        files = [m.file for m in await store.list_messages(number)]
        await store.delete_mailbox(number)
        for name in files + ([mailbox.greeting] if mailbox.greeting else []):
            self.service.files.remove(name)
        self.service.log.info("voicemail_mailbox_deleted", mailbox=number)
        return web.Response(status=204)

    async def set_pin(self, request: web.Request) -> web.Response:
        number = request.match_info["mailbox"]
        body = await self._json(request)
        if body is None or not _valid_pin(body.get("pin")):
            return _error(400, "pin must be 4 to 12 digits")
        if not await self.service.store.set_pin(number, body["pin"]):
            return _error(404, f"no mailbox {number}")
        return web.Response(status=204)

    async def messages(self, request: web.Request) -> web.Response:
        number = request.match_info["mailbox"]
        if await self.service.store.get_mailbox(number) is None:
            return _error(404, f"no mailbox {number}")
        return web.json_response([
            {"id": m.id, "caller": m.caller, "created": m.created, "duration_ms": m.duration_ms,
             "codec": m.codec, "status": m.status}
            for m in await self.service.store.list_messages(number)])

    async def delete_message(self, request: web.Request) -> web.Response:
        number = request.match_info["mailbox"]
        message_id = request.match_info["message"]
        message = await self.service.store.get_message(message_id)
        if message is None or message.mailbox != number:
            return _error(404, f"no message {message_id} in {number}")
        await self.service.delete_message(number, message_id)
        return web.Response(status=204)
