"""Structured logging for the daemons (structlog): one event per line,
snake_case event names, JSON for journald and files, coloured console lines
for a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog


def configure_logging(
    level: str = "info", *, fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process.

    ``fmt`` is ``json``, ``console`` or ``auto``: JSON when stderr is not a
    terminal or when systemd's journal is attached (``JOURNAL_STREAM``).
    """
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "json" if (os.environ.get("JOURNAL_STREAM") or not out.isatty()) else "console"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # asyncio and aiohttp log through the standard library: route them to the same stream
    logging.basicConfig(
        stream=out, level=max(numeric, logging.WARNING), format="%(name)s %(message)s"
    )


def get_logger(name: str, **context: Any) -> Any:
    """A logger with context bound once (``call_id``, ``dn``, ``peer`` ...)."""
    return structlog.get_logger(name).bind(**context)
