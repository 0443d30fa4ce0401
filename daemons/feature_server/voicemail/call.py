"""One voicemail call: the RTP stream, the TUI (:class:`IvrMenu`) and the
recorder, glued on the event loop.

Media in: audio of the negotiated codec goes through a jitter buffer into the
recording (a lost frame becomes 20 ms of silence); telephone-events (RFC
4733) and SIP INFO digits drive the menu. Media out: prompts and messages,
paced by the daemon's :class:`~daemons.runtime.rtp.RtpPacer`. What the menu
asks for (play, record, delete, save, change PIN, hang up) is carried out
here; store work runs in order on one task per call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from daemons.feature_server.voicemail.ivr import (
    ChangePin,
    DeleteMessage,
    Hangup,
    IvrMenu,
    Mode,
    PinChecked,
    Play,
    SaveMessage,
    StartRecording,
    StopRecording,
)
from daemons.feature_server.voicemail.prompts import FRAME, frames_of
from daemons.feature_server.voicemail.store import Mailbox
from daemons.runtime.driver import TimerSlot
from daemons.runtime.rtp import RtpSession
from protocols.rtp import RtpError, g711
from protocols.rtp.g711 import Codec
from protocols.rtp.jitter import JitterBuffer
from protocols.rtp.packet import RtpPacket
from protocols.rtp.telephone_event import DtmfReceiver
from protocols.sip.dialog import Dialog
from protocols.sip.sdp import AudioAnswer

__all__ = ["CallContext", "VoicemailCall"]

#: shorter recordings are not kept (a caller who hung up at the beep)
MIN_MESSAGE_MS = 500


class CallContext(Protocol):
    """What a call needs from the voicemail service."""

    log: Any
    digit_counter: Any
    rtp_dropped: Any
    max_message_length: float
    rtp_timeout: float

    def prompt_frames(self, name: str, codec: Codec) -> list[bytes]: ...

    def greeting_frames(self, mailbox: Mailbox, codec: Codec) -> list[bytes]: ...

    def message_frames(self, message_id: str, codec: Codec) -> list[bytes]: ...

    async def deposit(self, mailbox: str, caller: str, codec: Codec, data: bytes) -> None: ...

    async def save_greeting(self, mailbox: str, codec: Codec, data: bytes) -> None: ...

    async def delete_message(self, mailbox: str, message_id: str) -> None: ...

    async def save_message(self, mailbox: str, message_id: str) -> None: ...

    async def change_pin(self, mailbox: str, pin: str) -> None: ...

    def pin_checked(self, mailbox: str, ok: bool) -> None: ...

    def hangup(self, call: VoicemailCall) -> None: ...


class VoicemailCall:
    """A deposit or retrieval call in progress (see module doc)."""

    def __init__(self, ctx: CallContext, *, mode: Mode, mailbox: Mailbox, caller: str,
                 dialog: Dialog, rtp: RtpSession, answer: AudioAnswer, transport: str,
                 messages: list[str], loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.mode = mode
        self.mailbox = mailbox
        self.caller = caller
        self.dialog = dialog
        self.rtp = rtp
        self.answer = answer
        self.transport = transport
        self.codec = Codec[answer.codec]
        self.loop = loop
        self.log = ctx.log.bind(call_id=dialog.id.call_id, mailbox=mailbox.number,
                                mode=mode.value)
        now = loop.time()
        self.menu = IvrMenu(mode, now, pin=mailbox.pin, messages=messages,
                            max_record=ctx.max_message_length)
        self.dtmf = DtmfReceiver()
        self._info_keys: deque[float] = deque()
        self.jitter = JitterBuffer()
        self.recording: bytearray | None = None
        self.recording_what = ""
        self._max_bytes = int(ctx.max_message_length * 8000)
        self._play_generation = 0
        self._timer = TimerSlot(loop, self._on_timer)
        #: no RTP from the peer for ``rtp_timeout`` seconds (and not on hold):
        #: the caller is gone without a BYE
        self._media_timer = TimerSlot(loop, self._on_media_timer)
        self.last_rtp = now
        self._jobs: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        self.closed = False
        rtp.on_packet = self._on_packet

    # ---------------------------------------------------------------- driving
    def start(self) -> None:
        self._run()
        self._arm_media_timer()

    def _arm_media_timer(self) -> None:
        if self.ctx.rtp_timeout > 0 and not self.closed:
            self._media_timer.arm(self.last_rtp + self.ctx.rtp_timeout)

    def _on_media_timer(self, now: float) -> None:
        if self.closed:
            return
        if now - self.last_rtp < self.ctx.rtp_timeout or self.rtp.muted:
            if self.rtp.muted:
                self.last_rtp = now  # on hold: the peer may well be silent
            self._arm_media_timer()
            return
        self.log.warning("voicemail_rtp_timeout", seconds=self.ctx.rtp_timeout)
        self.ctx.rtp_dropped.labels("rtp_timeout").inc()
        if self.recording is not None:
            self._stop_recording(StopRecording(keep=True))
        self.ctx.hangup(self)

    def _on_timer(self, now: float) -> None:
        self.menu.handle_timer(now)
        self._run()

    def _run(self) -> None:
        if self.closed:
            return
        for action in self.menu.actions():
            _ACTIONS[type(action)](self, action)
        self._timer.arm(self.menu.next_timer())

    def info_digit(self, digit: str) -> bool:
        """A key press by SIP INFO; False when it is over the flood limit (the
        same limit as RFC 4733 keys: ``max_digits`` per ``window``)."""
        now = self.loop.time()
        recent = self._info_keys
        while recent and recent[0] <= now - self.dtmf.window:
            recent.popleft()
        if len(recent) >= self.dtmf.max_digits:
            self.ctx.rtp_dropped.labels("dtmf_flood").inc()
            return False
        recent.append(now)
        self.digit(digit, "info")
        return True

    def digit(self, digit: str, source: str) -> None:
        """A key press from RFC 4733 or SIP INFO."""
        if self.closed:
            return
        self.ctx.digit_counter.labels(source).inc()
        self.log.debug("voicemail_digit", digit=digit, source=source)
        self.menu.digit(digit, self.loop.time())
        self._run()

    def update_media(self, answer: AudioAnswer) -> None:
        """A re-INVITE's offer/answer: the peer's address may have moved, and
        a stream on hold (we only receive or nothing flows) sends nothing."""
        self.answer = answer
        remote = (answer.remote_address, answer.remote_port)
        if remote != self.rtp.remote:
            self.rtp.remote = remote
            self.rtp.source = None  # the next packet fixes the source again
        audio = answer.sdp.audio()
        direction = audio.direction if audio is not None else "inactive"
        self.rtp.muted = direction in ("recvonly", "inactive")
        self.log.info("voicemail_media_updated", remote=f"{remote[0]}:{remote[1]}",
                      direction=direction)

    def _on_packet(self, packet: RtpPacket, now: float) -> None:
        self.last_rtp = now
        pt = packet.payload_type
        if pt == self.answer.event_payload_type:
            try:
                got = self.dtmf.receive(packet, now)
            except RtpError as exc:
                self.ctx.rtp_dropped.labels("bad_telephone_event").inc()
                self.log.info("rtp_bad_telephone_event", reason=str(exc))
                return
            if got is not None:
                self.digit(got.digit, "rfc4733")
            elif self.dtmf.flood_dropped and self.dtmf.flood_dropped % 10 == 1:
                self.ctx.rtp_dropped.labels("dtmf_flood").inc()
                self.log.warning("dtmf_flood", dropped=self.dtmf.flood_dropped)
            return
        if pt != self.answer.payload_type:
            if pt != 13:  # comfort noise (RFC 3389) is expected and ignored
                self.ctx.rtp_dropped.labels("payload_type").inc()
            return
        if self.recording is not None:
            self.jitter.push(packet, now)
            self._drain(self.jitter.pop(now))

    def _drain(self, frames: list[bytes | None]) -> None:
        rec = self.recording
        if rec is None:
            return
        silence = bytes([self.codec.silence]) * FRAME
        for frame in frames:
            if len(rec) >= self._max_bytes:
                return
            rec += silence if frame is None else frame

    # ---------------------------------------------------------------- actions
    def _play(self, action: Play) -> None:
        frames: list[bytes] = []
        for name in action.prompts:
            if name.startswith("message:"):
                frames += self.ctx.message_frames(name[len("message:"):], self.codec)
            elif name == "greeting":
                frames += self.ctx.greeting_frames(self.mailbox, self.codec)
            else:
                frames += self.ctx.prompt_frames(name, self.codec)
        self._play_generation += 1
        generation = self._play_generation
        done = self.rtp.play(frames)
        done.add_done_callback(lambda _: self._played(generation))

    def _played(self, generation: int) -> None:
        if generation != self._play_generation or self.closed:
            return  # replaced by a newer prompt
        self.menu.played(self.loop.time())
        self._run()

    def _start_recording(self, action: StartRecording) -> None:
        self.recording = bytearray()
        self.recording_what = action.what
        self.jitter = JitterBuffer()

    def _stop_recording(self, action: StopRecording) -> None:
        rec = self.recording
        if rec is None:
            return
        self._drain(self.jitter.flush())
        self.recording = None
        data = bytes(rec)
        if not action.keep:
            return
        if len(data) < MIN_MESSAGE_MS * 8:
            self.log.info("voicemail_recording_too_short", ms=len(data) // 8)
            return
        if self.recording_what == "greeting":
            self._job(self.ctx.save_greeting, self.mailbox.number, self.codec, data)
        else:
            self._job(self.ctx.deposit, self.mailbox.number, self.caller, self.codec, data)

    def _delete(self, action: DeleteMessage) -> None:
        self._job(self.ctx.delete_message, self.mailbox.number, action.message_id)

    def _save(self, action: SaveMessage) -> None:
        self._job(self.ctx.save_message, self.mailbox.number, action.message_id)

    def _change_pin(self, action: ChangePin) -> None:
        self._job(self.ctx.change_pin, self.mailbox.number, action.pin)

    def _pin_checked(self, action: PinChecked) -> None:
        self.ctx.pin_checked(self.mailbox.number, action.ok)

    def _hangup(self, action: Hangup) -> None:
        self.ctx.hangup(self)

    def _job(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run store work after the call's earlier store work, in order."""
        previous = self._jobs

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await fn(*args)
            except Exception:
                self.log.exception("voicemail_store_failed", job=getattr(fn, "__name__", "?"))

        self._jobs = asyncio.ensure_future(run())

    # ---------------------------------------------------------------- end
    def remote_hangup(self) -> None:
        """The caller hung up (BYE): a message being recorded is kept."""
        if self.recording is not None:
            self._stop_recording(StopRecording(keep=True))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        self._media_timer.cancel()
        self.rtp.close()
        self.ended.set()

    async def finished(self) -> None:
        """Wait for the call's store work (a deposit being written)."""
        if self._jobs is not None:
            await asyncio.gather(self._jobs, return_exceptions=True)


_ACTIONS: dict[type, Callable[[VoicemailCall, Any], None]] = {
    Play: VoicemailCall._play,
    StartRecording: VoicemailCall._start_recording,
    StopRecording: VoicemailCall._stop_recording,
    DeleteMessage: VoicemailCall._delete,
    SaveMessage: VoicemailCall._save,
    ChangePin: VoicemailCall._change_pin,
    Hangup: VoicemailCall._hangup,
    PinChecked: VoicemailCall._pin_checked,
}


def transcoded_frames(codec: Codec, data: bytes, file_codec: Codec) -> list[bytes]:
    """A stored recording as frames of the call's codec."""
    return frames_of(g711.transcode(data, file_codec, codec), codec)


