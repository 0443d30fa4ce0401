"""Media treatments of the feature-server: what a caller waiting on a routing
point hears (guide: "Configuring MSML DNs", SIP Server options ``ring-tone =
qtmf://music/ring_back``, ``default-music = music/on_hold_saas``,
``music-in-conference-file = qtmf://music/silence``; docs/feature-server.md,
"Treatments").

The node plays a treatment by sending an INVITE to one of these Request-URIs
(the user part names the treatment, RFC 4240's ``annc`` with ``play=`` for an
announcement) at the feature-server's ``sip-port``:

* ``sip:music@FS`` — music, looped; ``;play=NAME`` picks the file (default
  ``music/on_hold``);
* ``sip:ringback@FS`` — ringback tone (440 + 480 Hz, 2 s on, 4 s off), looped;
* ``sip:silence@FS`` — silence (RTP keeps flowing), looped;
* ``sip:busy@FS`` / ``sip:fastbusy@FS`` — busy (480 + 620 Hz, 0.5 s on/off)
  and fast busy (0.25 s on/off) tones, looped;
* ``sip:annc@FS;play=NAME`` — the announcement ``NAME`` once, then BYE.

A NAME is a file ``STATE/treatments/NAME.wav`` (8 kHz mono G.711 or 16-bit
PCM WAV; ``/`` makes subdirectories). The tone files and ``music/on_hold``
(a short synthesized tune: no recording ships with the code) are generated
there at first start. The offer is answered with PCMU or PCMA like voicemail;
an unknown name gets 404, a malformed offer 400, one without G.711 488. Every
call is its own RTP stream on the daemon's pacer, so any number play at once;
BYE from the node ends it, and so does ``rtp-timeout`` without RTP from the
caller. Counted in ``sipcluster_treatments_total{treatment,outcome}`` and the
``sipcluster_treatments_active`` gauge.
"""

from __future__ import annotations

import array
import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemons.feature_server.voicemail.mwi import record_route
from daemons.feature_server.voicemail.prompts import frames_of, write_atomic
from daemons.runtime.rtp import RtpSession, open_rtp_session
from daemons.runtime.sip_endpoint import IncomingRequest
from daemons.runtime.sip_transport import TransportError
from protocols.rtp import RtpError, g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import silence, tone
from protocols.rtp.wav import build_wav, parse_pcm16_wav, parse_wav
from protocols.sip.dialog import Dialog, DialogError
from protocols.sip.message import Response
from protocols.sip.sdp import AudioAnswer, NotAcceptable, SdpError, answer_audio, parse_sdp

if TYPE_CHECKING:
    from daemons.feature_server.voicemail.service import VoicemailService

__all__ = ["TREATMENTS", "TreatmentPlayer"]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"

#: Request-URI user -> (the file it plays unless ``play=`` names one, looped)
TREATMENTS: dict[str, tuple[str | None, bool]] = {
    "music": ("music/on_hold", True),
    "ringback": ("music/ring_back", True),
    "silence": ("music/silence", True),
    "busy": ("music/busy", True),
    "fastbusy": ("music/fast_busy", True),
    "annc": (None, False),
}

#: the files generated at first start: name -> ((frequencies, ms) | ((), ms), ...)
GENERATED: dict[str, tuple[tuple[tuple[float, ...], int], ...]] = {
    "music/ring_back": (((440, 480), 2000), ((), 4000)),
    "music/silence": (((), 1000),),
    "music/busy": (((480, 620), 500), ((), 500)),
    "music/fast_busy": (((480, 620), 250), ((), 250)),
    # a short tune in C major, each note 250 ms with a 50 ms breath
    "music/on_hold": tuple(
        step for freq in (523, 587, 659, 698, 784, 698, 659, 587, 523, 659, 784, 1047,
                          784, 659, 523, 392)
        for step in (((freq, freq * 2), 250), ((), 50))),
}

#: a NAME: path segments of letters, digits, ``_`` and ``-`` (no ``..``, no absolute path)
_NAME = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
#: largest treatment file read (10 minutes of G.711)
MAX_FILE = 8000 * 600 * 2


@dataclass(eq=False)
class TreatmentCall:
    """One treatment being played: its dialog, RTP stream and what it plays."""

    treatment: str
    name: str
    dialog: Dialog
    rtp: RtpSession
    answer: AudioAnswer
    frames: list[bytes]
    loop: bool
    transport: str
    last_rx: float
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    ended: bool = False


class TreatmentPlayer:
    """The feature-server's treatment calls (see module doc); shares the voicemail
    service's SIP endpoint, RTP ports, pacer and counters."""

    def __init__(self, service: VoicemailService, directory: Path) -> None:
        self.service = service
        self.directory = directory
        self.log = service.log.bind(component="treatments")
        self.calls: dict[str, TreatmentCall] = {}
        self._frames: dict[tuple[str, Codec], list[bytes]] = {}
        m = service.metrics
        self.outcomes = m.tally(
            "treatments", "Treatment calls, by treatment and outcome (started; ended by "
            "BYE, played through, rtp_timeout, shutdown; refused: the reason)",
            ("treatment", "outcome"))
        self.active = m.gauge("treatments_active", "Treatments playing now")
        self.active.set_function(lambda: len(self.calls))

    # ------------------------------------------------------------------ files
    def prepare(self) -> int:
        """Generate the missing tone and music files; how many were written."""
        made = 0
        for name, spec in GENERATED.items():
            path = self.directory / f"{name}.wav"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            samples = array.array("h")
            for freqs, ms in spec:
                samples.extend(tone(freqs, ms, amplitude=6000) if freqs else silence(ms))
            write_atomic(path, build_wav(Codec.PCMU, g711.encode(samples, Codec.PCMU)))
            made += 1
        return made

    def frames(self, name: str, codec: Codec) -> list[bytes] | None:
        """The 20 ms frames of file ``name`` in ``codec``; None when there is no such
        file (or it is no 8 kHz mono WAV we can read)."""
        cached = self._frames.get((name, codec))
        if cached is not None:
            return cached
        if not _NAME.fullmatch(name):
            return None
        path = self.directory / f"{name}.wav"
        try:
            if path.stat().st_size > MAX_FILE:
                raise RtpError(f"larger than {MAX_FILE} bytes")
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, RtpError) as exc:
            self.log.warning("treatment_file_unreadable", file=str(path), reason=str(exc))
            return None
        try:
            file_codec, codes = parse_wav(data)
            payload = g711.transcode(codes, file_codec, codec)
        except RtpError:
            try:
                rate, channels, samples = parse_pcm16_wav(data)
            except (RtpError, KeyError) as exc:
                self.log.warning("treatment_file_unreadable", file=str(path), reason=str(exc))
                return None
            if rate != 8000 or channels != 1:
                self.log.warning("treatment_file_unreadable", file=str(path),
                                 reason=f"{rate} Hz {channels} channels (8000 Hz mono only)")
                return None
            payload = g711.encode(samples, codec)
        frames = frames_of(payload, codec)
        if frames:
            self._frames[name, codec] = frames
        return frames or None

    # ------------------------------------------------------------------ SIP
    def front(self, voicemail: Callable[[IncomingRequest], Awaitable[Response | None]]
              ) -> Callable[[IncomingRequest], Awaitable[Response | None]]:
        """The SIP handler of the endpoint: treatment requests here, the rest to voicemail."""

        async def handle(incoming: IncomingRequest) -> Response | None:
            if self.owns(incoming):
                return await self.handle(incoming)
            return await voicemail(incoming)
        return handle

    def owns(self, incoming: IncomingRequest) -> bool:
        request = incoming.request
        if request.call_id in self.calls:
            return True
        return request.method in ("INVITE", "OPTIONS") and not request.to.tag \
            and (request.ruri.user or "") in TREATMENTS

    async def handle(self, incoming: IncomingRequest) -> Response | None:
        method = incoming.method
        if method == "INVITE":
            if incoming.request.to.tag:
                return self._reinvite(incoming)
            return await self._invite(incoming)
        if method == "BYE":
            return self._bye(incoming)
        if method == "ACK":
            return None
        if method == "OPTIONS":
            return incoming.response(200, headers=[("Allow", ALLOW),
                                                   ("Accept", "application/sdp")])
        return incoming.response(405, headers=[("Allow", ALLOW)])

    def _refuse(self, incoming: IncomingRequest, treatment: str, status: int, reason: str,
                **log: Any) -> Response:
        self.outcomes.labels(treatment, reason).inc()
        self.log.info("treatment_refused", treatment=treatment, status=status, why=reason,
                      call_id=incoming.request.call_id, **log)
        return incoming.response(status)

    async def _invite(self, incoming: IncomingRequest) -> Response | None:
        request = incoming.request
        svc = self.service
        treatment = request.ruri.user or ""
        default, loop = TREATMENTS[treatment]
        name = request.ruri.params.get("play") or default
        if not name or not _NAME.fullmatch(name):
            return self._refuse(incoming, treatment, 404, "unknown_file", file=name)
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not request.body or content_type != "application/sdp":
            return self._refuse(incoming, treatment, 488, "no_offer")
        try:
            offer = parse_sdp(request.body)
        except SdpError as exc:
            return self._refuse(incoming, treatment, 400, "malformed_sdp", detail=str(exc))
        try:
            rtp = await open_rtp_session(svc.host, svc.rtp_ports, svc.new_rtp_session)
        except OSError as exc:
            return self._refuse(incoming, treatment, 503, "no_rtp_port", detail=str(exc))
        try:
            answer = answer_audio(offer, address=svc.host, port=rtp.local_address[1],
                                  session_id=rtp.ssrc)
        except (NotAcceptable, SdpError) as exc:
            rtp.close()
            return self._refuse(incoming, treatment, 488, "unknown_codec", detail=str(exc))
        codec = Codec[answer.codec]
        frames = await asyncio.to_thread(self.frames, name, codec)
        if frames is None:
            rtp.close()
            return self._refuse(incoming, treatment, 404, "unknown_file", file=name)
        rtp.remote = (answer.remote_address, answer.remote_port)
        rtp.payload_type = answer.payload_type
        transport = incoming.flow.transport
        response = incoming.response(200, headers=[
            *record_route(request),
            ("Contact", f"<{svc.endpoint.contact_uri(transport, user=treatment)}>"),
            ("Allow", ALLOW), ("Content-Type", "application/sdp")],
            body=answer.sdp.serialize())
        try:
            dialog = Dialog.create_uas(request, response, transport=transport)
        except DialogError as exc:
            rtp.close()
            return self._refuse(incoming, treatment, 400, "no_dialog", detail=str(exc))
        if incoming.cancelled.is_set():
            rtp.close()
            return None
        now = asyncio.get_running_loop().time()
        call = TreatmentCall(treatment, name, dialog, rtp, answer, frames, loop, transport, now)
        rtp.on_packet = lambda _packet, at: self._heard(call, at)
        self.calls[request.call_id] = call
        self.outcomes.labels(treatment, "started").inc()
        self.log.info("treatment_started", treatment=treatment, file=name, codec=answer.codec,
                      call_id=request.call_id, caller=str(request.from_.uri))
        self._play(call)
        if svc.rtp_timeout > 0:
            self._task(call, self._watch_rtp(call))
        return response

    @staticmethod
    def _heard(call: TreatmentCall, at: float) -> None:
        call.last_rx = at

    def _play(self, call: TreatmentCall) -> None:
        done = call.rtp.play(call.frames)

        def finished(_: asyncio.Future[None]) -> None:
            if call.ended or call.rtp.closed:
                return
            if call.loop:
                self._play(call)  # the next tick sends the first frame again: no gap
            else:
                self._task(call, self._hangup(call, "played"))
        done.add_done_callback(finished)

    def _task(self, call: TreatmentCall, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)

    async def _watch_rtp(self, call: TreatmentCall) -> None:
        timeout = self.service.rtp_timeout
        loop = asyncio.get_running_loop()
        while not call.ended:
            await asyncio.sleep(min(timeout / 4, 5.0))
            if not call.ended and loop.time() - call.last_rx > timeout:
                await self._hangup(call, "rtp_timeout")
                return

    def _reinvite(self, incoming: IncomingRequest) -> Response:
        """A refreshed offer within a treatment: answered with what plays (RFC 3264 §8)."""
        call = self.calls.get(incoming.request.call_id)
        if call is None:
            return incoming.response(481)
        try:
            call.dialog.receive_request(incoming.request)
        except DialogError:
            return incoming.response(500)
        return incoming.response(200, headers=[
            ("Contact", f"<{self.service.endpoint.contact_uri(call.transport)}>"),
            ("Content-Type", "application/sdp")], body=call.answer.sdp.serialize())

    def _bye(self, incoming: IncomingRequest) -> Response:
        call = self.calls.pop(incoming.request.call_id, None)
        if call is None:
            return incoming.response(481)
        self._close(call, "ended")
        return incoming.response(200)

    def _close(self, call: TreatmentCall, outcome: str) -> None:
        call.ended = True
        call.rtp.close()
        current = asyncio.current_task()
        for task in list(call.tasks):
            if task is not current:
                task.cancel()
        self.outcomes.labels(call.treatment, outcome).inc()
        self.log.info("treatment_ended", treatment=call.treatment, file=call.name,
                      call_id=call.dialog.id.call_id, outcome=outcome)

    async def _hangup(self, call: TreatmentCall, outcome: str) -> None:
        """Our end of a treatment: an announcement played through, or no RTP came."""
        if self.calls.pop(call.dialog.id.call_id, None) is None:
            return
        self._close(call, outcome)
        try:
            await self.service.endpoint.request(call.dialog.create_request("BYE"))
        except (TransportError, DialogError, OSError) as exc:
            self.log.info("treatment_bye_failed", reason=str(exc))

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await self._hangup(call, "shutdown")
