"""Load a page in headless Chromium and report what a reader's browser would see.

Speaks the DevTools protocol over Chromium's `--remote-debugging-pipe` (JSON messages separated by NUL bytes;
commands written to the child's fd 3, replies and events read from its fd 4), so no client library and no
network port are needed. Only a system Chromium is used (Debian's `chromium` package, which .ci/run installs);
nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where to look for a browser, first hit wins; NONSINGULAR_CHROMIUM overrides.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Evaluated in the page after its load event: decode every image (a broken one rejects), list the rows of the
# table that follows the "Headline" heading.
_INSPECT = """
(async () => {
  const images = await Promise.all([...document.images].map(
    (img) => img.decode().then(() => [img.alt, img.naturalWidth, img.naturalHeight], () => [img.alt, 0, 0])));
  const heading = [...document.querySelectorAll("h2")].find((h) => h.textContent.startsWith("Headline"));
  let table = heading ? heading.nextElementSibling : null;
  while (table && table.tagName !== "TABLE") table = table.nextElementSibling;
  const rows = table ? [...table.querySelectorAll("tbody tr")].map((tr) => tr.cells[0].textContent) : null;
  return {images, rows, title: document.title};
})()
"""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on this machine, or None."""
    override = os.environ.get("NONSINGULAR_CHROMIUM")
    if override:
        return override
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@dataclass
class PageReport:
    """What the browser saw on one page.

    Attributes:
        title: document.title.
        images: (alt text, natural width px, natural height px) per <img>; 0 x 0 is an image that did not load.
        headline_rows: first cell (the model name) of each body row of the headline table; None if there is none.
        errors: console errors, uncaught exceptions and browser log errors (e.g. a resource that failed to load).
        screenshot: PNG bytes of the whole page.
    """

    title: str
    images: list[tuple[str, int, int]]
    headline_rows: list[str] | None
    errors: list[str]
    screenshot: bytes


class _Pipe:
    """One DevTools connection: numbered commands, replies matched by id, events kept in order."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float) -> None:
        self.write_fd, self.read_fd, self.timeout = write_fd, read_fd, timeout
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        command: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        os.write(self.write_fd, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}".strip())
    return found


def inspect_page(browser: str, page: Path, profile: Path, width: int = 1200, timeout: float = 60.0) -> PageReport:
    """Open `page` (a local file) in headless Chromium, wait for its load event, and report what it shows.

    Args:
        browser: path of the Chromium executable.
        page: the HTML file to open.
        profile: an empty folder for the browser's profile (it never touches the user's).
        width: viewport width in CSS pixels.
        timeout: seconds allowed for each DevTools call and for the page's load.
    """
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    # The child must find its ends at fd 3 and 4: move them above any low descriptor first so dup2 never clobbers.
    child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, replies_w))

    def _place_pipes() -> None:
        os.dup2(child_in, 3)
        os.dup2(child_out, 4)

    flags = [
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        f"--window-size={width},900",
        "about:blank",
    ]
    process = subprocess.Popen(
        [browser, *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_place_pipes,
        pass_fds=(3, 4),
    )
    for fd in (commands_r, replies_w, child_in, child_out):
        os.close(fd)
    try:
        pipe = _Pipe(commands_w, replies_r, timeout)
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.events.clear()  # events of about:blank are not the page's
        pipe.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        pipe.wait_for("Page.loadEventFired")
        seen = pipe.call(
            "Runtime.evaluate", {"expression": _INSPECT, "awaitPromise": True, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in seen:
            raise RuntimeError(f"inspecting the page failed: {seen['exceptionDetails']}")
        value = seen["result"]["value"]
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        report = PageReport(
            title=value["title"],
            images=[tuple(i) for i in value["images"]],
            headline_rows=value["rows"],
            errors=_errors(pipe.events),
            screenshot=base64.b64decode(shot["data"]),
        )
        return report
    finally:
        # Ask the browser to quit; it may close the pipe before answering, so the reply is not awaited.
        with contextlib.suppress(BrokenPipeError):
            os.write(commands_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        os.close(commands_w)
        os.close(replies_r)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
