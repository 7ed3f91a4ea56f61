"""Round-to-nearest symmetric integer quantization, per group of input columns or per output channel.

Pure tensor maths on fp32 copies; shared by RTN and GPTQ (which quantizes one column at a time).
Convention (compressed-tensors / vLLM): ``w ≈ q · s`` with q in [-2^(b-1), 2^(b-1)-1] and one scale s
per (output row, group of ``group_size`` consecutive input columns); group_size -1 means one scale per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor_methods.quantize.schemes import PER_CHANNEL, qrange


@dataclass
class QuantizedWeight:
    """The integer values, their scales and the dequantized weight of one linear."""

    q: torch.Tensor  # [out, in] int8 (int4 values are stored in int8)
    scale: torch.Tensor  # [out, groups] fp32, exactly representable in the export dtype
    dequantized: torch.Tensor  # [out, in] fp32, q · scale
    bits: int
    group_size: int  # PER_CHANNEL or the group size


def effective_group_size(cols: int, group_size: int) -> int:
    """The number of columns sharing one scale (all of them for per-channel)."""
    return cols if group_size == PER_CHANNEL else group_size


def symmetric_scale(w: torch.Tensor, bits: int, scale_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Scale of each row of ``w`` [rows, cols] so that its max |w| maps to the edge of the integer range.

    The scale is rounded to ``scale_dtype`` because the checkpoint stores it there; quantizing with the
    rounded scale makes the fake-quantized model and the exported one compute the same numbers.
    """
    absmax = w.abs().amax(dim=1, keepdim=True).float()
    # (2^b - 1)/2 maps [-max, max] onto [-2^(b-1) - ½, 2^(b-1) - ½]: both range ends are used
    scale = absmax / ((2**bits - 1) / 2)
    scale = torch.where(absmax > 0, scale, torch.ones_like(scale))  # all-zero rows (pruned): any scale works
    return round_up_to(scale, scale_dtype)


def round_up_to(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round fp32 scales up to the next value representable in ``dtype`` (returned as fp32).

    Rounding down would push max|w| / s past the range edge and clip it by up to a whole step at 8 bits.
    """
    if dtype == torch.float32:
        return scale.float()
    narrow = scale.to(dtype)
    up = torch.nextafter(narrow, torch.full_like(narrow, float("inf")))
    return torch.where(narrow.float() < scale, up, narrow).float()


def quantize_with_scale(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` [rows, k] / ``scale`` [rows, 1] to the nearest integer in the signed ``bits`` range."""
    lo, hi = qrange(bits)
    return torch.clamp(torch.round(w.float() / scale), lo, hi)


def group_scales(w: torch.Tensor, bits: int, group_size: int,
                 scale_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Scales [out, groups] of every group of ``w`` [out, in] (in must be a multiple of the group size)."""
    rows, cols = w.shape
    g = effective_group_size(cols, group_size)
    if cols % g:
        raise ValueError(f"in_features {cols} is not a multiple of group_size {g}")
    grouped = w.float().reshape(rows, cols // g, g).reshape(-1, g)
    return symmetric_scale(grouped, bits, scale_dtype).reshape(rows, cols // g)


def expand_scales(scale: torch.Tensor, cols: int) -> torch.Tensor:
    """Repeat per-group scales [out, groups] to one scale per weight [out, in]."""
    return scale.repeat_interleave(cols // scale.shape[1], dim=1)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return q · scale as fp32 [out, in]."""
    return q.float() * expand_scales(scale, q.shape[1])


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int,
                 scale_dtype: torch.dtype = torch.bfloat16) -> QuantizedWeight:
    """Quantize ``weight`` [out, in] to symmetric ``bits``-bit integers by rounding to nearest."""
    w = weight.detach().float()
    scale = group_scales(w, bits, group_size, scale_dtype)
    q = quantize_with_scale(w, expand_scales(scale, w.shape[1]), bits)
    return QuantizedWeight(q.to(torch.int8), scale, q * expand_scales(scale, w.shape[1]), bits, group_size)


def fake_quantize_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Quantize-dequantize activations ``x`` [..., features] per token, symmetric, as vLLM's dynamic int8 does.

    The scale is max|x| / (2^(b-1) - 1) per token (vLLM's ``scaled_int8_quant``), computed in fp32.
    """
    lo, hi = qrange(bits)
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / hi).clamp_min(1e-12)
    return (torch.clamp(torch.round(xf / scale), lo, hi) * scale).to(x.dtype)
