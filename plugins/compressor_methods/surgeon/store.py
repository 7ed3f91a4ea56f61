"""Where KFAC factors and their inverses live between passes: host RAM, the compute device, or files on disk.

On disk, each tensor is a memory-mapped fp32 file in a private temporary directory, so the
operating system pages factors in and out instead of the process holding them all in RAM. The
files are allocated in full before use: a full disk then fails with a clear error up front
rather than with SIGBUS when a page is first written.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch

from compressor.api import ResourceError, UsageError


class FactorStore:
    """Keeps tensors on ``device``, or, given ``directory``, in memory-mapped files created under it."""

    def __init__(self, device: torch.device, directory: str | Path | None = None) -> None:
        self.device = device
        self.root: Path | None = None
        self._count = 0
        if directory is not None:
            base = Path(directory)
            base.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="surgeon-factors-", dir=base))

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` (as fp32) held by this store."""
        if self.root is None:
            return t.to(self.device)
        path = self.root / f"{self._count}.f32"
        self._count += 1
        nbytes = t.numel() * 4
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(nbytes, 1))
            finally:
                os.close(fd)
        except OSError as exc:
            hint = "free disk space, point factors_dir at a larger disk, or use factors_on: cpu"
            message = f"cannot write KFAC factors to {self.root}: {exc.strerror or exc}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceError(message, hint=hint) from None
            raise UsageError(message, hint="point factors_dir at a writable directory, or use factors_on: cpu") \
                from None
        out = torch.from_file(str(path), shared=True, size=t.numel(), dtype=torch.float32).view(t.shape)
        out.copy_(t)
        return out

    def close(self) -> None:
        """Delete the files (mapped tensors stay readable until dropped; Linux frees the space then)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FactorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
