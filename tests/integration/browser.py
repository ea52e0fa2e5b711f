"""Headless Chromium (Debian's package) driven over the DevTools protocol: just enough to open a
page, evaluate JavaScript in it and take a screenshot, with no client library beyond websockets.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import wait_until

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1600", "--remote-debugging-port=0")


class Browser:
    def __init__(self, url: str, profile: Path):
        # Not a skip: a machine without the browser must fail, or CI would hide the gap.
        binary = shutil.which("chromium")
        assert binary, "Debian's chromium is missing: `apt-get install chromium` (make setup)"
        self._proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._ws = self._attach(profile)
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise
        self._ids = itertools.count(1)

    @staticmethod
    def _attach(profile: Path) -> ClientConnection:
        # Chromium writes the port it chose (port 0) into the profile once it listens.
        active = profile / "DevToolsActivePort"
        wait_until(lambda: active.exists() and active.read_text().count("\n") >= 1, 30)
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        return connect(page["webSocketDebuggerUrl"], max_size=2**26)

    def call(self, method: str, **params: Any) -> dict:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == call_id:  # anything else is an event we did not ask for
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        self._ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
