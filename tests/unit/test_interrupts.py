"""A Ctrl-C or SIGTERM that a library turns into another exception still stops the build as itself."""

from __future__ import annotations

import os
import signal
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
