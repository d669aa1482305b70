"""Helpers of the apps tests: a tunnel (``backend.ai app``, bai's or the official) as a
subprocess that is always ended, and a small HTTP GET through it."""

from __future__ import annotations

import contextlib
import os
import re
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

URL = re.compile(r"(https?|tcp)://[^\s]+")


@contextlib.contextmanager
def tunnel(argv: list[str], env: dict[str, str], cwd: str, deadline: float = 60,
           said: list[str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``argv`` (an ``app`` command) until it prints a URL: (url, process); the process
    is interrupted (Ctrl-C) and reaped when the block ends, whatever happened. ``said``: a
    list the lines it prints are appended to as they come (its errors per connection)."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:  # a thread: select() on a buffered pipe misses lines already read
        for line in proc.stdout:
            lines.put(line)
            if said is not None:
                said.append(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        seen = ""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen += line
            found = URL.search(line)
            if found:
                yield found.group(0), proc
                return
        raise AssertionError(f"{' '.join(argv)} printed no URL: {seen!r} (rc {proc.poll()})")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def get(url: str, deadline: float = 60, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``url``, retried until the deadline while the far end is not up yet."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = e
            time.sleep(0.5)
    raise AssertionError(f"GET {url} failed until the deadline: {last}")
