"""The ``rtn`` and ``gptq`` quantize methods: options, target selection and reporting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from compressor.api import (CalibrationConfig, Kind, LayerCompressor, LayerStep, Method, PluginOptions, StageContext,
                            UsageError, estimate_run, layer_in_memory, run_layer_sequential)
from compressor_methods.quantize.gptq import PreparedHessian, gptq_quantize, output_error, prepare_hessian
from compressor_methods.quantize.params import attach, describe
from compressor_methods.quantize.rtn import QuantizedWeight, rtn_quantize
from compressor_methods.quantize.schemes import DEFAULT_GROUP_SIZE, PER_CHANNEL, SCHEMES, SchemeName

MIN_AUTO_GROUP = 32  # below this, scales cost more than they buy; fall back to per-channel


class QuantizeOptions(PluginOptions):
    """Options every quantize method shares. Example recipe stage: ``{method: rtn, options: {scheme: W4A16}}``."""

    scheme: SchemeName = Field("W4A16", description="W4A16 / W8A16: int4 / int8 weights, 16-bit activations; "
                                                    "W8A8: int8 per-channel weights and dynamic per-token int8 "
                                                    "activations (compressed-tensors preset names)")
    group_size: int | None = Field(None, description="input columns sharing one weight scale; -1: one scale per "
                                                     "output channel. Default: 128, halved until it divides every "
                                                     "linear's in_features (64 for SmolLM2's 576); W8A8: per-channel")

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeOptions:
        g = self.group_size
        if g is not None and g != PER_CHANNEL and (g < 8 or g % 8):
            raise ValueError(f"group_size {g} must be -1 (per-channel) or a positive multiple of 8")
        if self.scheme == "W8A8" and g not in (None, PER_CHANNEL):
            raise ValueError("scheme W8A8 uses one weight scale per output channel (vLLM's int8 kernels); "
                             "leave group_size out or set it to -1")
        return self


class GPTQOptions(QuantizeOptions):
    """GPTQ options. Example recipe stage: ``{method: gptq, options: {scheme: W4A16, act_order: true}}``."""

    percdamp: float = Field(0.01, gt=0.0, le=1.0, description="dampening added to H's diagonal, as a fraction "
                                                              "of its mean")
    blocksize: int = Field(128, ge=8, description="columns per block of the lazy batched error update")
    act_order: bool = Field(False, description="quantize input columns in order of decreasing activation energy "
                                               "(H_jj); scales stay per contiguous group, so no g_idx is written")
    nsamples: int | None = Field(None, ge=1, description="use the first N calibration windows (default: all)")
    seqlen: int | None = Field(None, ge=2, description="cut calibration windows to this many tokens (default: all)")
    batch_size: int = Field(4, ge=1, description="calibration windows pushed through a layer at once")
    true_sequential: bool = Field(False, description="quantize q/k/v, then o, then gate/up, then down, each on "
                                                     "inputs from the already-quantized groups")
    offload: bool = Field(False, description="keep the model where it lives; only the current layer and the "
                                             "activations go to the device")
    device: str | None = Field(None, description="compute device, 'cpu' or 'cuda[:i]' (default: the build's device)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype of the calibration activations")


def resolve_group_size(model: Any, options: QuantizeOptions) -> int:
    """The group size used on this model: per-channel, the requested one (checked) or the automatic one."""
    scheme = SCHEMES[options.scheme]
    if scheme.default_group_size == PER_CHANNEL or options.group_size == PER_CHANNEL:
        return PER_CHANNEL
    widths = sorted({lin.in_features for i in range(model.num_layers) for lin in model.linears(i).values()})
    if options.group_size is not None:
        bad = [w for w in widths if w % options.group_size]
        if bad:
            raise UsageError(f"group_size {options.group_size} does not divide the in_features {bad} of some linears",
                             hint=f"use group_size {_auto_group(widths)} (divides all of {widths}), "
                                  "leave it out to choose automatically, or -1 for per-channel scales")
        return options.group_size
    return _auto_group(widths)


def _auto_group(widths: list[int]) -> int:
    g = DEFAULT_GROUP_SIZE
    while g >= MIN_AUTO_GROUP and any(w % g for w in widths):
        g //= 2
    return g if g >= MIN_AUTO_GROUP else PER_CHANNEL


def check_not_quantized(model: Any) -> None:
    """Refuse to quantize a model twice (the integer parameters would no longer match)."""
    if getattr(model, "quantization", None) is not None:
        raise UsageError(f"the model is already quantized ({model.quantization.get('scheme')})",
                         hint="use a single quantize stage per recipe")


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run GPTQ's column loop on one thread: its ops are tiny, and OpenMP's fork/join per op costs more
    than the arithmetic (10-20x slower with 2 threads on a shared machine)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ErrorRecord:
    """Per-module quantization errors for the report."""

    def __init__(self) -> None:
        self.weight: dict[str, float] = {}
        self.output: dict[str, float] = {}

    def add(self, name: str, weight: torch.Tensor, result: QuantizedWeight, hessian: torch.Tensor | None) -> None:
        """Record ‖W − Ŵ‖/‖W‖ and, with a Hessian, the relative output error ‖(W − Ŵ)X‖²/‖WX‖²."""
        w = weight.detach().float()
        delta = w - result.dequantized.to(w.device)
        self.weight[name] = round(float(delta.norm() / w.norm().clamp_min(1e-12)), 6)
        if hessian is not None:
            self.output[name] = float(f"{output_error(w, result.dequantized, hessian):.4e}")

    def to_dict(self) -> dict[str, Any]:
        """Summary and per-module values."""
        out: dict[str, Any] = {"modules": len(self.weight),
                               "weight_rel_error_mean": round(float(np.mean(list(self.weight.values()))), 6)
                               if self.weight else None,
                               "weight_rel_error_per_module": self.weight}
        if self.output:
            values = list(self.output.values())
            out.update(output_rel_error_mean=float(f"{np.mean(values):.4e}"),
                       output_rel_error_max=float(f"{np.max(values):.4e}"), output_rel_error_per_module=self.output)
        return out


class RTN(Method):
    """Round-to-nearest: symmetric integer weights, one scale per group of input columns (no calibration)."""

    name = "rtn"
    stage = "quantize"
    summary = "round-to-nearest int4/int8 weights (W4A16, W8A16, W8A8), no calibration data"
    Options = QuantizeOptions

    def kinds(self, options: Any) -> frozenset[Kind]:
        """W4A16, W8A16 or W8A8, from the scheme."""
        return frozenset({SCHEMES[options.scheme].kind})

    def supports_offload(self, options: Any) -> bool:
        """Each linear is quantized on its own, one layer in memory at a time."""
        return True

    @torch.no_grad()
    def apply(self, model: Any, options: QuantizeOptions, ctx: StageContext) -> dict[str, Any]:
        """Quantize every decoder linear of ``model`` in place (fake-quantized weights + integer parameters)."""
        check_not_quantized(model)
        scheme = SCHEMES[options.scheme]
        group = resolve_group_size(model, options)
        record = ErrorRecord()
        for i in range(model.num_layers):
            with layer_in_memory(model.model, i):
                for short, lin in model.linears(i).items():
                    result = rtn_quantize(lin.weight, scheme.weight_bits, group)
                    record.add(f"layers.{i}.{short}", lin.weight, result, None)
                    attach(lin, result, scheme.act_bits)
        model.quantization = describe(model.model, scheme, "rtn", group)
        ctx.log(f"rtn {scheme.name}: {record.to_dict()['modules']} linears, group size {group}")
        return {**_headline(model.quantization), **record.to_dict()}


class _GPTQCompressor(LayerCompressor):
    """Plugs GPTQ into the layer-sequential engine: the input Hessian per linear, quantize in place."""

    def __init__(self, options: GPTQOptions, group: int) -> None:
        self.options = options
        self.scheme = SCHEMES[options.scheme]
        self.group = group
        self.record = ErrorRecord()
        self._cache: tuple[torch.Tensor, PreparedHessian] | None = None

    def statistics(self) -> dict[str, Any]:
        """GPTQ needs H = 2/T · Σ x xᵀ of each linear's input."""
        return {"hessian": None}

    def _prepared(self, hessian: torch.Tensor, device: torch.device) -> PreparedHessian:
        if self._cache is None or self._cache[0] is not hessian:  # q/k/v and gate/up share one H: factor it once
            self._cache = (hessian, prepare_hessian(hessian, self.options.percdamp, self.options.act_order, device))
        return self._cache[1]

    def compress(self, step: LayerStep) -> None:
        """Quantize ``step.names`` of the layer with GPTQ."""
        o = self.options
        with torch.no_grad(), single_thread_on_cpu(step.device):
            for short in step.names:
                lin = step.linears[short]
                hessian = step.stats[short]["hessian"]
                result = gptq_quantize(lin.weight, hessian, self.scheme.weight_bits, self.group, o.blocksize,
                                       o.percdamp, o.act_order, prepared=self._prepared(hessian, lin.weight.device))
                self.record.add(step.qualified[short], lin.weight, result, hessian)
                attach(lin, result, self.scheme.act_bits)
        self._cache = None


class GPTQ(Method):
    """GPTQ (Frantar et al., arXiv 2210.17323): quantize column by column, compensating each rounding error."""

    name = "gptq"
    stage = "quantize"
    summary = "GPTQ int4/int8 weights (W4A16, W8A16, W8A8) with Hessian-based error compensation"
    Options = GPTQOptions

    def needs_calibration(self, options: Any) -> bool:
        """GPTQ needs calibration activations."""
        return True

    def kinds(self, options: Any) -> frozenset[Kind]:
        """W4A16, W8A16 or W8A8, from the scheme."""
        return frozenset({SCHEMES[options.scheme].kind})

    def supports_offload(self, options: Any) -> bool:
        """Works on a model whose layers live on disk: the calibration engine moves one layer at a time."""
        return True

    def estimate_memory(self, model: Any, options: Any, samples: int, seq_len: int, ctx: StageContext) -> Any:
        """The calibration engine's peak for these options (one Hessian per linear input)."""
        class _Sizes(LayerCompressor):
            def statistics(self) -> dict[str, Any]:
                return {"hessian": None}

        config = CalibrationConfig(device=options.device or ctx.device, dtype=options.dtype,
                                   true_sequential=options.true_sequential, offload=options.offload,
                                   batch_size=options.batch_size)
        return estimate_run(model, min(samples, options.nsamples or samples), min(seq_len, options.seqlen or seq_len),
                            _Sizes(), config)

    def apply(self, model: Any, options: GPTQOptions, ctx: StageContext) -> dict[str, Any]:
        """Quantize every decoder linear of ``model`` in place, layer by layer on the calibration windows."""
        check_not_quantized(model)
        group = resolve_group_size(model, options)
        ids = ctx.calibration_ids()
        if options.nsamples is not None:
            ids = ids[:options.nsamples]
        if options.seqlen is not None:
            ids = ids[:, :options.seqlen]
        config = CalibrationConfig(device=options.device or ctx.device, dtype=options.dtype,
                                   true_sequential=options.true_sequential, offload=options.offload,
                                   batch_size=options.batch_size, log=ctx.log)
        compressor = _GPTQCompressor(options, group)
        report = run_layer_sequential(model, ids, compressor, config)
        scheme = SCHEMES[options.scheme]
        model.quantization = describe(model.model, scheme, "gptq", group,
                                      {"act_order": options.act_order, "percdamp": options.percdamp})
        return {**_headline(model.quantization), **compressor.record.to_dict(), "calibration": report.to_dict()}


def _headline(description: dict[str, Any]) -> dict[str, Any]:
    keys = ("scheme", "algorithm", "weight_bits", "group_size", "strategy", "activations", "ignore")
    return {k: description[k] for k in keys}
