"""Voicemail and MWI of the feature-server (guide: "Configuring SIP Feature
Server", "Configure voicemail", "Configure Message Waiting Indicator (MWI)").

:class:`VoicemailService` is the part of the feature-server that answers SIP:
deposit and retrieval calls over SIP + RTP (G.711), DTMF menus (RFC 4733
telephone-events, SIP INFO as a fallback), MWI by SUBSCRIBE/NOTIFY
``message-summary`` (RFC 6665, RFC 3842), and the ``/api/mailboxes`` routes.
The feature-server daemon constructs it, calls :meth:`start` / :meth:`stop`,
mounts its routes and reads its health.
"""

from __future__ import annotations

from daemons.feature_server.voicemail.service import VoicemailService

__all__ = ["OPTIONS", "VoicemailService"]

#: the options of ``[applications.NAME.options]`` the voicemail service reads
OPTIONS = frozenset({"rtp-ports", "default-pin", "access-number", "max-messages",
                     "max-message-length", "mwi-max-expires", "mwi-delegates", "pin-max-failures",
                     "pin-lock-time", "rtp-timeout"})
