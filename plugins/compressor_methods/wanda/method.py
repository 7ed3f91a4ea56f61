"""The ``wanda`` method: pruning by weights and activations, no weight update."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from compressor.api import Kind, LayerStep, Method, StageContext, run_layer_sequential
from compressor_methods._pruning import (CalibratedPruneOptions, SparsifyCompressor, calibration_config,
                                         calibration_windows, check_n_m_widths, engine_memory, kinds_for, layer_names,
                                         width_details)
from compressor_methods._width import (group_scores, keep_kv_groups, keep_mlp_neurons, kv_group_layout, lowest,
                                       neurons_to_remove)
from compressor_methods.wanda.sparsify import wanda_column_scores, wanda_prune


class WandaOptions(CalibratedPruneOptions):
    """Wanda options. Example recipe stage: ``{method: wanda, options: {sparsity: 0.5}}``."""

    variant: bool = Field(False, description="unstructured only: per-row α-search variant (prune the prefix "
                                             "whose cumulative score ≤ α·row total); rows may then differ")

    @model_validator(mode="after")
    def _variant_unstructured(self) -> WandaOptions:
        if self.variant and self.structure != "unstructured":
            raise ValueError("variant applies only to structure 'unstructured'")
        return self


class Wanda(Method):
    """Wanda (Sun et al., arXiv 2306.11695): prune the weights with the lowest |W|·‖X‖₂ in each row."""

    name = "wanda"
    stage = "prune"
    summary = "prune by |weight| x input-activation norm per row (unstructured, N:M or width)"
    Options = WandaOptions

    def needs_calibration(self, options: Any) -> bool:
        """Wanda needs calibration activations."""
        return True

    def supports_offload(self, options: Any) -> bool:
        """Works on a model whose layers live on disk: the calibration engine moves one layer at a time."""
        return True

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Unstructured, N:M or width, from the options."""
        return kinds_for(options)

    def estimate_memory(self, model: Any, options: Any, samples: int, seq_len: int, ctx: StageContext) -> Any:
        """The calibration engine's peak for these options."""
        return engine_memory(model, options, samples, seq_len, ctx, {"input_sq_norm": None})

    def apply(self, model: Any, options: WandaOptions, ctx: StageContext) -> dict[str, Any]:
        """Prune ``model`` in place, layer by layer on the calibration windows."""
        check_n_m_widths(model, options)
        head_dim = model.head_dim
        before, params_before = model.layer_specs(), model.num_parameters()
        remove = neurons_to_remove(before[0].intermediate_size, options.width_fraction)

        def prune(weight: Any, stats: dict[str, Any]) -> Any:
            return wanda_prune(weight, stats["input_sq_norm"], options.target_sparsity, options.n_m, options.variant)

        def width(step: LayerStep) -> None:
            attn, mlp = step.layer.self_attn, step.layer.mlp
            if "o_proj" in step.names and options.remove_kv_groups:
                groups, _ = kv_group_layout(attn, head_dim)
                cols = wanda_column_scores(attn.o_proj.weight.data, step.stats["o_proj"]["input_sq_norm"])
                _, kept = lowest(group_scores(cols, groups), min(options.remove_kv_groups, groups - 1))
                keep_kv_groups(attn, kept, head_dim)
            if "down_proj" in step.names and remove:
                cols = wanda_column_scores(mlp.down_proj.weight.data, step.stats["down_proj"]["input_sq_norm"])
                _, kept = lowest(cols, remove)
                keep_mlp_neurons(mlp, kept)

        compressor = SparsifyCompressor(options, {"input_sq_norm": None}, prune, width, layer_names(model))
        report = run_layer_sequential(model, calibration_windows(ctx, options), compressor,
                                      calibration_config(ctx, options))
        if options.structure == "width":
            model.sync_config()
            details = width_details(before, model, params_before)
        else:
            details = compressor.record.to_dict(options)
            details["variant"] = options.variant
        details["calibration"] = report.to_dict()
        return details
