"""Message and greeting audio files: G.711 WAV under ``state_dir/messages``.

A deposit is kept in memory while it is recorded and written in one go with
:func:`~daemons.feature_server.voicemail.prompts.write_atomic`, then its row
is inserted: after a crash a message is either absent or complete. A file
with no row (the crash fell between the two) is an orphan, removed at start
by :meth:`MessageFiles.remove_orphans`, with the temporary files.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from daemons.feature_server.voicemail.prompts import write_atomic
from protocols.rtp.g711 import Codec
from protocols.rtp.wav import build_wav, parse_wav

__all__ = ["MessageFiles"]


class MessageFiles:
    """The directory of message and greeting files (names relative to it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(8)

    def write(self, name: str, codec: Codec, data: bytes) -> None:
        write_atomic(self.directory / name, build_wav(codec, data))

    def read(self, name: str) -> tuple[Codec, bytes]:
        return parse_wav((self.directory / name).read_bytes())

    def remove(self, name: str) -> None:
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            pass

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Remove temporary files and files no row names; their names."""
        removed = []
        for entry in os.scandir(self.directory):
            if entry.is_file() and (entry.name.startswith(".") or entry.name not in known):
                os.unlink(entry.path)
                removed.append(entry.name)
        return sorted(removed)
