"""The web status page in a real browser (headless Chromium, driven over the
DevTools protocol on a pipe): a directory search shows a user's status, and a change
published afterwards appears without a reload; screenshots before and after."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocols.status.messages import Role, StatusRecord
from tests.daemons.status_aggregator.conftest import Lab


class Browser:
    """One page of a headless Chromium, over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: no listening socket)."""

    def __init__(self, reader: asyncio.StreamReader, command_fd: int) -> None:
        self.reader = reader
        self.command_fd = command_fd
        self.session: str | None = None
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.command_fd, json.dumps(message).encode() + b"\0")
        while True:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\0"), 20)
            answer = json.loads(raw[:-1])
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))

    async def attach(self) -> None:
        targets = (await self.call("Target.getTargets"))["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = await self.call("Target.attachToTarget", targetId=page["targetId"],
                                   flatten=True)
        self.session = attached["sessionId"]

    async def text_of(self, expression: str) -> str:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return str(result.get("result", {}).get("value"))

    async def until_text(self, expression: str, wanted: str, timeout: float = 15.0) -> None:
        for _ in range(int(timeout / 0.1)):
            if wanted in await self.text_of(expression):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} never showed {wanted!r}: "
                             f"{await self.text_of(expression)!r}")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.call("Page.captureScreenshot",
                                                 format="png"))["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (Makefile DEB_TOOLS: make test installs it)")
    command_r, command_w = os.pipe()
    events_r, events_w = os.pipe()

    def child_fds() -> None:  # the DevTools pipe is fds 3 (commands) and 4 (answers)
        os.dup2(command_r, 1000)
        os.dup2(events_w, 1001)
        os.dup2(1000, 3)
        os.dup2(1001, 4)

    proc = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--remote-debugging-pipe",
        "--window-size=1000,500", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        close_fds=False, preexec_fn=child_fds)
    os.close(command_r)
    os.close(events_w)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 2**20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(events_r, "rb"))
    try:
        browser = Browser(reader, command_w)
        await browser.attach()
        yield browser
    finally:
        transport.close()
        os.close(command_w)
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_status_page_shows_a_change_without_reload(lab: Lab, tmp_path: Path) -> None:
    service = await lab.start("SA_1")
    tc = lab.client("TC_1", Role.PUBLISHER)
    await tc.wait_open()
    tc.publish([StatusRecord(user="ann@cluster.lab", status="Available", server="SIPS_1"),
                StatusRecord(user="andy@cluster.lab", status="In a meeting", server="SIPS_1")])
    for _ in range(100):
        if len(service.aggregator.table) == 2:
            break
        await asyncio.sleep(0.05)
    url = f"http://{service.management_host}:{service.management.port}/?q=ann"
    row = "document.getElementById('u:ann@cluster.lab')?.innerText || ''"
    async with chromium(tmp_path) as page:
        await page.call("Page.enable")
        await page.call("Page.navigate", url=url)
        await page.until_text(row, "Available")
        await page.until_text("document.getElementById('note').innerText", "live")
        before = await page.screenshot(tmp_path / "status-before.png")
        navigations = await page.text_of("performance.getEntriesByType('navigation').length")
        tc.publish([StatusRecord(user="ann@cluster.lab", status="At Lunch", server="SIPS_1",
                                 on_phone=True, detail="back at 2")])
        await page.until_text(row, "At Lunch")
        assert "on the phone" in await page.text_of(row)
        assert "back at 2" in await page.text_of(row)
        # the same page, not reloaded
        assert await page.text_of(
            "performance.getEntriesByType('navigation').length") == navigations
        after = await page.screenshot(tmp_path / "status-after.png")
    assert before.startswith(b"\x89PNG") and after.startswith(b"\x89PNG")
    assert before != after
    print(json.dumps({"screenshots": [str(tmp_path / "status-before.png"),
                                      str(tmp_path / "status-after.png")]}))
