"""The voicemail prompts: generated as G.711 WAV files (PCMU and PCMA) into the
state directory at first start, then held in memory as 20 ms frames.

No recorded voice ships with the code: each prompt is a short, distinct tone
pattern (docs/feature-server.md lists them), so a caller can tell them apart
and tests can recognise them. A user's own greeting replaces ``greeting``.
"""

from __future__ import annotations

import array
import os
from collections.abc import Sequence
from pathlib import Path

from protocols.rtp import g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import silence, tone
from protocols.rtp.wav import build_wav, parse_wav

__all__ = ["FRAME", "PROMPTS", "PromptLibrary", "frames_of", "write_atomic"]

#: bytes of one 20 ms G.711 frame
FRAME = 160

#: name -> ((frequencies, ms) | ((), ms) for a pause, ...)
PROMPTS: dict[str, tuple[tuple[tuple[float, ...], int], ...]] = {
    "greeting": (((440,), 300), ((), 100), ((554,), 300), ((), 100), ((659,), 500),
                 ((), 300)),
    "beep": (((1000,), 400), ((), 100)),
    "enter_pin": (((600,), 200), ((), 50), ((900,), 200), ((), 200)),
    "enter_new_pin": (((900,), 200), ((), 50), ((600,), 200), ((), 50), ((900,), 200),
                      ((), 200)),
    "pin_wrong": (((300,), 400), ((), 100), ((300,), 400), ((), 200)),
    "pin_changed": (((700,), 150), ((), 50), ((1100,), 300), ((), 200)),
    "pin_invalid": (((300,), 200), ((), 50), ((250,), 300), ((), 200)),
    "you_have": (((500,), 150), ((), 150)),
    "pip": (((1500,), 80), ((), 170)),
    "messages": (((), 200),),
    "no_messages": (((400,), 500), ((), 200)),
    "no_more_messages": (((400,), 250), ((), 50), ((400,), 250), ((), 200)),
    "menu": (((800,), 100), ((), 100), ((800,), 100), ((), 100), ((800,), 100), ((), 300)),
    "message_deleted": (((1200,), 100), ((), 50), ((600,), 300), ((), 200)),
    "message_saved": (((600,), 100), ((), 50), ((1200,), 300), ((), 200)),
    "record_greeting": (((659,), 200), ((), 50), ((554,), 200), ((), 50), ((440,), 200),
                        ((), 200)),
    "greeting_saved": (((440,), 150), ((), 50), ((880,), 300), ((), 200)),
    "goodbye": (((659,), 200), ((554,), 200), ((440,), 400), ((), 200)),
}


def render(spec: Sequence[tuple[tuple[float, ...], int]]) -> array.array[int]:
    samples = array.array("h")
    for freqs, ms in spec:
        samples.extend(tone(freqs, ms, amplitude=6000) if freqs else silence(ms))
    return samples


def frames_of(data: bytes, codec: Codec) -> list[bytes]:
    """G.711 bytes cut into 20 ms frames, the last one padded with silence."""
    frames = [data[i:i + FRAME] for i in range(0, len(data), FRAME)]
    if frames and len(frames[-1]) < FRAME:
        frames[-1] += bytes([codec.silence]) * (FRAME - len(frames[-1]))
    return frames


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that it is either absent or complete after a crash:
    a temporary file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class PromptLibrary:
    """Prompt frames per (name, codec), from ``directory`` (created when missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._frames: dict[tuple[str, Codec], list[bytes]] = {}

    def load(self) -> int:
        """Generate the missing prompt files and read them all; how many were generated."""
        self.directory.mkdir(parents=True, exist_ok=True)
        made = 0
        for name, spec in PROMPTS.items():
            samples: array.array[int] | None = None
            for codec in Codec:
                path = self.directory / f"{name}-{codec.name.lower()}.wav"
                if not path.exists():
                    samples = samples if samples is not None else render(spec)
                    write_atomic(path, build_wav(codec, g711.encode(samples, codec)))
                    made += 1
                file_codec, data = parse_wav(path.read_bytes())
                self._frames[name, codec] = frames_of(
                    g711.transcode(data, file_codec, codec), codec)
        return made

    def frames(self, name: str, codec: Codec) -> list[bytes]:
        return self._frames[name, codec]

    def __contains__(self, name: str) -> bool:
        return (name, Codec.PCMU) in self._frames
