"""The quantization schemes the quantize methods produce, named as compressed-tensors' presets.

All are symmetric integer schemes (the zero point is 0), which is what vLLM's CPU and GPU
kernels read for WNA16 and W8A8 int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from compressor.api import Kind

SchemeName = Literal["W4A16", "W8A16", "W8A8"]
DEFAULT_GROUP_SIZE = 128
PER_CHANNEL = -1  # group_size meaning "one scale per output row"


@dataclass(frozen=True)
class Scheme:
    """Bits of the weights, their default grouping, and whether activations are quantized too."""

    name: str
    weight_bits: int
    default_group_size: int  # PER_CHANNEL or a positive group size
    act_bits: int | None  # None: activations stay in 16-bit float
    kind: Kind

    @property
    def activations(self) -> dict[str, Any] | None:
        """How activations are quantized at run time (dynamic, per token, symmetric), or None."""
        if self.act_bits is None:
            return None
        return {"bits": self.act_bits, "strategy": "token", "dynamic": True, "symmetric": True}


SCHEMES: dict[str, Scheme] = {
    "W4A16": Scheme("W4A16", 4, DEFAULT_GROUP_SIZE, None, Kind.W4A16),
    "W8A16": Scheme("W8A16", 8, DEFAULT_GROUP_SIZE, None, Kind.W8A16),
    # W8A8 int8: vLLM's int8 GEMM takes one weight scale per output channel
    "W8A8": Scheme("W8A8", 8, PER_CHANNEL, 8, Kind.W8A8),
}


def qrange(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits`` (e.g. -8..7 for 4 bits)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
