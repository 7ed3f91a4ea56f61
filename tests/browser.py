"""Open an HTML file in headless Chromium over the DevTools protocol: errors, images, a screenshot.

The report allows no script (its Content-Security-Policy), so the checks run through DevTools,
which a page's policy does not restrict: console messages, uncaught exceptions and the browser's
own log (a blocked resource or a broken image shows there) are collected from the moment the page
starts loading, and each image's decoded size is read once it has loaded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtimes import runtimes_required

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install Chromium (Debian: apt-get install chromium; `make setup` does it when run as root)"


def require_browser() -> str:
    """The Chromium executable; skip without one, or fail when runtimes are required (CI)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = f"no Chromium found ({', '.join(BROWSERS)}): {INSTALL_HINT}"
    if runtimes_required():
        pytest.fail(f"{message} (COMPRESSOR_REQUIRE_RUNTIMES=1: a missing browser is a failure)", pytrace=False)
    pytest.skip(message)


@dataclass
class Rendered:
    """What the browser saw."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    screenshot: bytes = b""


class _DevTools:
    def __init__(self, ws: Any) -> None:
        self.ws, self.ids, self.events = ws, itertools.count(1), []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def until(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(await asyncio.wait_for(self.ws.recv(), deadline - time.monotonic())))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            found.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            found.append(f"log ({p['entry']['source']}): {p['entry']['text']}")
    return found


async def _render(browser: str, page: Path, width: int) -> Rendered:
    import websockets

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{browser} did not open its DevTools port (exit {proc.poll()})")
                await asyncio.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                target = next(t for t in json.load(r) if t["type"] == "page")
            async with websockets.connect(target["webSocketDebuggerUrl"], max_size=2**28) as ws:
                dt = _DevTools(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await dt.call(f"{domain}.enable")
                await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                              mobile=False)
                await dt.call("Page.navigate", url=page.resolve().as_uri())
                await dt.until("Page.loadEventFired")
                probe = ("JSON.stringify({title: document.title, images: Array.from(document.images).map(i => "
                         "({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})), "
                         "height: document.documentElement.scrollHeight})")
                seen = json.loads((await dt.call("Runtime.evaluate", expression=probe,
                                                  returnByValue=True))["result"]["value"])
                await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=int(seen["height"]),
                              deviceScaleFactor=1, mobile=False)
                shot = await dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                return Rendered(_errors(dt.events), seen["images"], seen["title"], base64.b64decode(shot["data"]))
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def render(browser: str, page: Path, width: int = 1200) -> Rendered:
    """Load ``page`` in headless ``browser``; return its errors, images, title and a full-page screenshot."""
    os.environ.setdefault("DBUS_SESSION_BUS_ADDRESS", "disabled:")  # no session bus in CI: do not look for one
    return asyncio.run(_render(browser, page, width))


def assert_renders(chromium: str, page: Path, plots: int) -> None:
    """Load ``page``: no console, exception or browser-log error, ``plots`` images all decoded, a real screenshot."""
    from matplotlib.image import imread

    seen = render(chromium, page)
    assert seen.errors == [], seen.errors
    assert seen.title.startswith("compressor report:")
    assert len(seen.images) == plots, seen.images
    for img in seen.images:
        assert img["complete"] and img["width"] > 300 and img["height"] > 200, img
    pixels = imread(io.BytesIO(seen.screenshot))
    assert pixels.shape[1] == 1200 and pixels.shape[0] > 1500 and pixels.std() > 0.05, pixels.shape
