"""A headless Chromium driven over the DevTools protocol (no browser download: Debian's
chromium package), for the dashboard tests."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

__all__ = ["Chromium", "chromium_path"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless browser with one page."""

    def __init__(
        self, executable: str, profile: Path, width: int = 1280, height: int = 900
    ) -> None:
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--ignore-certificate-errors", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        port = None
        while time.monotonic() < deadline and port is None:
            line = self.proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
            elif not line and self.proc.poll() is not None:
                raise RuntimeError("chromium exited before DevTools listened")
        if port is None:
            raise RuntimeError("chromium did not start DevTools within 60 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30)
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20) -> Any:
        """Until ``expression`` is truthy in the page (and the page has loaded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(f"document.readyState === 'complete' && ({expression})")
            except RuntimeError:
                last = None  # navigating
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression!r} (last {last!r})")

    def goto(self, url: str) -> None:
        """Navigate and wait for the new document (wherever redirects end)."""
        self.evaluate("window.__old_document = true")
        self.send("Page.navigate", url=url)
        self.wait("window.__old_document === undefined")

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText"))

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Render as a screen of this size (a tablet: 768x1024, mobile)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)  # fmt: skip

    def screenshot(self, path: Path, *, full_page: bool = False) -> None:
        """The viewport, or with ``full_page`` the whole page (up to 3000 px high)."""
        options: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            options["captureBeyondViewport"] = True
            options["clip"] = {"x": 0, "y": 0, "width": size["width"],
                               "height": min(size["height"], 3000), "scale": 1}  # fmt: skip
        data = self.send("Page.captureScreenshot", **options)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
