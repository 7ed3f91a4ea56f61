"""Structured events a pipeline can parse (`--log-json FILE`): steps starting and ending, with their
timings and peak memory, warnings and the verdict, one JSON object per line.

The host emits; the CLI decides where events go. Emitting with no sink costs nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

Sink = Callable[[dict[str, Any]], None]
_SINKS: list[Sink] = []
_START = time.perf_counter()


def emit(event: str, **fields: Any) -> None:
    """Send one event (with its wall-clock time and seconds since start) to every sink."""
    if not _SINKS:
        return
    record = {"event": event, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
              "elapsed_s": round(time.perf_counter() - _START, 3), **fields}
    for sink in list(_SINKS):
        sink(record)


@contextmanager
def sink(fn: Sink) -> Iterator[None]:
    """Send events to ``fn`` inside the block."""
    _SINKS.append(fn)
    try:
        yield
    finally:
        _SINKS.remove(fn)


@contextmanager
def json_lines(path: Path) -> Iterator[None]:
    """Append events to ``path`` as JSON lines inside the block (each line flushed as it is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        def write(record: dict[str, Any]) -> None:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        with sink(write):
            yield
