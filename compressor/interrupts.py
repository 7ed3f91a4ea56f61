"""Ctrl-C and SIGTERM stay themselves inside libraries, finalizers and shutdown, which would swallow them.

torch.onnx's tracer catches whatever its steps raise, so a KeyboardInterrupt arriving there came out
as a ConversionError (exit 4, with torch's logged traceback) instead of an interrupt (exit 130).
Python itself can only report, not raise, what a ``__del__``, a weakref callback or an atexit function
raises: a signal handled there printed a traceback and the build went on as if nothing had happened.
"""

from __future__ import annotations

import os
import signal
import sys
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


#: How long after a swallowed interrupt it is sent again: long enough to leave the finalizer that swallowed it.
REDELIVERY_DELAY_S = 0.01


def redeliver_swallowed_interrupts() -> None:
    """Send an interrupt again, a moment later, when Python could only report it (raised in a ``__del__``, a
    weakref callback or an atexit function), instead of printing its traceback and losing it."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not isinstance(exc, (KeyboardInterrupt, Terminated)):
            previous(unraisable)
            return
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        timer = threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()

    sys.unraisablehook = hook


def exit_at_once_on_signals() -> None:
    """From here on (the command has returned and its output is complete or absent), SIGINT or SIGTERM ends the
    process with 128 + the signal's number, without running what is left of the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it anyway
            pass

    def leave(signum: int, frame: Any) -> None:
        os._exit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, leave)
