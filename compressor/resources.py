"""Measuring what stages cost (wall time, peak memory) and what the machine offers (CPUs, disk)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from compressor.errors import ResourceError


def usable_cpu_count() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a cpuset), not every CPU of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count() or 1


@dataclass
class Usage:
    """Wall time and peak memory of one stage."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """Return a JSON-serialisable view, rounded."""
        return {"seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_cuda_mb": None if self.peak_cuda_mb is None else round(self.peak_cuda_mb, 1)}


def _tree_rss() -> int:
    """RSS of this process and its children (runtimes run in workers)."""
    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


@contextmanager
def measure(step: str | None = None, interval: float = 0.05) -> Iterator[Usage]:
    """Time the block and sample the peak RSS of this process tree while it runs.

    With ``step``, `step_start` and `step_end` events (with the usage) go to the event sinks.
    """
    from compressor.events import emit

    usage = Usage()
    if step is not None:
        emit("step_start", step=step)
    peak = [_tree_rss()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], _tree_rss())

    cuda = _cuda_reset()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        usage.peak_rss_mb = max(peak[0], _tree_rss()) / 2**20
        if cuda:
            import torch

            usage.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
        if step is not None:
            emit("step_end", step=step, **usage.to_dict())


def _cuda_reset() -> bool:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
            return True
    except Exception:
        pass
    return False


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def require_disk(path: Path, needed_bytes: int, what: str) -> None:
    """Raise :class:`ResourceError` when the file system of ``path`` lacks ``needed_bytes``."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise ResourceError(f"not enough disk space for {what}: {needed_bytes / 2**30:.2f} GiB needed, "
                            f"{free / 2**30:.2f} GiB free on {probe}",
                            hint="free some space or choose another --out location")
