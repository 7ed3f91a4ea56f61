"""A Ctrl-C or SIGTERM that a library turns into another exception still stops the build as itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from compressor.errors import Terminated
from compressor.interrupts import signals_not_swallowed


def _swallowing_library(sig: int) -> None:
    """What torch.onnx's tracer does: whatever its step raises comes out as its own error."""
    try:
        os.kill(os.getpid(), sig)
        time.sleep(1)
    except BaseException:  # noqa: BLE001 - the library's behaviour under test
        raise TypeError("conversion failed") from None


def test_a_swallowed_ctrl_c_is_raised_as_itself():
    with pytest.raises(KeyboardInterrupt), signals_not_swallowed():
        _swallowing_library(signal.SIGINT)


def test_a_swallowed_sigterm_is_raised_as_terminated(monkeypatch):
    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)  # as compress's entry point installs it
    try:
        with pytest.raises(Terminated), signals_not_swallowed():
            _swallowing_library(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_other_errors_pass_through_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError), signals_not_swallowed():
        raise ValueError("a real export error")
    assert signal.getsignal(signal.SIGINT) is before


FINALIZER_SCRIPT = """
import os, signal, sys, time
from compressor.entry import install_signal_handlers
from compressor.errors import Terminated
install_signal_handlers()

class SendsWhileFinalized:
    def __del__(self):
        os.kill(os.getpid(), signal.{sig})
        for _ in range(10000):  # the handler runs here, inside __del__, where Python can only report what it raises
            pass

try:
    SendsWhileFinalized()
    for _ in range(300):
        time.sleep(0.01)
except (KeyboardInterrupt, Terminated) as exc:
    print("raised", type(exc).__name__)
    sys.exit(0)
print("lost")
sys.exit(1)
"""


@pytest.mark.parametrize(("sig", "raised"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")])
def test_an_interrupt_in_a_finalizer_is_raised_after_it_not_lost(sig, raised):
    proc = subprocess.run([sys.executable, "-c", FINALIZER_SCRIPT.format(sig=sig)], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == f"raised {raised}", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


SHUTDOWN_SCRIPT = """
import atexit, os, signal, sys
from compressor import entry

def a_library_cleaning_up():
    os.kill(os.getpid(), signal.{sig})
    for _ in range(10000):
        pass

atexit.register(a_library_cleaning_up)
sys.argv = ["compress", "--help"]
entry.main()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_shutdown_exits_without_a_traceback(sig):
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_SCRIPT.format(sig=sig)], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert "Usage" in proc.stdout  # what the command printed before the signal is not lost
