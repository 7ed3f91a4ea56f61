"""Options, target selection and reporting shared by the magnitude, Wanda and SparseGPT methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from compressor.api import (ALL_LINEARS, CalibrationConfig, Kind, LayerCompressor, LayerStep, MemoryEstimate,
                            PluginOptions, StageContext, UsageError, estimate_run)
from compressor_methods._masks import parse_pattern

Structure = Literal["unstructured", "n:m", "width"]


def resolve_structure(structure: str | None, pattern: str | None, sparsity: float | None) -> str:
    """The structure the options mean ('n:m' when only a pattern is given); ValueError if they contradict."""
    structure = structure or ("n:m" if pattern else "unstructured")
    if structure == "n:m":
        if not pattern:
            raise ValueError("structure 'n:m' needs a pattern such as '2:4'")
        try:
            n, m = parse_pattern(pattern)
        except Exception as exc:  # UsageError -> pydantic error, so the recipe check reports it
            raise ValueError(str(exc)) from None
        if sparsity is not None and abs(sparsity - n / m) > 1e-9:
            raise ValueError(f"sparsity {sparsity} contradicts pattern {pattern} "
                             f"(which fixes it at {n / m:g}); leave sparsity out")
    elif pattern:
        raise ValueError(f"pattern {pattern!r} only applies to structure 'n:m'")
    return structure


class PruneOptions(PluginOptions):
    """Options every sparsity method shares: what pattern, how much, and where."""

    structure: Structure | None = Field(
        None, description="'unstructured' (zeros anywhere in a row), 'n:m' (needs pattern) or 'width' "
                          "(remove whole MLP neurons / KV groups; the model really shrinks). "
                          "Default: 'n:m' when pattern is set, else 'unstructured'")
    sparsity: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="fraction of weights zeroed in each row, 0 < s < 1 (unstructured; "
                                               "default 0.5); for N:M it is fixed by the pattern")
    pattern: str | None = Field(None, description="N:M pattern such as '2:4' or '4:8': N zeros in every M "
                                                  "consecutive weights of a row")
    include: list[str] = Field(["*"], description="fnmatch patterns of linears to prune, on names like "
                                                  "'layers.3.mlp.down_proj' (decoder linears only)")
    exclude: list[str] = Field([], description="fnmatch patterns of linears to leave dense")
    width_fraction: float = Field(0.25, ge=0.0, lt=1.0,
                                  description="width mode: fraction of MLP neurons removed in every layer")
    remove_kv_groups: int = Field(0, ge=0, description="width mode: KV groups (a KV head with its query heads) "
                                                       "removed in every layer")

    @model_validator(mode="after")
    def _consistent(self) -> PruneOptions:
        structure = resolve_structure(self.structure, self.pattern, self.sparsity)
        if structure == "width":
            if self.sparsity is not None:
                raise ValueError("structure 'width' is sized by width_fraction / remove_kv_groups, not sparsity")
            if self.include != ["*"] or self.exclude:
                raise ValueError("structure 'width' acts on every layer (so the config stays uniform); "
                                 "include/exclude are not allowed")
            if self.width_fraction == 0 and self.remove_kv_groups == 0:
                raise ValueError("structure 'width' with width_fraction 0 and remove_kv_groups 0 removes nothing")
        self.structure = structure
        return self

    @property
    def target_sparsity(self) -> float:
        """Fraction of each targeted row to zero (unstructured and N:M)."""
        if self.structure == "n:m":
            n, m = parse_pattern(self.pattern or "")
            return n / m
        return 0.5 if self.sparsity is None else self.sparsity

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for N:M structure, else None."""
        return parse_pattern(self.pattern) if self.structure == "n:m" and self.pattern else None


class CalibratedPruneOptions(PruneOptions):
    """Options of the calibration-based methods (Wanda, SparseGPT)."""

    nsamples: int | None = Field(None, ge=1, description="use the first N calibration windows (default: all)")
    seqlen: int | None = Field(None, ge=2, description="cut calibration windows to this many tokens (default: all)")
    batch_size: int = Field(4, ge=1, description="calibration windows pushed through a layer at once")
    true_sequential: bool | None = Field(
        None, description="compress q/k/v, then o, then gate/up, then down, each on inputs from the already-"
                          "compressed groups (one pass per layer instead of two). Default: on for unstructured, off "
                          "for N:M and width (measured on SmolLM2: better for 50% unstructured, worse for 2:4)")
    offload: bool = Field(False, description="keep the model where it lives (CPU RAM or a disk store); only the "
                                             "current layer and the activations go to the device")
    device: str | None = Field(None, description="compute device, 'cpu' or 'cuda[:i]' (default: the build's device)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype of the calibration activations")


def kinds_for(options: PruneOptions) -> frozenset[Kind]:
    """The compression kinds these options produce (width with KV groups also removes heads)."""
    kind = {"unstructured": Kind.UNSTRUCTURED, "n:m": Kind.SEMI_STRUCTURED,
            "width": Kind.WIDTH}[options.structure or "unstructured"]
    heads = kind is Kind.WIDTH and bool(getattr(options, "remove_kv_groups", 0))
    return frozenset({kind, Kind.HEADS} if heads else {kind})


def is_target(name: str, options: PruneOptions) -> bool:
    """Whether the linear named ``name`` (e.g. 'layers.3.mlp.down_proj') is pruned."""
    return (any(fnmatchcase(name, p) for p in options.include)
            and not any(fnmatchcase(name, p) for p in options.exclude))


def qualified_name(index: int, layer: nn.Module, short: str) -> str:
    """The 'layers.{i}.<path>' name of a decoder linear."""
    for name, _ in layer.named_modules():
        if name.rsplit(".", 1)[-1] == short:
            return f"layers.{index}.{name}"
    return f"layers.{index}.{short}"


def check_n_m_widths(model: Any, options: PruneOptions) -> None:
    """Refuse, before any work, a targeted linear whose input width cannot hold the N:M pattern, naming it."""
    if options.n_m is None:
        return
    n, m = options.n_m
    for index, names in enumerate(layer_names(model)):
        linears = model.linears(index)
        for short, qualified in names.items():
            cols = linears[short].in_features
            if is_target(qualified, options) and cols % m:
                raise UsageError(f"{qualified} has {cols} input columns, not a multiple of {m}, so it cannot "
                                 f"hold the {n}:{m} pattern",
                                 hint=f"leave it dense with -O 'exclude=[\"{qualified}\"]', or use another pattern")


def calibration_windows(ctx: StageContext, options: CalibratedPruneOptions) -> np.ndarray:
    """The calibration windows, cut to ``nsamples`` × ``seqlen``."""
    ids = ctx.calibration_ids()
    if options.nsamples is not None:
        ids = ids[:options.nsamples]
    if options.seqlen is not None:
        ids = ids[:, :options.seqlen]
    return ids


def resolved_true_sequential(options: CalibratedPruneOptions) -> bool:
    """The ``true_sequential`` setting, with its structure-dependent default applied."""
    if options.true_sequential is not None:
        return options.true_sequential
    return options.structure == "unstructured"


def engine_memory(model: Any, options: Any, samples: int, seq_len: int, ctx: StageContext,
                  statistics: dict[str, Any]) -> MemoryEstimate:
    """The calibration engine's peak-memory estimate for a method that collects ``statistics``."""

    class _Sizes(LayerCompressor):
        def statistics(self) -> dict[str, Any]:
            return statistics

    samples = min(samples, options.nsamples or samples)
    seq_len = min(seq_len, options.seqlen or seq_len)
    return estimate_run(model, samples, seq_len, _Sizes(), calibration_config(ctx, options))


def calibration_config(ctx: StageContext, options: CalibratedPruneOptions) -> CalibrationConfig:
    """The engine configuration for these options."""
    return CalibrationConfig(device=options.device or ctx.device, dtype=options.dtype,
                             true_sequential=resolved_true_sequential(options), offload=options.offload,
                             batch_size=options.batch_size, log=ctx.log)


@dataclass
class PruneRecord:
    """Achieved sparsity per pruned module (filled while pruning)."""

    per_module: dict[str, float]
    zeros: int = 0
    total: int = 0

    def add(self, name: str, weight: torch.Tensor) -> None:
        """Record a pruned weight."""
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        self.per_module[name] = round(zeros / max(weight.numel(), 1), 6)
        self.zeros += zeros
        self.total += weight.numel()

    def to_dict(self, options: PruneOptions) -> dict[str, Any]:
        """Stage-report details."""
        return {"structure": options.structure, "pattern": options.pattern,
                "target_sparsity": options.target_sparsity, "modules": len(self.per_module),
                "achieved_sparsity": round(self.zeros / max(self.total, 1), 6),
                "sparsity_per_module": self.per_module}


# prune(weight fp32 [out, in], stats of its input) -> new weight (same shape)
PruneFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
WidthFn = Callable[[LayerStep], None]


class SparsifyCompressor(LayerCompressor):
    """A layer compressor that prunes each targeted linear with ``prune`` (or does width surgery)."""

    def __init__(self, options: PruneOptions, statistics: dict[str, Any], prune: PruneFn, width: WidthFn,
                 layer_names: list[dict[str, str]]) -> None:
        self.options = options
        self._statistics = statistics
        self.prune = prune
        self.width = width
        self.names = layer_names  # per layer: short -> qualified name
        self.record = PruneRecord({})

    def statistics(self) -> dict[str, Any]:
        """The statistics the method needs."""
        return self._statistics

    def wants(self, index: int, name: str) -> bool:
        """Width mode needs every linear; otherwise the include/exclude targets."""
        if self.options.structure == "width":
            return True
        return name in self.names[index] and is_target(self.names[index][name], self.options)

    @torch.no_grad()
    def compress(self, step: LayerStep) -> None:
        """Prune the step's linears in place."""
        if self.options.structure == "width":
            self.width(step)
            return
        for short in step.names:
            linear = step.linears[short]
            new = self.prune(linear.weight.data.float(), step.stats.get(short, {}))
            linear.weight.data.copy_(new.to(linear.weight.dtype))
            self.record.add(step.qualified[short], linear.weight.data)


def layer_names(handle: Any) -> list[dict[str, str]]:
    """Per layer, short linear name -> qualified name (works for models whose weights are on disk)."""
    out = []
    for i, layer in enumerate(handle.layers):
        names = {}
        for name, module in layer.named_modules():
            short = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and short in ALL_LINEARS:
                names[short] = f"layers.{i}.{name}"
        out.append(names)
    return out


def width_details(before: list[Any], handle: Any, params_before: int) -> dict[str, Any]:
    """Stage-report details for width mode."""
    after = handle.layer_specs()
    return {"structure": "width", "intermediate_size": [before[0].intermediate_size, after[0].intermediate_size],
            "num_attention_heads": [before[0].num_heads, after[0].num_heads],
            "num_key_value_heads": [before[0].num_kv_heads, after[0].num_kv_heads],
            "parameters": [params_before, handle.num_parameters()]}
