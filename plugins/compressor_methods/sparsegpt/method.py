"""The ``sparsegpt`` method: OBS pruning with weight updates that compensate the pruned weights."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from compressor.api import Kind, LayerStep, Method, StageContext, run_layer_sequential
from compressor_methods._pruning import (CalibratedPruneOptions, SparsifyCompressor, calibration_config,
                                         calibration_windows, check_n_m_widths, engine_memory, kinds_for, layer_names,
                                         width_details)
from compressor_methods._width import (keep_kv_groups, keep_mlp_neurons, kv_group_layout, neurons_to_remove,
                                       o_columns_of_group)
from compressor_methods.sparsegpt.sparsify import damped_hessian, sparsegpt_prune, upper_cholesky_of_inverse
from compressor_methods.sparsegpt.structured import obs_remove_column_groups


class SparseGPTOptions(CalibratedPruneOptions):
    """SparseGPT options. Example recipe stage: ``{method: sparsegpt, options: {pattern: "2:4"}}``."""

    percdamp: float = Field(0.01, gt=0.0, le=1.0, description="dampening added to H's diagonal, as a fraction "
                                                              "of its mean")
    blocksize: int = Field(128, ge=8, description="columns per block of the lazy batched update")


class SparseGPT(Method):
    """SparseGPT (Frantar & Alistarh, arXiv 2301.00774): one-shot OBS pruning with error propagation."""

    name = "sparsegpt"
    stage = "prune"
    summary = "prune with Hessian-based error compensation (unstructured, N:M or width)"
    Options = SparseGPTOptions

    def needs_calibration(self, options: Any) -> bool:
        """SparseGPT needs calibration activations."""
        return True

    def supports_offload(self, options: Any) -> bool:
        """Works on a model whose layers live on disk: the calibration engine moves one layer at a time."""
        return True

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Unstructured, N:M or width, from the options."""
        return kinds_for(options)

    def estimate_memory(self, model: Any, options: Any, samples: int, seq_len: int, ctx: StageContext) -> Any:
        """The calibration engine's peak for these options."""
        return engine_memory(model, options, samples, seq_len, ctx, {"hessian": None})

    def apply(self, model: Any, options: SparseGPTOptions, ctx: StageContext) -> dict[str, Any]:
        """Prune ``model`` in place, layer by layer on the calibration windows."""
        check_n_m_widths(model, options)
        head_dim = model.head_dim
        before, params_before = model.layer_specs(), model.num_parameters()
        remove = neurons_to_remove(before[0].intermediate_size, options.width_fraction)
        cache: dict[str, Any] = {}

        def prune(weight: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
            hessian = stats["hessian"]
            if cache.get("h") is not hessian:  # q/k/v (and gate/up) share one Hessian: factor it once
                h, _ = damped_hessian(hessian, weight[:1], options.percdamp)
                cache.update(h=hessian, u=upper_cholesky_of_inverse(h))
            return sparsegpt_prune(weight, hessian, options.target_sparsity, options.n_m, options.blocksize,
                                   options.percdamp, upper=cache["u"])

        def width(step: LayerStep) -> None:
            attn, mlp = step.layer.self_attn, step.layer.mlp
            if "o_proj" in step.names and options.remove_kv_groups:
                groups, per_group = kv_group_layout(attn, head_dim)
                cols = [o_columns_of_group(g, per_group, head_dim) for g in range(groups)]
                w, removed = obs_remove_column_groups(attn.o_proj.weight.data, step.stats["o_proj"]["hessian"], cols,
                                                      min(options.remove_kv_groups, groups - 1), options.percdamp)
                attn.o_proj.weight.data.copy_(w.to(attn.o_proj.weight.dtype))
                keep_kv_groups(attn, torch.tensor([g for g in range(groups) if g not in removed]), head_dim)
            if "down_proj" in step.names and remove:
                width_now = mlp.down_proj.in_features
                cols = [torch.tensor([j]) for j in range(width_now)]
                w, removed = obs_remove_column_groups(mlp.down_proj.weight.data, step.stats["down_proj"]["hessian"],
                                                      cols, remove, options.percdamp, per_step=max(1, remove // 64))
                mlp.down_proj.weight.data.copy_(w.to(mlp.down_proj.weight.dtype))
                gone = set(removed)
                keep_mlp_neurons(mlp, torch.tensor([j for j in range(width_now) if j not in gone]))

        compressor = SparsifyCompressor(options, {"hessian": None}, prune, width, layer_names(model))
        report = run_layer_sequential(model, calibration_windows(ctx, options), compressor,
                                      calibration_config(ctx, options))
        if options.structure == "width":
            model.sync_config()
            details = width_details(before, model, params_before)
        else:
            details = compressor.record.to_dict(options)
        details["calibration"] = report.to_dict()
        return details
