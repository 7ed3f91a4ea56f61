"""Recognise "out of disk space" and "out of memory" wherever they are raised, whatever wraps them.

Libraries report a full disk in many ways: ``OSError`` with ``ENOSPC`` or ``EDQUOT``, safetensors'
``SafetensorError`` with the OS text in its message, a short write with no errno at all (gguf), a
torch ``RuntimeError`` from its zip writer, or a plugin's error wrapping any of these. So the whole
cause chain is searched, and when nothing in it names the cause, the free space where the build
writes decides.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from compressor.errors import ResourceError

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "file too large")
_MEMORY_TEXT = ("cuda out of memory", "out of memory", "can't allocate memory", "cannot allocate memory",
                "not enough memory", "failed to allocate")
# a write-like failure with this little room left where the build writes is taken for a full disk
NEARLY_FULL_BYTES = 8 * 2**20
_WRITE_TEXT = ("write", "short", "flush", "wrote")


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling, without looping."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _free_bytes(path: Path) -> int | None:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` or its causes say that CPU or CUDA memory ran out."""
    for e in cause_chain(exc):
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return True
        if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _MEMORY_TEXT):
            return True
    return False


def is_out_of_space(exc: BaseException, where: Iterable[Path] = ()) -> bool:
    """True when ``exc`` or its causes say the disk is full, or a write failed where almost no space is left."""
    write_like = False
    for e in cause_chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return True
        text = str(e).lower()
        if any(t in text for t in _DISK_TEXT):
            return True
        write_like = write_like or isinstance(e, OSError) or any(t in text for t in _WRITE_TEXT)
    if not write_like:
        return False
    free = [f for f in (_free_bytes(p) for p in where) if f is not None]
    return any(f < NEARLY_FULL_BYTES for f in free)


def as_resource_error(exc: BaseException, where: Iterable[Path] = (), doing: str = "") -> ResourceError | None:
    """The exit-6 error that ``exc`` really is (disk full, out of memory), or None."""
    if isinstance(exc, ResourceError):
        return exc
    where = list(where)
    during = f" while {doing}" if doing else ""
    if is_out_of_space(exc, where):
        place = f" ({', '.join(str(p) for p in where)})" if where else ""
        return ResourceError(f"the disk filled up{during}{place}; nothing was left behind",
                             hint="free some space, or write --out (and factors_dir) to a larger disk")
    if is_out_of_memory(exc):
        cuda = any("cuda" in str(e).lower() or type(e).__name__ == "OutOfMemoryError" for e in cause_chain(exc))
        return ResourceError(f"{'CUDA' if cuda else 'CPU'} memory ran out{during}",
                             hint="use fewer or shorter calibration samples, a smaller batch_size, or offload"
                                  + ("; or another GPU" if cuda else ""))
    return None
