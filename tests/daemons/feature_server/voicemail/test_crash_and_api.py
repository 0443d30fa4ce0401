"""Crash safety of deposits, the /api/mailboxes routes, and the feature-server
daemon running voicemail as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from protocols.rtp import g711
from protocols.rtp.g711 import Codec
from protocols.rtp.tones import tone
from tests.daemons.feature_server.voicemail.conftest import FS_HOST, Factory, cluster_text
from tests.support.processes import START_TIMEOUT


async def test_orphans_and_temporary_files_are_removed_at_start(
        make_voicemail: Factory, tmp_path: Path) -> None:
    vm = await make_voicemail()
    await vm.service.deposit("1002", "1001", Codec.PCMU, b"\xff" * 8000)
    [kept] = await vm.service.store.list_messages("1002")
    await vm.service.stop()
    messages = tmp_path / "state" / "messages"
    (messages / "deadbeef.wav").write_bytes(b"RIFF")      # file written, row never inserted
    (messages / ".cafe.wav.tmp").write_bytes(b"RI")        # crash while writing
    again = await make_voicemail()
    assert sorted(os.listdir(messages)) == [kept.file]
    assert [m.id for m in await again.service.store.list_messages("1002")] == [kept.id]


async def test_mailbox_api(make_voicemail: Factory) -> None:
    vm = await make_voicemail()
    app = web.Application()
    vm.service.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, FS_HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://{FS_HOST}:{port}/api/mailboxes"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base) as r:
                assert [m["mailbox"] for m in await r.json()] == ["1001", "1002", "1003"]
            async with http.post(base, json={"mailbox": "2001", "pin": "5678"}) as r:
                assert r.status == 201 and (await r.json())["new"] == 0
            async with http.post(base, json={"mailbox": "2001", "pin": "5678"}) as r:
                assert r.status == 409
            async with http.post(base, json={"mailbox": "2002", "pin": "12"}) as r:
                assert r.status == 400
            async with http.post(base, data=b"{not json") as r:
                assert r.status == 400
            async with http.put(f"{base}/2001/pin", json={"pin": "8765"}) as r:
                assert r.status == 204
            assert (await vm.service.store.get_mailbox("2001")).pin == "8765"  # type: ignore
            await vm.service.deposit("2001", "1001", Codec.PCMU, b"\xff" * 8000)
            async with http.get(f"{base}/2001/messages") as r:
                [message] = await r.json()
                assert message["caller"] == "1001" and message["status"] == "new"
                assert "pin" not in message
            async with http.get(f"{base}/2001") as r:
                body = await r.json()
                assert body["new"] == 1 and "pin" not in body
            async with http.delete(f"{base}/2001/messages/{message['id']}") as r:
                assert r.status == 204
            async with http.delete(f"{base}/2001") as r:
                assert r.status == 204
            async with http.get(f"{base}/2001") as r:
                assert r.status == 404
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("when", ["recording"])
async def test_killed_mid_deposit_leaves_no_message_and_no_file(
        tmp_path: Path, when: str) -> None:
    """The feature-server process is killed (SIGKILL) while a caller is recording:
    after a restart the mailbox is empty and no file is left behind."""
    from daemons.runtime.sip_endpoint import Destination
    from tests.daemons.feature_server.voicemail.conftest import free_port
    from tests.daemons.feature_server.voicemail.phone import Phone

    sip_port, http_port = free_port(FS_HOST), free_port(FS_HOST)
    state = tmp_path / "state"
    config = tmp_path / "cluster.toml"
    config.write_text(cluster_text(sip_port, http_port).replace(
        'default-pin = "1234"', f'default-pin = "1234"\nstate-dir = "{state}"'))
    cmd = [sys.executable, "-m", "daemons.cli", "feature-server", "--config", str(config),
           "--name", "FS_1"]
    log = (tmp_path / "fs.log").open("ab")  # the process writes its log lines here
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
    phone = await Phone("127.0.110.40", "1001", rtp_ports="36000-36099").start()
    try:
        dest = Destination("UDP", FS_HOST, sip_port)
        # a loaded host (CI runs suites side by side) starts Python slowly
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            call = await phone.call(f"sip:1002@{FS_HOST}:{sip_port};vm=deposit", dest)
            if call.response.status == 200 or time.monotonic() > deadline \
                    or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert call.response.status == 200, (tmp_path / "fs.log").read_text()[-3000:]
        await asyncio.sleep(1.9)
        frames = g711.encode(tone([1850], 1000), call.codec)
        await call.play([frames[i:i + 160] for i in range(0, len(frames), 160)])
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 5)
    finally:
        await phone.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    messages = state / "messages"
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
    try:
        body = None
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while body is None and time.monotonic() < deadline and proc.returncode is None:
                try:
                    async with http.get(f"http://{FS_HOST}:{http_port}/api/mailboxes/1002"
                                        ) as r:
                        body = await r.json()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        assert body is not None, ("the restarted feature-server did not answer:\n"
                                  + (tmp_path / "fs.log").read_text()[-3000:])
        assert body["new"] == 0
        assert [f for f in os.listdir(messages)] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        log.close()


