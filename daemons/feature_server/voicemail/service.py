"""The voicemail service object the feature-server daemon wires in (see package doc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from daemons.cluster.config import ClusterConfig
from daemons.cluster.model import Application
from daemons.runtime.logs import get_logger
from daemons.runtime.management import Metrics


class VoicemailService:
    """Mailboxes, deposit/retrieval calls, MWI and the mailbox API of one feature-server.

    SIP listens on the application's ``host``:``sip-port`` (UDP and TCP), RTP
    on option ``rtp-ports`` (default ``20000-20999``); ``store_url`` is
    ``sqlite:///abs/path.db`` or ``postgresql://...``; prompts and messages
    live under ``state_dir``.
    """

    def __init__(self, *, cluster: ClusterConfig, app: Application, store_url: str,
                 state_dir: Path, metrics: Metrics) -> None:
        self.cluster = cluster
        self.app = app
        self.store_url = store_url
        self.state_dir = Path(state_dir)
        self.metrics = metrics
        self.log = get_logger("voicemail", application=app.name)
        self._started = False

    async def start(self) -> None:
        """Open the store, create missing mailboxes, bind SIP and RTP."""
        self._started = True

    async def stop(self) -> None:
        """End calls, close sockets and the store."""
        self._started = False

    def add_routes(self, web_app: web.Application) -> None:
        """Mount ``/api/mailboxes``: create/list/delete a mailbox, set its PIN, list messages."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, detail) for /healthz."""
        return self._started, {"started": self._started}
