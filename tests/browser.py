"""A real headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and write answers and
events to descriptor 4, each JSON message ended by a NUL byte: no port, no extra client library.  :func:`open_page`
loads a URL and returns what a test asserts on: every console message and uncaught exception, every failed load,
each image's ``naturalWidth``, the page's text, and a PNG screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM) if path), None)


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.events: list[dict] = []
        self.next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from chromium")
        ready, _, _ = select.select([self.read_fd], [], [], remaining)
        if not ready:
            raise TimeoutError("no answer from chromium")
        chunk = os.read(self.read_fd, 1 << 20)
        if not chunk:
            raise EOFError("chromium closed its pipe")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(message) for message in messages]


def _as_fds_3_and_4(commands: int, answers: int) -> None:
    """In the child: ``commands`` as fd 3, ``answers`` as fd 4 (moved above 10 first: either may be 3 or 4)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands, answers)]
    os.dup2(high[0], 3)
    os.dup2(high[1], 4)


_CHECK = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 naturalWidth: i.naturalWidth})),
  text: document.body ? document.body.innerText : '',
  title: document.title})"""


def open_page(url: str, screenshot: Path | None = None, width: int = 1200, timeout: float = 60.0) -> dict:
    """Load ``url`` in a fresh headless Chromium; returns {"images", "text", "title", "console", "exceptions",
    "failed"} (``console``: (level, text) of console messages and log entries)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="odal-chromium-")
    # The child gets the two pipe ends as fds 3 (commands in) and 4 (answers out).
    process = subprocess.Popen(
        [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
         f"--window-size={width},900", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        pass_fds=(3, 4), preexec_fn=lambda: _as_fds_3_and_4(to_browser_r, from_browser_w))
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(to_browser_w, from_browser_r)
    try:
        targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        session = pipe.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout)
        found = json.loads(pipe.send("Runtime.evaluate", {"expression": _CHECK, "returnByValue": True},
                                     session=session)["result"]["value"])
        if screenshot is not None:
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = pipe.events
        found["console"] = [(e["params"]["type"], " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in e["params"]["args"]))
                            for e in events if e.get("method") == "Runtime.consoleAPICalled"]
        found["console"] += [(e["params"]["entry"]["level"], e["params"]["entry"]["text"])
                             for e in events if e.get("method") == "Log.entryAdded"]
        found["exceptions"] = [e["params"]["exceptionDetails"].get("text") for e in events
                               if e.get("method") == "Runtime.exceptionThrown"]
        found["failed"] = [e["params"].get("errorText") for e in events
                           if e.get("method") == "Network.loadingFailed"]
        try:
            pipe.send("Browser.close", timeout=10)
        except (EOFError, TimeoutError, RuntimeError):
            pass
        return found
    finally:
        os.close(to_browser_w)
        os.close(from_browser_r)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
