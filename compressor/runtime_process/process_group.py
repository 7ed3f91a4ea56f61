"""Process-group helpers: a worker leads its own session, so one signal reaches everything its runtime started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from compressor.resources import usable_cpu_count


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


def group_pids(pgid: int) -> list[int]:
    """Every process of the group ``pgid`` (empty where /proc is missing)."""
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:  # field 5: process group
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def cpu_time_by_process(exclude: set[int]) -> dict[int, int]:
    """Nanoseconds on a CPU so far of every process but ``exclude``, summed over its threads.

    Read from /proc/PID/task/TID/schedstat (nanosecond resolution, unlike /proc/stat's ticks), so
    that the CPU time other processes take during a timing of a few milliseconds can be measured.
    Empty where schedstat is missing.
    """
    found: dict[int, int] = {}
    for entry in os.scandir("/proc") if os.path.exists("/proc/self/task") else ():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        total = 0
        try:
            tasks = list(os.scandir(f"/proc/{entry.name}/task"))
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"{task.path}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        found[int(entry.name)] = total
    return found


def background_cpu_share(before: dict[int, int], after: dict[int, int], wall_s: float) -> float | None:
    """Share of this machine's CPU capacity that the processes counted in ``after`` used over ``wall_s``.

    A process that started in between counts whole; one that ended in between is not seen.
    """
    if not after or wall_s <= 0:
        return None
    used = sum(max(ns - before.get(pid, 0), 0) for pid, ns in after.items())
    return used / 1e9 / (wall_s * usable_cpu_count())


def group_shared_memory(pgid: int) -> set[str]:
    """Shared-memory files that the process group has mapped (e.g. vLLM's message queues)."""
    found: set[str] = set()
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.add(line[line.index("/dev/shm/"):].split(" ")[0])
        except OSError:
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
