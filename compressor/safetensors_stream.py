"""Writing safetensors files one block of rows at a time, for models whose weights live on disk.

``safetensors.torch.save_file`` takes a dict of whole tensors, so a shard is in memory at once.
The format is a little-endian u64 header length, a JSON header of dtypes, shapes and byte offsets,
then the raw bytes in that order: knowing every shape up front, each tensor can be written as it is read.
Files written here are read back by ``safetensors.safe_open`` in the tests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.progress import steps

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
BLOCK_BYTES = 16 * 2**20  # bytes of one block of rows read and written at a time


@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: its name, shape and written dtype, and a reader of rows ``start:stop``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: Callable[[int, int], torch.Tensor]

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> PendingTensor:
        """A tensor held in memory, written in ``dtype`` (default: its own)."""
        return cls(name, tuple(tensor.shape), dtype or tensor.dtype,
                   lambda start, stop: tensor[start:stop] if tensor.dim() else tensor)

    @property
    def nbytes(self) -> int:
        """Bytes in the file."""
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def _blocks(t: PendingTensor) -> list[tuple[int, int]]:
    if not t.shape:
        return [(0, 1)]
    rows = t.shape[0]
    per_row = max(1, t.nbytes // max(rows, 1))
    step = max(1, BLOCK_BYTES // per_row)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def write_streamed(path: Path, tensors: list[PendingTensor], metadata: dict[str, str] | None = None,
                   progress: bool = False) -> int:
    """Write ``tensors`` to the safetensors file ``path`` block by block; return the bytes of tensor data.

    With ``progress``, each tensor is a step of a progress bar (:mod:`compressor.progress`).
    """
    header: dict[str, object] = {}
    offset = 0
    for t in tensors:
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"safetensors cannot hold {t.dtype} ({t.name})")
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in (steps(tensors, f"writing {Path(path).name}") if progress else tensors):
            written = 0
            for start, stop in _blocks(t):
                block = t.rows(start, stop).detach().to("cpu", t.dtype).contiguous()
                data = block.reshape(-1).view(torch.uint8).numpy()
                f.write(data.data)
                written += data.nbytes
            if written != t.nbytes:
                raise ValueError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
    return offset


def write_sharded(dest: Path, tensors: list[PendingTensor], shard_bytes: int,
                  index_metadata: dict[str, int] | None = None) -> list[str]:
    """Write ``tensors`` as an HF checkpoint's shards (with ``model.safetensors.index.json`` when more than one).

    Returns the file names written; weight files of another count already in ``dest`` are removed,
    since a loader would read them with the new ones.
    """
    from compressor.model import HF_INDEX_NAME, HF_WEIGHT_FILE, HF_WEIGHTS_PATTERN

    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    names = [HF_WEIGHTS_PATTERN.format(suffix=f"-{i + 1:05d}-of-{len(shards):05d}" if len(shards) > 1 else "")
             for i in range(len(shards))]
    for old in Path(dest).iterdir():
        if (HF_WEIGHT_FILE.fullmatch(old.name) or old.name == HF_INDEX_NAME) and old.name not in names:
            old.unlink()
    total = sum(write_streamed(Path(dest) / f, shard, {"format": "pt"}, progress=True) for f, shard in zip(names, shards))
    if len(shards) > 1:
        index = {"metadata": {**(index_metadata or {}), "total_size": total},
                 "weight_map": {t.name: f for f, shard in zip(names, shards) for t in shard}}
        (Path(dest) / HF_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names
