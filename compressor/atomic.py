"""Outputs are complete or absent: build in a staging directory, then rename into place."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import ResourceError, UsageError


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output directory unless ``force``; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a directory", hint="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"output directory {out} is not empty", hint="pass --force to replace it, or choose another --out")


@contextmanager
def staged_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; on success swap it into place, else delete it."""
    final = Path(final).resolve()
    check_output_dir(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield stage
        _swap_into_place(stage, final)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ResourceError(f"the disk filled up while writing {final}; nothing was left behind",
                                hint="free some space or choose another --out") from exc
        raise


def _swap_into_place(stage: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
