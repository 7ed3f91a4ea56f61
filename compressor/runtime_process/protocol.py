"""The line protocol between the host and a runtime worker process.

Requests and replies are one JSON object per line on two dedicated pipes, never on
stdout/stderr, which carry the runtime's logs (redirected to a file). Bulky arrays travel as
``.npy``/``.npz`` files in a private temporary directory; the lines only name them.

Request: ``{"id": 3, "op": "score", "args": {...}}``.
Reply: ``{"id": 3, "ok": true, "result": {...}}`` or ``{"id": 3, "ok": false, "error": "..."}``.
The worker's first line, unprompted, is ``{"id": 0, "ok": true, "result": {"ready": true, ...}}``.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from typing import Any


class ChannelClosed(Exception):
    """The other end closed its pipe or exited."""


class ChannelTimeout(Exception):
    """No complete line arrived before the deadline."""


def write_message(fd: int, message: dict[str, Any]) -> None:
    """Write one JSON line to ``fd``, all of it (pipes may take it in parts)."""
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except (BrokenPipeError, OSError) as exc:
        raise ChannelClosed(f"pipe closed while writing: {exc}") from exc


class LineReader:
    """Reads JSON lines from a pipe with a deadline, checking that the writer is still alive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def _pop_line(self) -> dict[str, Any] | None:
        if b"\n" not in self._buffer:
            return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def read(self, timeout_s: float | None, alive: Callable[[], bool] = lambda: True,
             poll_s: float = 0.5) -> dict[str, Any]:
        """Return the next message; raise :class:`ChannelTimeout` or :class:`ChannelClosed`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            message = self._pop_line()
            if message is not None:
                return message
            wait = poll_s if deadline is None else min(poll_s, max(deadline - time.monotonic(), 0.0))
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise ChannelClosed("the worker closed its reply pipe")
                self._buffer += chunk
                continue
            if not alive():
                # drain what it wrote before dying, then give up
                ready, _, _ = select.select([self.fd], [], [], 0)
                if ready:
                    continue
                raise ChannelClosed("the worker exited")
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout(f"no reply within {timeout_s:.0f} s")
