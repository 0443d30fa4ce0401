"""SIP dialogs (RFC 3261 §12): dialog id, route set, CSeq spaces, target refresh.

A :class:`Dialog` is plain state plus the rules of §12 that read or change it.
It builds in-dialog requests (§12.2.1.1, loose and strict routing), checks the
order of requests it receives (§12.2.2) and applies target refreshes. It does
not send anything: the TU hands the requests it builds to the transaction layer.

A dialog is early, confirmed or terminated (:class:`DialogState`);
:data:`TRANSITIONS` is its one (state, :class:`DialogInput`) -> state table and
:meth:`Dialog.apply` the only place that moves it.
"""

from __future__ import annotations

import enum
import random
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from protocols.sip.errors import SipError
from protocols.sip.headers import Headers, NameAddr, parse_name_addr
from protocols.sip.message import Request, Response
from protocols.sip.uri import parse_uri

__all__ = [
    "TARGET_REFRESH_METHODS",
    "TRANSITIONS",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogInput",
    "DialogState",
    "OutOfOrderRequest",
    "ack_route",
]

#: Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311 §5.1
#: UPDATE, RFC 6665 §4.1.2.3 / §4.1.3 SUBSCRIBE and NOTIFY).
TARGET_REFRESH_METHODS: Final = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})

#: Requests that reuse the CSeq number of the request they refer to (§9.1, §17.1.1.3).
_SAME_CSEQ_METHODS: Final = frozenset({"ACK", "CANCEL"})


class DialogError(SipError):
    """A message cannot create or be used in a dialog; ``status`` is the SIP answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class OutOfOrderRequest(DialogError):
    """A request's CSeq is lower than the remote sequence number (§12.2.2: 500)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 500)


class DialogState(enum.Enum):
    """Early (created by a provisional response), confirmed (by a 2xx) or terminated, §12."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(enum.Enum):
    """What moves a dialog between :class:`DialogState` values."""

    #: we build a request within the dialog (§12.2.1.1)
    LOCAL_REQUEST = "local-request"
    #: a 2xx to the INVITE, sent or received (§12.1, §13.2.2.4, §13.3.1.4)
    INVITE_ACCEPTED = "invite-accepted"
    #: a 3xx-6xx to the INVITE, sent or received (§12.3, §13.2.2.3, §14.1)
    INVITE_REJECTED = "invite-rejected"
    #: a 481 or 408 to a request we sent in the dialog (§12.2.1.2)
    DIALOG_GONE = "dialog-gone"
    #: BYE sent or received (§15)
    BYE = "bye"


_EARLY: Final = DialogState.EARLY
_CONFIRMED: Final = DialogState.CONFIRMED
_TERMINATED: Final = DialogState.TERMINATED

#: The dialog's transitions: (state, input) -> next state. A failed re-INVITE
#: leaves a confirmed dialog as it was (§14.1); answers arriving after the
#: dialog ended do not revive it. The one thing refused is building a request
#: in a terminated dialog: :meth:`Dialog.apply` raises :class:`DialogError`.
TRANSITIONS: Final[Mapping[tuple[DialogState, DialogInput], DialogState]] = {
    (_EARLY, DialogInput.LOCAL_REQUEST): _EARLY,
    (_EARLY, DialogInput.INVITE_ACCEPTED): _CONFIRMED,
    (_EARLY, DialogInput.INVITE_REJECTED): _TERMINATED,
    (_EARLY, DialogInput.DIALOG_GONE): _TERMINATED,
    (_EARLY, DialogInput.BYE): _TERMINATED,
    (_CONFIRMED, DialogInput.LOCAL_REQUEST): _CONFIRMED,
    (_CONFIRMED, DialogInput.INVITE_ACCEPTED): _CONFIRMED,
    (_CONFIRMED, DialogInput.INVITE_REJECTED): _CONFIRMED,
    (_CONFIRMED, DialogInput.DIALOG_GONE): _TERMINATED,
    (_CONFIRMED, DialogInput.BYE): _TERMINATED,
    (_TERMINATED, DialogInput.INVITE_ACCEPTED): _TERMINATED,
    (_TERMINATED, DialogInput.INVITE_REJECTED): _TERMINATED,
    (_TERMINATED, DialogInput.DIALOG_GONE): _TERMINATED,
    (_TERMINATED, DialogInput.BYE): _TERMINATED,
}


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag and remote tag (§12). Tags are empty strings when absent."""

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def for_incoming_request(cls, request: Request) -> DialogId:
        """The id of the dialog an in-dialog request we receive belongs to (§12.2.2)."""
        return cls(request.call_id, request.to.tag or "", request.from_.tag or "")

    @classmethod
    def for_response(cls, response: Response) -> DialogId:
        """The id, at the UAC, of the dialog a response belongs to (§12.1.2)."""
        return cls(response.call_id, response.from_.tag or "", response.to.tag or "")


def _with_tag(addr: NameAddr, tag: str) -> NameAddr:
    params = dict(addr.params)
    params["tag"] = tag
    return NameAddr(addr.uri, addr.display_name, params)


def _is_secure(request: Request, transport: str) -> bool:
    return transport.upper() == "TLS" and request.uri[:5].lower() == "sips:"


def _contact_uri(message: Request | Response) -> str | None:
    contacts = message.contacts
    if not contacts or contacts[0].is_star:
        return None
    return contacts[0].uri


def _request_uri_form(uri: str) -> str:
    """A route URI as a Request-URI: no ``method`` parameter, no headers (§19.1.1 Table 1)."""
    parsed = parse_uri(uri)
    if "method" not in parsed.params and not parsed.headers:
        return uri
    parsed.params.pop("method", None)
    parsed.headers.clear()
    return str(parsed)


class Dialog:
    """One dialog's state (RFC 3261 §12.1): what in-dialog requests are built from.

    ``local_seq`` / ``remote_seq`` are ``None`` while empty. ``route_set`` holds
    URIs in the order requests must visit them. ``local`` and ``remote`` are the
    From and To header values of requests we send (with tags).
    """

    __slots__ = (
        "_rng",
        "_state",
        "id",
        "last_invite_seq",
        "local",
        "local_seq",
        "remote",
        "remote_seq",
        "remote_target",
        "route_set",
        "secure",
    )

    def __init__(
        self,
        dialog_id: DialogId,
        *,
        local: NameAddr,
        remote: NameAddr,
        remote_target: str,
        route_set: Iterable[str] = (),
        local_seq: int | None = None,
        remote_seq: int | None = None,
        secure: bool = False,
        state: DialogState = DialogState.CONFIRMED,
        rng: random.Random | None = None,
    ) -> None:
        self.id = dialog_id
        self.local = local
        self.remote = remote
        self.remote_target = remote_target
        self.route_set: list[str] = list(route_set)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self._state = state
        self.last_invite_seq: int | None = None
        self._rng = rng

    def __repr__(self) -> str:
        return f"<Dialog {self.id.call_id} {self.state.value}>"

    @property
    def state(self) -> DialogState:
        """Early, confirmed or terminated; only :meth:`apply` moves it (:data:`TRANSITIONS`)."""
        return self._state

    def apply(self, trigger: DialogInput) -> DialogState:
        """Move the dialog by one input through :data:`TRANSITIONS`; the new state.

        Raises :class:`DialogError` (the dialog is left as it was) when the
        table has no transition for ``trigger`` in the current state.
        """
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise DialogError(f"the dialog is {self._state.value}") from None
        return self._state

    @property
    def local_uri(self) -> str:
        """The local URI (§12.1): the From URI of requests we send."""
        return self.local.uri

    @property
    def remote_uri(self) -> str:
        """The remote URI (§12.1): the To URI of requests we send."""
        return self.remote.uri

    # ---------------------------------------------------------------- creation

    @classmethod
    def create_uac(
        cls,
        request: Request,
        response: Response,
        *,
        transport: str | None = None,
        rng: random.Random | None = None,
    ) -> Dialog:
        """The dialog a UAC gets from a 1xx (with To tag) or 2xx to ``request`` (§12.1.2).

        The route set is the response's Record-Route in reverse order; the remote
        target its Contact; the local sequence number the request's CSeq.
        """
        status = response.status
        to_tag = response.to.tag
        if not 100 < status < 300:
            raise DialogError(f"a {status} response does not create a dialog")
        if not to_tag:
            raise DialogError("a response without a To tag does not create a dialog")
        target = _contact_uri(response)
        if target is None:
            if status >= 200:
                raise DialogError("a 2xx creating a dialog must have a Contact")
            target = request.uri
        from_ = request.from_
        if not from_.tag:
            raise DialogError("a request creating a dialog must have a From tag")
        transport = request.top_via.transport if transport is None else transport
        dialog = cls(
            DialogId(request.call_id, from_.tag, to_tag),
            local=from_,
            remote=response.to,
            remote_target=target,
            route_set=[r.uri for r in reversed(response.record_routes)],
            local_seq=request.cseq.number,
            secure=_is_secure(request, transport),
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            rng=rng,
        )
        if request.method == "INVITE":
            dialog.last_invite_seq = request.cseq.number
        return dialog

    @classmethod
    def create_uas(
        cls,
        request: Request,
        response: Response,
        *,
        transport: str | None = None,
        rng: random.Random | None = None,
    ) -> Dialog:
        """The dialog a UAS gets when it answers ``request`` with ``response`` (§12.1.1).

        ``response`` is our 1xx (with To tag) or 2xx. The route set is the
        request's Record-Route in order, the remote target its Contact, the
        remote sequence number its CSeq. ``transport`` is the one the request
        arrived on (default: its top Via's).
        """
        status = response.status
        to_tag = response.to.tag
        if not 100 < status < 300:
            raise DialogError(f"a {status} response does not create a dialog")
        if not to_tag:
            raise DialogError("our response must carry a To tag to create a dialog")
        target = _contact_uri(request)
        if target is None:
            raise DialogError("a request creating a dialog must have a Contact")
        transport = request.top_via.transport if transport is None else transport
        remote = request.from_
        return cls(
            DialogId(request.call_id, to_tag, remote.tag or ""),
            local=_with_tag(request.to, to_tag),
            remote=remote,
            remote_target=target,
            route_set=[r.uri for r in request.record_routes],
            remote_seq=request.cseq.number,
            secure=_is_secure(request, transport),
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            rng=rng,
        )

    # ---------------------------------------------------------------- UAC behaviour

    def next_hop(self) -> str:
        """The URI the next in-dialog request is sent towards (§12.2.1.1, §8.1.2)."""
        return self.route_set[0] if self.route_set else self.remote_target

    def create_request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        via: str | None = None,
        contact: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """Build a request within the dialog (§12.2.1.1).

        To/From/Call-ID come from the dialog; CSeq is the local sequence number
        plus one (ACK reuses ``cseq``, by default the last INVITE's; CANCEL is
        refused, see :func:`protocols.sip.transaction.make_cancel`). Loose
        routing (first route has ``lr``): Request-URI is the remote target and
        Route the route set. Strict routing: Request-URI is
        the first route, Route the rest followed by the remote target.
        ``via``, ``contact`` and ``headers`` are added as given.
        """
        self.apply(DialogInput.LOCAL_REQUEST)
        method = method.upper()
        if method == "CANCEL":
            # §9.1: a CANCEL copies the INVITE's Via (branch) and headers.
            raise DialogError("build a CANCEL from its INVITE with transaction.make_cancel")
        if method == "ACK":
            number = cseq if cseq is not None else self.last_invite_seq
            if number is None:
                raise DialogError(f"{method} needs the CSeq number of the INVITE it refers to")
        else:
            if cseq is not None:
                number = cseq
            elif self.local_seq is None:
                # §12.2.1.1 / §8.1.1.5: an empty local sequence starts anywhere below 2**31.
                rng = self._rng
                number = (rng.randrange(1, 2**31) if rng is not None
                          else secrets.randbelow(2**31 - 1) + 1)
            else:
                number = self.local_seq + 1
            self.local_seq = number
            if method == "INVITE":
                self.last_invite_seq = number

        routes = self.route_set
        if not routes:
            uri, route_values = self.remote_target, []
        elif "lr" in parse_uri(routes[0]).params:
            uri, route_values = self.remote_target, list(routes)
        else:
            uri = _request_uri_form(routes[0])
            route_values = [*routes[1:], self.remote_target]

        out = Headers()
        if via is not None:
            out.add("Via", via)
        out.add("Max-Forwards", "70")
        for route in route_values:
            out.add("Route", f"<{route}>")
        out.add("From", str(self.local))
        out.add("To", str(self.remote))
        out.add("Call-ID", self.id.call_id)
        out.add("CSeq", f"{number} {method}")
        if contact is not None:
            out.add("Contact", contact)
        for name, value in headers:
            out.add(name, value)
        return Request(method, uri, headers=out, body=body)

    def receive_response(self, response: Response) -> None:
        """Apply a response to a request we sent in this dialog (§12.2.1.2, §13.2.2.4).

        481 and 408 terminate the dialog; a 2xx to a target refresh replaces the
        remote target; a 2xx to the INVITE confirms an early dialog and
        recomputes its route set; a failure to it ends an early dialog.
        """
        status = response.status
        method = response.cseq.method
        if status < 200:
            return
        if status in (408, 481):
            self.apply(DialogInput.DIALOG_GONE)
            return
        if status >= 300:
            if method == "INVITE":
                self.apply(DialogInput.INVITE_REJECTED)
            return
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target
        if method == "INVITE":
            was = self._state
            if self.apply(DialogInput.INVITE_ACCEPTED) is not was:
                # the 2xx confirming an early dialog sets its route set (§13.2.2.4)
                self.route_set = [r.uri for r in reversed(response.record_routes)]

    # ---------------------------------------------------------------- UAS behaviour

    def receive_request(self, request: Request) -> None:
        """Check and apply a request received in this dialog (§12.2.2).

        Raises :class:`OutOfOrderRequest` (answer 500) when its CSeq is lower
        than the remote sequence number; the dialog is left unchanged then.
        A target refresh request with a Contact replaces the remote target.
        """
        method = request.method
        if method not in _SAME_CSEQ_METHODS:
            number = request.cseq.number
            if self.remote_seq is not None and number < self.remote_seq:
                raise OutOfOrderRequest(
                    f"CSeq {number} is lower than the remote sequence number {self.remote_seq}"
                )
            self.remote_seq = number
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(request)
            if target is not None:
                self.remote_target = target

    def response_sent(self, response: Response) -> None:
        """Apply a final response we sent to the INVITE of the dialog (§12.1.1, §13.3.1)."""
        if response.cseq.method != "INVITE":
            return
        if 200 <= response.status < 300:
            self.apply(DialogInput.INVITE_ACCEPTED)
        elif response.status >= 300:
            self.apply(DialogInput.INVITE_REJECTED)

    def terminate(self) -> None:
        """End the dialog (BYE sent or received, §15)."""
        self.apply(DialogInput.BYE)


def ack_route(invite: Request, response: Response,
              dialog: Dialog | None = None) -> tuple[list[str], str]:
    """Where the ACK of a 2xx to ``invite`` goes (§13.2.2.4): the Route header lines
    it carries and the URI of its next hop.

    A 2xx to an initial INVITE sets the route set (its Record-Route reversed,
    else the Contact: ``dialog``, or the one it creates, has them). A
    re-INVITE's 2xx carries no Record-Route: the dialog's route set is fixed
    (§12.2.1.2) and the re-INVITE carried it, so the ACK follows those Routes.
    """
    if invite.to.tag and "record-route" not in response.headers:
        routes = invite.headers.get_lines("Route")
        if routes:
            return routes, parse_name_addr(invite.headers.get_all("Route")[0]).uri
    if dialog is None:
        dialog = Dialog.create_uac(invite, response)
    return [], dialog.next_hop()
