"""Data-parallel calibration on torch.distributed: which process this is, and the few collectives used.

A build launched by ``torchrun`` (or ``compress build --nproc N``) runs the same pipeline on
every rank. The calibration windows are split across the ranks; per-layer statistics are summed
with ``all_reduce`` before a method compresses a layer, so every rank compresses from the same
statistics; rank 0's compressed layer is then broadcast, so the ranks hold bit-identical weights
even where a kernel is not deterministic (CUDA). Only rank 0 writes outputs and runs verify.

Without a process group (one process) every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from compressor.errors import UsageError

# A rank that waits longer than this for the others has lost them (one crashed before the launcher noticed).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("COMPRESSOR_DIST_TIMEOUT_MIN", "30")))


def launched() -> bool:
    """True when this process was started as one of several ranks (torchrun's environment is set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the rank that writes outputs and verifies."""
    return rank() == 0


def backend_for(device: str) -> str:
    """NCCL for CUDA, gloo for CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join the process group torchrun describes in the environment for the block; a no-op for one process."""
    if not launched() or dist.is_initialized():
        yield
        return
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed", hint="run one process")
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UsageError("device 'cuda' was requested but CUDA is not available", hint="use device: cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_windows(windows: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """This rank's contiguous share of the calibration windows (all of them for one process)."""
    if not active():
        return windows
    n, size = len(windows), world_size()
    if n < size:
        raise UsageError(f"{n} calibration windows cannot be split over {size} processes",
                         hint=f"use at least {size} windows (data.calibration.samples) or fewer processes")
    bounds = np.linspace(0, n, size + 1).round().astype(int)
    return windows[bounds[rank()]:bounds[rank() + 1]]


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place and return it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_int(value: int) -> int:
    """Sum an integer (a token count) over the ranks."""
    return int(_sum_scalar(value, torch.int64))


def sum_float(value: float) -> float:
    """Sum a float (a loss total) over the ranks, in float64."""
    return float(_sum_scalar(value, torch.float64))


def _sum_scalar(value: int | float, dtype: torch.dtype) -> int | float:
    if not active():
        return value
    t = torch.tensor([value], dtype=dtype, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank ``src``'s."""
    if not active():
        return
    for name, tensor in module.state_dict(keep_vars=True).items():
        data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
        if not data.is_contiguous():
            raise UsageError(f"{name} is not contiguous and cannot be broadcast", hint="report this as a bug")
        dist.broadcast(data, src)


def broadcast_windows(windows: np.ndarray | None) -> np.ndarray:
    """Rank 0's token windows on every rank (the other ranks pass None and never read the data)."""
    if not active():
        assert windows is not None
        return windows
    device = _comm_device()
    shape = torch.zeros(2, dtype=torch.int64, device=device)
    if is_main():
        assert windows is not None
        shape[:] = torch.tensor(windows.shape)
    dist.broadcast(shape, 0)
    ids = torch.as_tensor(np.ascontiguousarray(windows, dtype=np.int64)).to(device) if is_main() else \
        torch.empty(tuple(int(s) for s in shape), dtype=torch.int64, device=device)
    dist.broadcast(ids, 0)
    return ids.cpu().numpy()


def lost_peer(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says another rank went away: that rank reports why, not this one."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, getattr(dist, "DistNetworkError", ())) or "closed by peer" in text \
                or "reset by peer" in text or "remote worker crashing" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _comm_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
