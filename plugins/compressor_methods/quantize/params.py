"""What a quantize method leaves on the model: fake-quantized weights plus the integer parameters.

Each quantized ``nn.Linear`` keeps its dequantized weight (so PyTorch and every exporter compute
the quantized numerics) and gets a plain attribute ``compressor_quant`` (a :class:`LinearQuantization`):
not a parameter or buffer, so ``state_dict`` and the plain exporters never see it. The model handle's
``quantization`` dict describes the whole scheme; the compressed-tensors writer reads both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compressor_methods.quantize.rtn import QuantizedWeight, fake_quantize_per_token
from compressor_methods.quantize.schemes import PER_CHANNEL, Scheme

QUANT_ATTR = "compressor_quant"


@dataclass
class LinearQuantization:
    """The integer quantization of one linear's weight: w = q · weight_scale (symmetric, zero point 0)."""

    bits: int
    group_size: int  # PER_CHANNEL (-1) or the number of input columns sharing a scale
    weight_scale: torch.Tensor  # [out, groups] fp32 (values exactly representable in bf16)
    weight_zero_point: torch.Tensor  # [out, groups] int8, zeros (symmetric)
    act_bits: int | None = None  # dynamic per-token activation quantization at run time (W8A8)


def attach(linear: nn.Linear, result: QuantizedWeight, act_bits: int | None) -> None:
    """Replace ``linear``'s weight with the dequantized one and attach the integer parameters."""
    with torch.no_grad():
        linear.weight.data.copy_(result.dequantized.to(linear.weight.dtype))
    scale = result.scale.detach().to("cpu", torch.float32)
    setattr(linear, QUANT_ATTR, LinearQuantization(result.bits, result.group_size, scale,
                                                   torch.zeros_like(scale, dtype=torch.int8), act_bits))


def quantized_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every quantized linear of ``model`` by its module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, QUANT_ATTR, None), LinearQuantization)}


def describe(model: nn.Module, scheme: Scheme, algorithm: str, group_size: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``ModelHandle.quantization`` description of a model quantized with ``scheme``."""
    done = quantized_modules(model)
    ignore = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in done]
    return {"scheme": scheme.name, "algorithm": algorithm, "weight_bits": scheme.weight_bits,
            "group_size": None if group_size == PER_CHANNEL else group_size,
            "strategy": "channel" if group_size == PER_CHANNEL else "group", "symmetric": True,
            "activations": scheme.activations, "scale_dtype": "bfloat16", "targets": ["Linear"],
            "ignore": ignore, "quantized_modules": len(done), "params_attr": QUANT_ATTR, **(extra or {})}


@contextlib.contextmanager
def simulated_activation_quantization(model: nn.Module) -> Iterator[int]:
    """Within the block, quantized linears with ``act_bits`` (W8A8) see per-token fake-quantized inputs.

    PyTorch then computes what vLLM's int8 kernels compute (up to accumulation order); yields how many
    linears are affected.
    """
    handles = []
    for module in quantized_modules(model).values():
        bits = getattr(module, QUANT_ATTR).act_bits
        if bits:
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, _b=bits: (fake_quantize_per_token(args[0], _b), *args[1:])))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
