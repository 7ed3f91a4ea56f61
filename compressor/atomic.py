"""Outputs are complete or absent, never clobber an input, and belong to one build at a time.

A build claims its output path first: an exclusive lock file beside it (``.NAME.lock``, holding
the PID), the checks that ``--out`` does not overlap an input, and the removal of debris that a
killed build left. It then writes into a staging directory beside the output and renames it into
place at the end, after checking again that the output is still what it found when it started.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import UsageError
from compressor.resource_errors import as_resource_error

Log = Callable[[str], None]
# errors that mean "this location cannot be written", as opposed to "the disk is full"
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def real(path: Path | str) -> Path:
    """The absolute path with symlinks and ``..`` resolved (also for paths that do not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder: the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_no_overlap(path: Path | str, inputs: Iterable[Path], what: str = "--out", replaced: bool = True) -> None:
    """Refuse a path the tool writes that is an input or lies inside one; or contains one, when it gets ``replaced``.

    ``--out`` is replaced as a whole (``--force``), so it may not even contain an input; a directory
    under which a method only creates its own new subdirectory may.
    """
    target = real(path)
    for source in inputs:
        src = real(source)
        if target == src:
            relation = "is"
        elif src in target.parents:
            relation = "lies inside"
        elif replaced and target in src.parents:
            relation = "contains"
        else:
            continue
        raise UsageError(f"{what} {path} {relation} the input {source}; writing there could destroy it",
                         hint=f"choose a {what} outside every input (--force never changes this)")


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def unwritable(final: Path, exc: OSError) -> UsageError:
    """The error for an output location that cannot be written (read-only, immutable, no permission)."""
    return UsageError(f"cannot write to --out {final}: {exc.strerror or exc}",
                      hint="choose a writable location for --out")


@dataclass
class OutputClaim:
    """A build's hold on its output path: the lock, and what the path was when the build started."""

    final: Path
    force: bool
    lock_fd: int
    found: tuple[int, ...] | None  # identity of the --out that existed at the start, else None
    log: Log

    def identity(self) -> tuple[int, ...] | None:
        """The output path's device, inode and change times now (None when absent).

        Inode numbers are reused at once by a directory made in place of a removed one; the
        change times tell them apart, and also catch files added to the same directory.
        """
        try:
            st = os.stat(self.final)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns)

    def release(self) -> None:
        """Drop the lock and its file."""
        if self.lock_fd < 0:
            return
        try:
            os.unlink(_lock_path(self.final))
        except OSError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = -1


def _acquire_lock(final: Path) -> tuple[int, int | None]:
    """Lock ``.NAME.lock`` beside ``final``; return its descriptor and the PID a dead holder left in it."""
    path = _lock_path(final)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise unwritable(final, exc) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise UsageError(f"another build (PID {holder if holder is not None else 'unknown'}) is writing "
                             f"--out {final}", hint="wait for it to finish, or choose another --out") from None
        # the holder we waited on may have unlinked the file: a lock on a removed inode protects nothing
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_pid(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, previous


def _clean_debris(final: Path, log: Log) -> None:
    """Remove what a killed build left beside ``final``; put back an output it had moved aside."""
    parent = final.parent
    olds = sorted(parent.glob(f".{final.name}.old-*"))
    if olds and not final.exists():
        # killed between moving the previous output aside and renaming the new one in: restore it
        os.rename(olds[0], final)
        log(f"restored {final} from {olds[0].name}, left by a build that was killed while replacing it")
        olds = olds[1:]
    for debris in sorted(parent.glob(f".{final.name}.partial-*")) + olds:
        shutil.rmtree(debris, ignore_errors=True)
        log(f"removed {debris}, left by a build that was killed")


@contextmanager
def claim_output(out: Path | str, force: bool, inputs: Iterable[Path] = (), log: Log = print) -> Iterator[OutputClaim]:
    """Hold ``out`` for one build: refuse overlaps with ``inputs``, lock it, clean debris, check it is usable."""
    final = real(out)
    check_no_overlap(out, inputs)
    if final.exists() and not final.is_dir():
        raise UsageError(f"output path {out} exists and is not a directory", hint="choose another --out")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _UNWRITABLE or exc.errno == errno.ENOTDIR:
            raise unwritable(final, exc) from None
        raise
    fd, previous = _acquire_lock(final)
    claim = OutputClaim(final, force, fd, None, log)
    try:
        if previous is not None and previous != os.getpid() and not _pid_alive(previous):
            log(f"took over the lock of build PID {previous}, which is no longer running")
        _clean_debris(final, log)
        if final.is_dir() and any(final.iterdir()) and not force:
            raise UsageError(f"output directory {out} is not empty",
                             hint="pass --force to replace it, or choose another --out")
        claim.found = claim.identity()
        yield claim
    finally:
        claim.release()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up, so that a second Ctrl-C cannot leave a half-removed stage."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def staged_dir(claim: OutputClaim) -> Iterator[Path]:
    """Yield an empty staging directory beside the claimed output; on success swap it into place, else delete it."""
    final = claim.final
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as exc:
        if exc.errno in _UNWRITABLE:
            raise unwritable(final, exc) from None
        raise
    try:
        yield stage
        with _signals_held():
            _swap_into_place(stage, claim)
    except BaseException as exc:
        with _signals_held():
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, Exception):
            resource = as_resource_error(exc, [final.parent], f"writing {final}")
            if resource is not None:
                raise resource from exc
        raise


def _swap_into_place(stage: Path, claim: OutputClaim) -> None:
    """Rename the stage to the output, replacing only the output this build found when it started."""
    final = claim.final
    now = claim.identity()
    if now != claim.found:
        change = "created" if claim.found is None else ("removed" if now is None else "replaced or written to")
        raise UsageError(f"--out {final} was {change} by something else during this build; it was left as it "
                         "is and this build's output discarded",
                         hint="give each concurrent job its own --out")
    try:
        if now is not None and claim.force and any(final.iterdir()):
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # rename(2) replaces only an empty directory, so a file that appeared since is never overwritten
            os.rename(stage, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UsageError(f"--out {final} received files from something else during this build; it was left "
                             "as it is and this build's output discarded",
                             hint="give each concurrent job its own --out") from None
        if exc.errno in _UNWRITABLE:
            raise unwritable(final, exc) from None
        raise
