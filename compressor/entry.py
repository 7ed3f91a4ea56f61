"""The ``compress`` script: signal handlers first, then the heavy imports, then the CLI.

Only the standard library is imported here, so that Ctrl-C or SIGTERM while torch and
transformers load gives one line and exit 130 or 143, not a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from compressor.errors import ExitCode, Terminated
from compressor.interrupts import exit_at_once_on_signals, redeliver_swallowed_interrupts


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread, so clean-up runs as it does for Ctrl-C; neither is
    lost in a finalizer."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    redeliver_swallowed_interrupts()


def _stopped_early(exc: BaseException) -> int:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    sys.stderr.write(f"{what}: stopped while starting up; nothing was written\n")
    return int(ExitCode.TERMINATED if isinstance(exc, Terminated) else ExitCode.INTERRUPTED)


def main() -> None:
    """Entry point of the ``compress`` script."""
    install_signal_handlers()
    # libraries' own tqdm bars (GGUF dequantization) would interleave with our progress on stderr
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from compressor.cli import app
    except (KeyboardInterrupt, Terminated) as exc:
        sys.exit(_stopped_early(exc))
    try:
        app()
    except (KeyboardInterrupt, Terminated) as exc:  # outside a command (argument parsing, plugin loading)
        sys.exit(_stopped_early(exc))
    finally:
        # a signal in the libraries' atexit functions (torch's compile-time dump) would print a traceback there
        exit_at_once_on_signals()
