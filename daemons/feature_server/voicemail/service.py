"""The voicemail service object the feature-server daemon wires in (see package doc)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from daemons.cluster.config import ClusterConfig
from daemons.cluster.model import Application, DnType
from daemons.feature_server.voicemail.api import MailboxApi
from daemons.feature_server.voicemail.call import VoicemailCall, transcoded_frames
from daemons.feature_server.voicemail.messages import MessageFiles
from daemons.feature_server.voicemail.mwi import MwiNotifier
from daemons.feature_server.voicemail.mwi_access import MwiAccess
from daemons.feature_server.voicemail.pin_guard import PinGuard
from daemons.feature_server.voicemail.prompts import PromptLibrary
from daemons.feature_server.voicemail.store import Mailbox, MailboxStore, StoredMessage, open_store
from daemons.feature_server.voicemail.ua import VoicemailUserAgent
from daemons.runtime.config import ConfigError
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics
from daemons.runtime.rtp import PortRange, RtpCounters, RtpPacer, RtpSession
from daemons.runtime.sip_endpoint import SipEndpoint
from protocols.rtp import RtpError
from protocols.rtp.g711 import Codec
from protocols.sip.message import Response

__all__ = ["VoicemailService"]

Handler = Callable[[Any], Awaitable[Response | None]]

DEFAULT_SIP_PORT = 5160  # the guide's Feature Server SIP port
RTP_SWITCH_INTERVAL = 0.0005


def _option(app: Application, name: str, default: Any, cluster: ClusterConfig,
            kind: type = str) -> Any:
    value = app.options.get(name, default)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(cluster.file, f"applications.{app.name}.options.{name}",
                          f"must be a {kind.__name__}")
    return value


def _delegates(app: Application, cluster: ClusterConfig) -> dict[str, frozenset[str]]:
    """``mwi-delegates``: ``{"2001" = ["1001", "1002"]}``, mailbox -> DNs."""
    value = app.options.get("mwi-delegates", {})
    where = f"applications.{app.name}.options.mwi-delegates"
    if not isinstance(value, Mapping):
        raise ConfigError(cluster.file, where, "must be a table: mailbox = [DN, ...]")
    out: dict[str, frozenset[str]] = {}
    for mailbox, dns in value.items():
        if not isinstance(dns, (list, tuple)) or not all(isinstance(d, str) for d in dns):
            raise ConfigError(cluster.file, f"{where}.{mailbox}", "must be a list of DNs")
        out[str(mailbox)] = frozenset(dns)
    return out


class VoicemailService:
    """Mailboxes, deposit/retrieval calls, MWI and the mailbox API of one feature-server.

    SIP listens on the application's ``host``:``sip-port`` (UDP and TCP), RTP
    on option ``rtp-ports`` (default ``20000-20999``); ``store_url`` is
    ``sqlite:///abs/path.db`` or ``postgresql://...``; prompts and messages
    live under ``state_dir``. Options of ``[applications.NAME.options]``:
    ``rtp-ports``, ``default-pin`` (mailboxes created for every Extension DN
    that has none; unset: none are created), ``access-number`` (``5555``),
    ``max-messages`` (100), ``max-message-length`` (seconds, 120),
    ``mwi-max-expires`` (3600), ``mwi-delegates`` (a table: mailbox -> the DNs
    besides its owner that may subscribe to it), ``pin-max-failures`` (6), ``pin-lock-time``
    (seconds, 900) and ``rtp-timeout`` (seconds without RTP from the caller
    before the call is ended, 60; 0: never).
    """

    def __init__(self, *, cluster: ClusterConfig, app: Application, store_url: str,
                 state_dir: Path, metrics: Metrics) -> None:
        self.cluster = cluster
        self.app = app
        self.store_url = store_url
        self.state_dir = Path(state_dir)
        self.metrics = metrics
        self.log = get_logger("voicemail", application=app.name)
        self.host = app.host
        self.sip_port = app.port("sip-port") or DEFAULT_SIP_PORT
        ports = _option(app, "rtp-ports", "20000-20999", cluster)
        try:
            self.rtp_ports = PortRange.parse(ports)
        except ValueError as exc:
            raise ConfigError(cluster.file, f"applications.{app.name}.options.rtp-ports",
                              str(exc)) from None
        pin = _option(app, "default-pin", None, cluster)
        if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 12):
            raise ConfigError(cluster.file, f"applications.{app.name}.options.default-pin",
                              "must be 4 to 12 digits")
        self.default_pin: str | None = pin
        self.access_number: str = _option(app, "access-number", "5555", cluster)
        self.max_messages: int = _option(app, "max-messages", 100, cluster, int)
        self.max_message_length = float(_option(app, "max-message-length", 120, cluster, int))
        self.mwi_max_expires: int = _option(app, "mwi-max-expires", 3600, cluster, int)
        self.mwi_access = MwiAccess(cluster, _delegates(app, cluster))
        self.rtp_timeout = float(_option(app, "rtp-timeout", 60, cluster, int))
        self.store: MailboxStore = open_store(store_url)
        self.files = MessageFiles(self.state_dir / "messages")
        self.prompts = PromptLibrary(self.state_dir / "prompts")
        self.refused = metrics.tally("voicemail_refused", "Voicemail requests refused",
                                     ("reason",))
        self.calls_started = metrics.tally("voicemail_calls", "Voicemail calls answered",
                                           ("mode",))
        self.deposits = metrics.counter("voicemail_messages_deposited",
                                        "Messages stored in a mailbox")
        self.digit_counter = metrics.tally("voicemail_dtmf_digits", "Key presses received",
                                           ("source",))
        self.pin_failures = metrics.counter("voicemail_pin_failures",
                                            "Wrong PINs entered at retrieval")
        self.pin_guard = PinGuard(max_failures=_option(app, "pin-max-failures", 6, cluster, int),
                                  lock_time=float(_option(app, "pin-lock-time", 900, cluster,
                                                          int)))
        self.rtp_counters = RtpCounters(metrics)
        self.rtp_dropped = self.rtp_counters.dropped
        self.ua = VoicemailUserAgent(self)
        self._endpoint: SipEndpoint | None = None
        self._mwi: MwiNotifier | None = None
        self._pacer: RtpPacer | None = None
        self._cache: dict[str, tuple[Codec, bytes]] = {}
        #: wraps the SIP handler: the feature-server's treatments take their requests first
        self.sip_front: Callable[[Handler], Handler] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> SipEndpoint:
        assert self._endpoint is not None, "not started"
        return self._endpoint

    @property
    def mwi(self) -> MwiNotifier:
        assert self._mwi is not None, "not started"
        return self._mwi

    @property
    def pacer(self) -> RtpPacer:
        assert self._pacer is not None, "not started"
        return self._pacer

    async def start(self) -> None:
        """Open the store, create missing mailboxes, bind SIP and RTP."""
        loop = asyncio.get_running_loop()
        made = await asyncio.to_thread(self.prompts.load)
        if made:
            self.log.info("voicemail_prompts_generated", files=made,
                          directory=str(self.prompts.directory))
        self.files.prepare()
        await self.store.open()
        await self._create_mailboxes()
        orphans = self.files.remove_orphans(await self.store.message_files())
        if orphans:
            self.log.warning("voicemail_orphans_removed", files=len(orphans))
        self._pacer = RtpPacer(loop)
        self._pacer.register(self.metrics)
        handler = self.ua.handle if self.sip_front is None else self.sip_front(self.ua.handle)
        self._endpoint = SipEndpoint(handler, metrics=self.metrics,
                                     user_agent="sipcluster-feature-server", logger=self.log)
        await self._endpoint.listen_pair(self.host, self.sip_port)
        self._mwi = MwiNotifier(self._endpoint, self.store, domain=self.cluster.switch.domain,
                                metrics=self.metrics, log=self.log,
                                max_expires=self.mwi_max_expires, access=self.mwi_access)
        restored = await self._mwi.restore()
        # The pacer's ticks share the GIL with the store's thread (aiosqlite) and
        # the file writes: with the default 5 ms switch interval a busy store
        # thread delays a tick by up to 5 ms each time; 0.5 ms keeps RTP on time.
        sys.setswitchinterval(min(sys.getswitchinterval(), RTP_SWITCH_INTERVAL))
        self._started = True
        self.log.info("voicemail_started", sip=f"{self.host}:{self.sip_port}",
                      rtp_ports=f"{self.rtp_ports.first}-{self.rtp_ports.last}",
                      store=self.store_url.split("://")[0], subscriptions=restored)

    async def _create_mailboxes(self) -> None:
        if self.default_pin is None:
            self.log.info("voicemail_default_pin_unset", created=0)
            return
        created = 0
        for dn in self.cluster.dns.values():
            if dn.type is DnType.EXTENSION:
                created += await self.store.create_mailbox(dn.number, self.default_pin,
                                                           self.max_messages)
        if created:
            self.log.info("voicemail_mailboxes_created", count=created)

    async def stop(self) -> None:
        """End calls, close sockets and the store."""
        self._started = False
        await self.ua.close()
        if self._mwi is not None:
            await self._mwi.close()
        if self._endpoint is not None:
            await self._endpoint.close()
        if self._pacer is not None:
            self._pacer.close()
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    def add_routes(self, web_app: web.Application) -> None:
        """Mount ``/api/mailboxes``: create/list/delete a mailbox, set its PIN, list messages."""
        MailboxApi(self).add_routes(web_app)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, detail) for /healthz."""
        return self._started, {
            "started": self._started,
            "calls": len(self.ua.calls),
            "subscriptions": len(self._mwi) if self._mwi is not None else 0,
        }

    # ---------------------------------------------------------------- what calls need
    def new_rtp_session(self) -> RtpSession:
        return RtpSession(self.pacer, self.rtp_counters, payload_type=0, logger=self.log)

    def prompt_frames(self, name: str, codec: Codec) -> list[bytes]:
        return self.prompts.frames(name, codec)

    def greeting_frames(self, mailbox: Mailbox, codec: Codec) -> list[bytes]:
        if mailbox.greeting:
            audio = self._read(mailbox.greeting)
            if audio is not None:
                return transcoded_frames(codec, audio[1], audio[0])
        return self.prompts.frames("greeting", codec)

    def message_frames(self, message_id: str, codec: Codec) -> list[bytes]:
        audio = self._read(f"{message_id}.wav")
        if audio is None:
            return self.prompts.frames("no_messages", codec)
        return transcoded_frames(codec, audio[1], audio[0])

    def _read(self, name: str) -> tuple[Codec, bytes] | None:
        try:
            return self.files.read(name)
        except (OSError, RtpError) as exc:
            self.log.warning("voicemail_file_unreadable", file=name, reason=str(exc))
            return None

    async def deposit(self, mailbox: str, caller: str, codec: Codec, data: bytes) -> None:
        """Store a message: file first (atomic), then its row, then MWI."""
        message_id = self.files.new_id()
        name = f"{message_id}.wav"
        await asyncio.to_thread(self.files.write, name, codec, data)
        await self.store.add_message(StoredMessage(
            id=message_id, mailbox=mailbox, caller=caller, created=time.time(),
            duration_ms=len(data) // 8, codec=codec.name, status="new", file=name))
        self.deposits.inc()
        self.log.info("voicemail_message_stored", mailbox=mailbox, message=message_id,
                      caller=caller, ms=len(data) // 8, codec=codec.name)
        self.mwi.mailbox_changed(mailbox)

    async def save_greeting(self, mailbox: str, codec: Codec, data: bytes) -> None:
        name = f"greeting-{mailbox}-{self.files.new_id()}.wav"
        await asyncio.to_thread(self.files.write, name, codec, data)
        old = await self.store.get_mailbox(mailbox)
        await self.store.set_greeting(mailbox, name)
        if old is not None and old.greeting:
            await asyncio.to_thread(self.files.remove, old.greeting)
        self.log.info("voicemail_greeting_recorded", mailbox=mailbox, ms=len(data) // 8)

    async def delete_message(self, mailbox: str, message_id: str) -> None:
        message = await self.store.get_message(message_id)
        if message is None or message.mailbox != mailbox:
            return
        await self.store.delete_message(message_id)
        await asyncio.to_thread(self.files.remove, message.file)
        self.log.info("voicemail_message_deleted", mailbox=mailbox, message=message_id)
        self.mwi.mailbox_changed(mailbox)

    async def save_message(self, mailbox: str, message_id: str) -> None:
        if await self.store.save_message(message_id):
            self.mwi.mailbox_changed(mailbox)

    def pin_checked(self, mailbox: str, ok: bool) -> None:
        if not ok:
            self.pin_failures.inc()
            self.log.warning("voicemail_pin_wrong", mailbox=mailbox)
        if self.pin_guard.checked(mailbox, ok, asyncio.get_running_loop().time()):
            self.log.warning("voicemail_mailbox_locked", mailbox=mailbox,
                             seconds=self.pin_guard.lock_time)

    async def change_pin(self, mailbox: str, pin: str) -> None:
        await self.store.set_pin(mailbox, pin)
        self.log.info("voicemail_pin_changed", mailbox=mailbox)

    def hangup(self, call: VoicemailCall) -> None:
        task = asyncio.ensure_future(self.ua.hangup(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
