"""Process-group helpers: a worker leads its own session, so one signal reaches everything its runtime started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid``; a group that is gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_shared_memory(pgid: int) -> set[str]:
    """Shared-memory files that the process group has mapped (e.g. vLLM's message queues)."""
    found: set[str] = set()
    if not Path("/proc/self/maps").exists():  # not Linux: nothing to find, nothing to clean
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: process group id
                continue
            for line in (entry / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.add(line[line.index("/dev/shm/"):].split(" ")[0])
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of the group is left; return whether that happened in time."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(proc: subprocess.Popen[bytes], shm: set[str]) -> None:
    """SIGTERM the group of ``proc``, SIGKILL what is left, then unlink the shared memory it mapped."""
    pgid = proc.pid
    if proc.poll() is None:
        kill_group(pgid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            kill_group(pgid, signal.SIGKILL)
            proc.wait(10)
    # the leader is gone, but processes it started may still be shutting down (a busy engine
    # finishes its step first); give them a moment, then SIGKILL what is left
    if not wait_group_gone(pgid, 5.0):
        kill_group(pgid, signal.SIGKILL)
        wait_group_gone(pgid, 10.0)
    if not group_alive(pgid):
        for path in shm:
            Path(path).unlink(missing_ok=True)
