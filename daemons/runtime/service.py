"""Process lifecycle shared by every daemon: event loop (uvloop when
installed), SIGTERM/SIGINT for a clean stop, systemd readiness and watchdog
notifications (``Type=notify``), the management listener.

A daemon subclasses :class:`Service`, implements ``start()`` / ``stop()``; a
daemon of the cluster file declares its command line with
:func:`add_daemon_arguments` and its ``run(args)`` is one call of
:func:`run_daemon` (logging, the cluster file, a one-line refusal of a bad
config, signals, systemd notify, health and metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import protocols.sip as sip_stack
from daemons.cluster.config import ClusterConfig, load_cluster
from daemons.runtime.config import ConfigError
from daemons.runtime.logs import configure_logging, get_logger
from daemons.runtime.management import ManagementServer, Metrics


def sd_notify(message: str) -> bool:
    """Send one notification to systemd (sd_notify(3)); no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


class Service:
    """Base class of a daemon: one application name, its metrics and health."""

    kind = "service"

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.metrics = Metrics(namespace="sipcluster")
        self.management = ManagementServer(self.metrics, app_name=app_name)
        self.log = get_logger(self.kind, application=app_name)
        self.stopping = asyncio.Event()
        self.management_host = "127.0.0.1"
        self.management_port = 0

    async def start(self) -> None:
        """Open sockets and start tasks; return when the daemon serves."""

    async def stop(self) -> None:
        """Close sockets and finish tasks."""

    async def serve(self) -> None:
        await self.start()
        port = await self.management.start(self.management_host, self.management_port)
        self.log.info("daemon_ready", http_port=port)
        sd_notify("READY=1\nSTATUS=serving")
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self.stopping.wait()
        finally:
            watchdog.cancel()
            self.log.info("daemon_stopping")
            sd_notify("STOPPING=1")
            await self.stop()
            await self.management.stop()
            self.log.info("daemon_stopped")

    async def _watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec:
            return
        interval = int(usec) / 1_000_000 / 2
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; return the loop's name for the log."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def run_service(service: Service, *, use_uvloop: bool = True) -> int:
    """Run ``service`` until SIGTERM/SIGINT; return the process exit code."""
    loop_name = install_event_loop_policy() if use_uvloop else "asyncio"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, service, sig)
        service.log.info("daemon_starting", loop=loop_name, pid=os.getpid(),
                         sip_stack="compiled" if sip_stack.COMPILED else "pure-python")
        await service.serve()

    try:
        asyncio.run(main())
    except OSError as exc:
        service.log.error("daemon_failed", error=str(exc))
        print(f"{service.app_name}: {exc}", file=sys.stderr)
        return 1
    return 0


#: how long after a stop signal a daemon may take before it logs what it still waits on
STOP_REPORT_AFTER = 5.0


def _on_signal(service: Service, sig: signal.Signals) -> None:
    service.log.info("signal_received", signal=sig.name)
    if service.stopping.is_set():
        return
    service.stopping.set()
    asyncio.get_running_loop().call_later(STOP_REPORT_AFTER, _report_slow_stop, service)


def _report_slow_stop(service: Service) -> None:
    """Log the tasks a stop has waited on for STOP_REPORT_AFTER seconds (and where
    each is suspended), so that a daemon systemd has to kill says why."""
    service.log.warning("daemon_stop_slow", after_s=STOP_REPORT_AFTER,
                        waiting_on=pending_tasks())


def pending_tasks() -> list[str]:
    """Every unfinished task but the current one, as ``name: file:line function >
    ...``: the chain of coroutines it awaits, from its own to the innermost."""
    current = asyncio.current_task()
    found = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        chain = []
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None)
            if frame is None:  # a compiled coroutine or an awaited future
                chain.append(type(coro).__name__)
                break
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None)
        found.append(f"{task.get_name()}: {' > '.join(chain)}")
    return sorted(found)


#: how often a task that went on after its cancellation is cancelled again
RECANCEL_INTERVAL = 0.2


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel tasks and wait for them to finish.

    A task can go on after ``cancel()``: Python 3.11's ``asyncio.wait_for``
    drops the cancellation when the awaited operation finishes in the same
    turn (an immediately refused reconnection, say), and a retry loop around
    it then carries on. Such a task is cancelled again until it ends, so a
    daemon's shutdown never waits on a retry loop."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    for task in live:
        while not task.done():
            await asyncio.wait({task}, timeout=RECANCEL_INTERVAL)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def add_daemon_arguments(parser: argparse.ArgumentParser, *, name_help: str) -> None:
    """The options every daemon of the cluster file takes: ``--config``, ``--name``,
    ``--log-level`` (default ``$SIPCLUSTER_LOG_LEVEL`` or info), ``--log-format``."""
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the cluster file (TOML)")
    parser.add_argument("--name", required=True, metavar="APP", help=name_help)
    parser.add_argument("--log-level", default=os.environ.get("SIPCLUSTER_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))


def run_daemon(
    args: argparse.Namespace, command: str, build: Callable[[ClusterConfig], Service]
) -> int:
    """Run the daemon ``build`` makes from the cluster file ``args.config``.

    A cluster file the daemon cannot use (ConfigError, ValueError from a
    constructor) is refused with one line on stderr, ``COMMAND: FILE: KEY:
    REASON``, and exit status 2; otherwise the daemon serves until SIGTERM or
    SIGINT (exit status 0) or fails to open a socket (1).
    """
    configure_logging(args.log_level, fmt=args.log_format)
    try:
        service = build(load_cluster(args.config))
    except (ConfigError, ValueError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return run_service(service)
    return 0
