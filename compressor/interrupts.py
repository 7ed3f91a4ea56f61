"""Ctrl-C and SIGTERM stay themselves inside libraries that would swallow them.

torch.onnx's tracer catches whatever its steps raise, so a KeyboardInterrupt arriving there came out
as a ConversionError (exit 4, with torch's logged traceback) instead of an interrupt (exit 130).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from compressor.errors import Terminated


@contextmanager
def signals_not_swallowed() -> Iterator[None]:
    """Inside the block, note SIGINT/SIGTERM as they are handled; if the block then fails with another
    exception, raise the interrupt (KeyboardInterrupt or :class:`Terminated`) in its place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def note(signum: int, frame: Any) -> None:
        seen.append(signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    for s in previous:
        signal.signal(s, note)
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        raise
    except BaseException as exc:
        if seen:
            raise (Terminated() if seen[-1] == signal.SIGTERM else KeyboardInterrupt()) from exc
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
