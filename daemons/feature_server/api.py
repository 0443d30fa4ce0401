"""The feature-server's HTTP interfaces (docs/feature-server.md, "HTTP API").

* ``GET /dialplan?digits=D&caller=C`` (``reason``, ``trunk``, ``trunk-group``,
  ``routing-point``, ``geo-location`` optional): the nodes' dial-plan query;
* ``/api/partitions``, ``/api/calling-profiles``, ``/api/assignments``,
  ``/api/users``, ``/api/dns``: provisioning, JSON, ``GET`` (list or one),
  ``PUT`` (create or replace), ``DELETE``;
* ``GET /api/dial-plan``: what is in force; ``POST /api/dial-plan/reload``:
  the cluster file and the store read again.

Every change is compiled with the rest of the plan before it is stored: a
broken rule, a profile naming a missing partition, a partition still used by
a profile are refused (422 / 409) with the reason, a log line and a count in
``sipcluster_feature_server_api_refused_total{reason}``, and the plan in force
stays. A body over ``max-body`` bytes is refused with 413 the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from daemons.feature_server.dialplan import (
    REASONS,
    DialPlanHolder,
    PlanSources,
    Query,
    decision_json,
)
from daemons.feature_server.store import Store, StoreError
from protocols.dialplan import ASSIGNMENT_KINDS, DialPlanError, check_name

__all__ = ["ProvisioningApi", "token_middleware"]

_NUMBER = re.compile(r"^[A-Za-z0-9_+*#.\-]{1,64}$")
_PIN = re.compile(r"^\d{4,12}$")
_USER_KEYS = {"dns", "pin", "calling-profile", "full-name"}
_DN_KEYS = {"type", "user", "calling-profile"}
_DN_TYPES = ("Extension", "ACDPosition", "RoutingPoint", "Trunk", "TrunkGroup")
#: what /api/<collection> holds: store kind
COLLECTIONS = {"partitions": "partition", "calling-profiles": "calling-profile",
               "users": "user", "dns": "dn"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiRefused(Exception):
    """A request the API answers with a 4xx and a reason."""

    def __init__(self, status: int, reason: str, label: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.label = label


class ApiHost(Protocol):
    """What the API needs from the daemon."""

    holder: DialPlanHolder
    store: Store
    log: Any
    voicemail_sip: str | None

    async def reload(self, *, reread_config: bool) -> dict[str, Any]: ...

    def counted_query(self, action: str) -> None: ...

    def counted_refusal(self, reason: str) -> None: ...


def token_middleware(token: str, host: ApiHost) -> Any:
    """With ``api-token`` set, every ``/api/...`` request (the voicemail's too) must
    carry ``Authorization: Bearer TOKEN``; the nodes' ``/dialplan`` query, health
    and metrics stay open. A request without it gets 401, a log line and a count."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "").encode()
            if not secrets.compare_digest(given, expected):
                host.counted_refusal("unauthorized")
                host.log.warning("api_request_refused", method=request.method,
                                 path=request.path, status=401, reason="no valid api token",
                                 peer=request.remote)
                return web.json_response({"error": "Authorization: Bearer TOKEN required"},
                                         status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


def pin_hash(pin: str, salt: bytes | None = None) -> str:
    """``pbkdf2-sha256$ITER$SALT$HASH`` of a PIN: the store never holds a PIN."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, 100_000)
    return f"pbkdf2-sha256$100000${salt.hex()}${digest.hex()}"


class ProvisioningApi:
    """The routes of the dial-plan query and the provisioning API."""

    def __init__(self, host: ApiHost, *, max_body: int) -> None:
        self.host = host
        self.max_body = max_body

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/dialplan", self._wrap(self.query))
        r.add_get("/api/dial-plan", self._wrap(self.plan_status))
        r.add_post("/api/dial-plan/reload", self._wrap(self.reload))
        r.add_get("/api/assignments", self._wrap(self.list_assignments))
        r.add_get("/api/assignments/{kind}/{name}", self._wrap(self.get_assignment))
        r.add_put("/api/assignments/{kind}/{name}", self._wrap(self.put_assignment))
        r.add_delete("/api/assignments/{kind}/{name}", self._wrap(self.delete_assignment))
        for collection in COLLECTIONS:
            r.add_get(f"/api/{collection}", self._wrap(self.list_objects))
            r.add_get(f"/api/{collection}/{{name}}", self._wrap(self.get_object))
            r.add_put(f"/api/{collection}/{{name}}", self._wrap(self.put_object))
            r.add_delete(f"/api/{collection}/{{name}}", self._wrap(self.delete_object))

    def _wrap(self, handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiRefused as exc:
                self.host.counted_refusal(exc.label)
                self.host.log.warning("api_request_refused", method=request.method,
                                      path=request.path, status=exc.status, reason=exc.reason,
                                      peer=request.remote)
                return web.json_response({"error": exc.reason}, status=exc.status)
            except StoreError as exc:
                # the store is down: nothing was changed, the plan in force answers queries
                self.host.counted_refusal("store_unavailable")
                self.host.log.error("api_store_unavailable", method=request.method,
                                    path=request.path, reason=str(exc))
                return web.json_response({"error": f"store unavailable: {exc}"}, status=503)
        return run

    # ------------------------------------------------------------------ dial-plan query

    async def query(self, request: web.Request) -> web.Response:
        q = request.query
        digits = q.get("digits", "")
        if not _NUMBER.match(digits):
            raise ApiRefused(400, "digits: expected 1-64 of 0-9 A-Z a-z _ + * # . -",
                             "bad_query")
        reason = q.get("reason")
        if reason is not None and reason not in REASONS:
            raise ApiRefused(400, f"reason: expected one of {', '.join(REASONS)}", "bad_query")
        query = Query(digits=digits, caller=q.get("caller") or None, reason=reason,
                      trunk=q.get("trunk") or None, trunk_group=q.get("trunk-group") or None,
                      routing_point=q.get("routing-point") or None,
                      geo_location=q.get("geo-location") or None)
        decision = self.host.holder.answer(query)
        self.host.counted_query(decision.action.value)
        return web.json_response(decision_json(decision, voicemail_sip=self.host.voicemail_sip))

    async def plan_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.host.holder.status())

    async def reload(self, request: web.Request) -> web.Response:
        try:
            summary = await self.host.reload(reread_config=True)
        except DialPlanError as exc:
            raise ApiRefused(422, f"dial plan refused, the plan in force stays: {exc}",
                             "broken_plan") from None
        except ValueError as exc:  # the cluster file itself
            raise ApiRefused(422, f"cluster file refused, the plan in force stays: {exc}",
                             "broken_config") from None
        return web.json_response(summary)

    # ------------------------------------------------------------------ bodies

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.max_body:
            raise ApiRefused(413, f"body of {request.content_length} bytes is over the "
                                  f"{self.max_body}-byte limit", "too_large")
        chunks: list[bytes] = []
        size = 0
        while True:  # a chunked body has no Content-Length: count as it comes
            chunk = await request.content.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_body:
                raise ApiRefused(413, f"body is over the {self.max_body}-byte limit",
                                 "too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiRefused(400, f"body is not JSON: {exc}", "bad_json") from None
        if not isinstance(body, dict):
            raise ApiRefused(400, "body must be a JSON object", "bad_json")
        return body

    # ------------------------------------------------------------------ objects

    def _collection(self, request: web.Request) -> tuple[str, str]:
        collection = request.path.split("/")[2]
        return collection, COLLECTIONS[collection]

    async def list_objects(self, request: web.Request) -> web.Response:
        _, kind = self._collection(request)
        stored = (await self.host.store.all()).get(kind, {})
        if kind == "partition":
            merged = self.host.holder.sources.partitions
            return web.json_response({n: {**b, "stored": n in stored} for n, b in merged.items()})
        if kind == "calling-profile":
            merged = self.host.holder.sources.profiles
            return web.json_response({n: {**b, "stored": n in stored} for n, b in merged.items()})
        return web.json_response({n: _public(kind, b) for n, b in stored.items()})

    async def get_object(self, request: web.Request) -> web.Response:
        _, kind = self._collection(request)
        name = request.match_info["name"]
        sources = self.host.holder.sources
        in_force = {"partition": sources.partitions, "calling-profile": sources.profiles}
        if kind in in_force and name in in_force[kind]:
            return web.json_response(in_force[kind][name])
        body = await self.host.store.get(kind, name)
        if body is None:
            raise ApiRefused(404, f"no {kind} {name!r}", "not_found")
        return web.json_response(_public(kind, body))

    async def put_object(self, request: web.Request) -> web.Response:
        _, kind = self._collection(request)
        name = request.match_info["name"]
        body = await self._body(request)
        if kind in ("user", "dn"):
            body = await self._checked_directory(kind, name, body)
        candidate = self._with(kind, name, body)
        existed = await self.host.store.get(kind, name) is not None
        await self._install(candidate, lambda: self.host.store.put(kind, name, body))
        self.host.log.info("provisioned", kind=kind, name=name, created=not existed)
        return web.json_response(_public(kind, body), status=200 if existed else 201)

    async def delete_object(self, request: web.Request) -> web.Response:
        _, kind = self._collection(request)
        name = request.match_info["name"]
        if await self.host.store.get(kind, name) is None:
            raise ApiRefused(404, f"no stored {kind} {name!r}", "not_found")
        candidate = self._without(kind, name)
        await self._install(candidate, lambda: self._delete(kind, name), status=409)
        self.host.log.info("deprovisioned", kind=kind, name=name)
        return web.json_response({"deleted": name})

    async def _delete(self, kind: str, name: str) -> None:
        await self.host.store.delete(kind, name)

    async def _install(self, candidate: PlanSources, write: Callable[[], Awaitable[None]],
                       status: int = 422) -> None:
        try:
            await self.host.holder.check(candidate)
        except DialPlanError as exc:
            raise ApiRefused(status, str(exc), "broken_plan") from None
        await write()
        # the store is the truth: the plan in force is rebuilt from it
        await self.host.reload(reread_config=False)

    async def _checked_directory(self, kind: str, name: str, body: dict[str, Any]
                                 ) -> dict[str, Any]:
        if not _NUMBER.match(name):
            raise ApiRefused(400, f"{kind} name must be 1-64 of 0-9 A-Z a-z _ + * # . -",
                             "bad_object")
        allowed = _USER_KEYS if kind == "user" else _DN_KEYS
        unknown = set(body) - allowed
        if unknown:
            raise ApiRefused(400, f"unknown field(s) {', '.join(sorted(unknown))} "
                                  f"(known: {', '.join(sorted(allowed))})", "bad_object")
        profile = body.get("calling-profile")
        if profile is not None and not isinstance(profile, str):
            raise ApiRefused(400, "calling-profile must be a profile name", "bad_object")
        out = dict(body)
        if kind == "user":
            dns = body.get("dns", [])
            if not isinstance(dns, list) or not all(isinstance(d, str) and _NUMBER.match(d)
                                                    for d in dns):
                raise ApiRefused(400, "dns must be a list of DN numbers", "bad_object")
            if "pin" in body:
                pin = body["pin"]
                if not isinstance(pin, str) or not _PIN.match(pin):
                    raise ApiRefused(400, "pin must be 4-12 digits", "bad_object")
                # 100,000 PBKDF2 rounds: off the loop, queries go on meanwhile
                out["pin"] = await asyncio.to_thread(pin_hash, pin)
            else:
                old = await self.host.store.get("user", name)
                if old is not None and "pin" in old:
                    out["pin"] = old["pin"]
        else:
            dn_type = body.get("type", "Extension")
            if dn_type not in _DN_TYPES:
                raise ApiRefused(400, f"type must be one of {', '.join(_DN_TYPES)}",
                                 "bad_object")
            out["type"] = dn_type
            user = body.get("user")
            if user is not None and (not isinstance(user, str) or not _NUMBER.match(user)):
                raise ApiRefused(400, "user must be a user name", "bad_object")
        return out

    def _with(self, kind: str, name: str, body: dict[str, Any]) -> PlanSources:
        src = self.host.holder.sources.copy()
        try:
            if kind == "partition":
                check_name(name, "partition")
                src.partitions[name] = body
            elif kind == "calling-profile":
                check_name(name, "calling profile")
                src.profiles[name] = body
            elif kind == "user":
                for dn in body.get("dns", []):
                    src.users_by_dn[dn] = name
                if body.get("calling-profile"):
                    src.assignments.setdefault("user", {})[name] = body["calling-profile"]
            elif kind == "dn":
                if body.get("user"):
                    src.users_by_dn.setdefault(name, body["user"])
                if body.get("calling-profile"):
                    dn_kind = {"Trunk": "trunk", "TrunkGroup": "trunk-group",
                               "RoutingPoint": "routing-point"}.get(body["type"], "extension")
                    src.assignments.setdefault(dn_kind, {})[name] = body["calling-profile"]
        except DialPlanError as exc:
            raise ApiRefused(400, str(exc), "bad_object") from None
        return src

    def _without(self, kind: str, name: str) -> PlanSources:
        src = self.host.holder.sources.copy()
        if kind == "partition":
            src.partitions.pop(name, None)
        elif kind == "calling-profile":
            src.profiles.pop(name, None)
        return src

    # ------------------------------------------------------------------ assignments

    def _assignment_key(self, request: web.Request) -> tuple[str, str]:
        kind, name = request.match_info["kind"], request.match_info["name"]
        if kind not in ASSIGNMENT_KINDS:
            raise ApiRefused(400, f"kind must be one of {', '.join(ASSIGNMENT_KINDS)}",
                             "bad_object")
        if kind == "switch" and name not in ("internal", "external"):
            raise ApiRefused(400, "the switch has an internal and an external profile",
                             "bad_object")
        return kind, name

    async def list_assignments(self, request: web.Request) -> web.Response:
        return web.json_response(self.host.holder.sources.assignments)

    async def get_assignment(self, request: web.Request) -> web.Response:
        kind, name = self._assignment_key(request)
        profile = self.host.holder.sources.assignments.get(kind, {}).get(name)
        if profile is None:
            raise ApiRefused(404, f"no calling profile assigned to {kind} {name}", "not_found")
        return web.json_response({"calling-profile": profile})

    async def put_assignment(self, request: web.Request) -> web.Response:
        kind, name = self._assignment_key(request)
        body = await self._body(request)
        profile = body.get("calling-profile")
        if set(body) != {"calling-profile"} or not isinstance(profile, str):
            raise ApiRefused(400, 'body must be {"calling-profile": NAME}', "bad_object")
        src = self.host.holder.sources.copy()
        src.assignments.setdefault(kind, {})[name] = profile
        await self._install(src, lambda: self.host.store.put(
            "assignment", f"{kind}/{name}", {"calling-profile": profile}))
        self.host.log.info("provisioned", kind="assignment", name=f"{kind}/{name}",
                           calling_profile=profile)
        return web.json_response({"calling-profile": profile})

    async def delete_assignment(self, request: web.Request) -> web.Response:
        kind, name = self._assignment_key(request)
        if not await self.host.store.delete("assignment", f"{kind}/{name}"):
            raise ApiRefused(404, f"no stored assignment {kind}/{name}", "not_found")
        await self.host.reload(reread_config=False)
        return web.json_response({"deleted": f"{kind}/{name}"})


def _public(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A stored object as the API shows it: a PIN is never shown, only whether one is set."""
    if kind == "user":
        out = {k: v for k, v in body.items() if k != "pin"}
        out["pin-set"] = "pin" in body
        return out
    return body
