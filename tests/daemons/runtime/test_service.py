"""systemd notifications reach the NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.runtime.service import cancel_and_wait, pending_tasks, sd_notify
from daemons.runtime.status_client import AggregatorAddress, StatusClient
from protocols.status.messages import Role

ROOT = Path(__file__).resolve().parents[3]


def test_sd_notify_sends_to_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1") is True
        assert server.recv(100) == b"READY=1"


def test_sd_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


async def _goes_on_after_one_cancellation(started: asyncio.Event) -> None:
    """A task that carries on after its first cancellation, as a retry loop
    around Python 3.11's asyncio.wait_for does when the awaited attempt fails
    in the same turn as the cancellation (wait_for then raises the attempt's
    error, and the loop retries)."""
    started.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(30)


async def test_cancel_and_wait_ends_a_task_that_went_on_after_its_cancellation() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_goes_on_after_one_cancellation(started))
    await started.wait()
    stopping = asyncio.create_task(cancel_and_wait(task))
    done, _ = await asyncio.wait({stopping}, timeout=10.0)
    try:
        assert stopping in done  # not 30 s later, when the task would end by itself
        assert task.done() and task.cancelled()
    finally:
        task.cancel()
        stopping.cancel()


async def test_a_status_client_stops_while_its_aggregators_refuse(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = StatusClient(name="test", role=Role.CONSUMER,
                          aggregators=[AggregatorAddress("SA_1", "127.0.0.1", port)],
                          context=ssl.create_default_context(), retry=0.01)
    client.start()
    await asyncio.sleep(0.3)  # many refused attempts
    assert client.last_error and "SA_1" in client.last_error
    await asyncio.wait_for(client.stop(), 10.0)


async def test_pending_tasks_names_where_each_task_waits() -> None:
    event = asyncio.Event()

    async def waits_for_the_event() -> None:
        await event.wait()

    task = asyncio.create_task(waits_for_the_event(), name="stuck-one")
    await asyncio.sleep(0)
    try:
        lines = [line for line in pending_tasks() if line.startswith("stuck-one: ")]
        assert len(lines) == 1
        # from the task's own coroutine down to asyncio's Event.wait
        assert " waits_for_the_event > " in lines[0] and "locks.py:" in lines[0]
    finally:
        task.cancel()


def test_a_daemon_whose_stop_hangs_logs_what_it_waits_on(tmp_path: Path) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(
        "import asyncio, sys\n"
        "from daemons.runtime import service\n"
        "from daemons.runtime.logs import configure_logging\n"
        "service.STOP_REPORT_AFTER = 0.5\n"
        "class Hangs(service.Service):\n"
        "    async def stop(self):\n"
        "        await asyncio.sleep(3)\n"
        "configure_logging('info', fmt='json')\n"
        "sys.exit(service.run_service(Hangs('hangs')))\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "daemon_ready" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    slow = [json.loads(line) for line in lines if "daemon_stop_slow" in line]
    assert len(slow) == 1, lines
    assert any("hangs.py" in where and " stop" in where for where in slow[0]["waiting_on"])
    assert any("daemon_stopped" in line for line in lines)
