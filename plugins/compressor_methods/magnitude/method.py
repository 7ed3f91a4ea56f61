"""The ``magnitude`` method: zero the smallest weights, no calibration data."""

from __future__ import annotations

from typing import Any

import torch

from compressor.api import Kind, Method, StageContext, layer_in_memory
from compressor_methods._masks import prune_mask_n_m, prune_mask_per_row
from compressor_methods._pruning import (PruneOptions, PruneRecord, check_n_m_widths, is_target, kinds_for, layer_names,
                                         width_details)
from compressor_methods._width import (group_scores, keep_kv_groups, keep_mlp_neurons, kv_group_layout, lowest,
                                       neurons_to_remove)


class MagnitudeOptions(PruneOptions):
    """Magnitude options. Example recipe stage: ``{method: magnitude, options: {pattern: "2:4"}}``."""


def magnitude_prune(weight: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """Return ``weight`` with its smallest |w| zeroed per row (or per N:M group)."""
    scores = weight.abs()
    mask = prune_mask_n_m(scores, *n_m) if n_m is not None else prune_mask_per_row(scores, sparsity)
    return weight.masked_fill(mask, 0)


class Magnitude(Method):
    """Magnitude pruning: the baseline every other method is compared with."""

    name = "magnitude"
    stage = "prune"
    summary = "zero the smallest weights per row (unstructured, N:M) or remove the smallest neurons (width)"
    Options = MagnitudeOptions

    def conformance_options(self) -> list[dict[str, Any]]:
        """Unstructured sparsity and width pruning: two kinds of change for the conformance kit to check."""
        return [{}, {"structure": "width"}]

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Unstructured, N:M or width, from the options."""
        return kinds_for(options)

    def supports_offload(self, options: Any) -> bool:
        """Every mode works one layer at a time."""
        return True

    @torch.no_grad()
    def apply(self, model: Any, options: MagnitudeOptions, ctx: StageContext) -> dict[str, Any]:
        """Prune ``model`` in place."""
        check_n_m_widths(model, options)
        if options.structure == "width":
            return self._width(model, options)
        record = PruneRecord({})
        for index, names in enumerate(layer_names(model)):
            with layer_in_memory(model.model, index):
                linears = model.linears(index)
                for short, qualified in names.items():
                    if is_target(qualified, options):
                        w = linears[short].weight
                        w.data.copy_(magnitude_prune(w.data, options.target_sparsity, options.n_m))
                        record.add(qualified, w.data)
        return record.to_dict(options)

    def _width(self, model: Any, options: MagnitudeOptions) -> dict[str, Any]:
        before, params_before = model.layer_specs(), model.num_parameters()
        head_dim = model.head_dim
        remove = neurons_to_remove(before[0].intermediate_size, options.width_fraction)
        for index in range(model.num_layers):
            with layer_in_memory(model.model, index) as layer:
                self._narrow_layer(layer, options, head_dim, remove)
        model.sync_config()
        return width_details(before, model, params_before)

    @staticmethod
    def _narrow_layer(layer: Any, options: MagnitudeOptions, head_dim: int, remove: int) -> None:
        """Remove the smallest KV groups and FFN neurons of one layer (by weight norms)."""
        attn, mlp = layer.self_attn, layer.mlp
        if options.remove_kv_groups:
            groups, per_group = kv_group_layout(attn, head_dim)
            # a group's norm: its query rows, its K/V rows and its o_proj columns
            cols = (attn.q_proj.weight.float().norm(dim=1) + attn.o_proj.weight.float().norm(dim=0))
            kv = (attn.k_proj.weight.float().norm(dim=1) + attn.v_proj.weight.float().norm(dim=1))
            scores = group_scores(cols, groups) + group_scores(kv, groups)
            _, kept = lowest(scores, min(options.remove_kv_groups, groups - 1))
            keep_kv_groups(attn, kept, head_dim)
        if remove:
            scores = (mlp.gate_proj.weight.float().norm(dim=1) + mlp.up_proj.weight.float().norm(dim=1)
                      + mlp.down_proj.weight.float().norm(dim=0))
            _, kept = lowest(scores, remove)
            keep_mlp_neurons(mlp, kept)
