"""A headless Chromium driven through the DevTools protocol over a pipe (no extra package).

``load(url)`` opens the page offline (every host but 127.0.0.1 fails to resolve), waits for
its load event and for its scripts to settle, and returns the document as the reader's browser
holds it, with every console error, uncaught exception and failed request on the way.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def _high(fd: int) -> int:
    """``fd`` moved to a number of at least 10 (close-on-exec)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@dataclass
class Loaded:
    html: str  # document.documentElement.outerHTML after the scripts ran
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads


class Browser:
    """One Chromium process; ``load`` pages one after the other."""

    def __init__(self, executable: str, profile: Path):
        # the pipe ends live above fd 10, so that placing them at 3 and 4 in the child never
        # overwrites one with the other
        to_chrome_r, self._to_chrome, self._from_chrome, from_chrome_w = (
            _high(fd) for fd in (*os.pipe(), *os.pipe()))

        def wire() -> None:  # the protocol pipe is fd 3 (commands) and fd 4 (replies)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-quic", "--disable-extensions", f"--user-data-dir={profile}",
                   "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                   "--remote-debugging-pipe", "about:blank"]
        # close_fds would close 3 and 4 after ``wire``; the pipes' own ends are close-on-exec
        self.process = subprocess.Popen(command, close_fds=False, preexec_fn=wire,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self._events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (did it crash?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` (a no-op command each 0.25 s keeps replies flowing)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.call("Runtime.evaluate", session=True, expression="0")
            time.sleep(0.25)

    def load(self, url: str, settle: str = "true", timeout: float = 60) -> Loaded:
        """Open ``url``; wait for the load event and until the JavaScript ``settle`` is true."""
        self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            self._events.append(self._read(deadline))
        while not self.call("Runtime.evaluate", session=True, expression=f"!!({settle})",
                            returnByValue=True)["result"].get("value"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: {settle} never became true")
            time.sleep(0.2)
        self._drain(0.5)
        html = self.call("Runtime.evaluate", session=True, expression="document.documentElement.outerHTML",
                         returnByValue=True)["result"]["value"]
        return Loaded(html, self._errors())

    def _errors(self) -> list[str]:
        errors = []
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                           for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                errors.append(f"failed request: {params.get('errorText')} ({params.get('type')})")
        return errors

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
