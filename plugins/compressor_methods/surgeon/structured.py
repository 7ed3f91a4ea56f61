"""One shot of structured surgery: coupled MLP neurons and KV groups, one global threshold, OBS updates.

An MLP neuron is a row of gate, a row of up and a column of down; a KV group is its rows in
q, k and v and its columns in o (GQA: a KV head with the query heads that read it). Removing a
structure silences its output, which is exactly removing the consumer's input columns (down's, or
o's): the structure's cost is the KFAC cost of those columns, and the OBS column update of the
consumer compensates through the structures that stay. The producer rows (gate/up, q/k/v) carry
nothing afterwards and are sliced away without an update of their own; compensating them too (row
OBS through G) would correct outputs that are discarded anyway, and measured on SmolLM2 it made
the loss far worse. Every shot works on the really smaller model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compressor_methods._width import keep_kv_groups, keep_mlp_neurons, kv_group_layout, o_columns_of_group
from compressor_methods.surgeon.allocation import Structure
from compressor_methods.surgeon.kfac import KronFactors, balance
from compressor_methods.surgeon.elements import Inverses, invert
from compressor_methods.surgeon.obs import column_costs, columns_cost, remove_columns


class StructuredState:
    """Per-layer minimum sizes and the structure candidates of each shot."""

    def __init__(self, layers: nn.ModuleList, head_dim: int, min_density: float, kv_groups: bool) -> None:
        self.layers = layers
        self.head_dim = head_dim
        self.kv_groups = kv_groups
        self.minimum: dict[tuple[int, str], int] = {}
        for i, layer in enumerate(layers):
            width = layer.mlp.down_proj.in_features
            self.minimum[(i, "neuron")] = max(1, math.ceil(width * min_density))
            self.minimum[(i, "kv_group")] = 1

    def candidates(self, factors: dict[str, KronFactors], inverses: dict[str, Inverses],
                   names: list[dict[str, str]]) -> tuple[list[Structure], dict[tuple[int, str], int]]:
        """Every removable structure with its cost, and how many of each kind each layer has now."""
        out: list[Structure] = []
        alive: dict[tuple[int, str], int] = {}
        for i, layer in enumerate(self.layers):
            q = names[i]
            mlp, attn = layer.mlp, layer.self_attn
            hidden = mlp.gate_proj.in_features
            f, inv, w = balance(factors[q["down_proj"]]), inverses[q["down_proj"]], mlp.down_proj.weight.data.float()
            cost = column_costs(w, f.g.to(w.device), inv.a_inv.to(w.device)).double().cpu()
            out += [Structure(i, "neuron", j, float(c), 3 * hidden) for j, c in enumerate(cost.tolist())]
            alive[(i, "neuron")] = cost.numel()
            groups, per_group = kv_group_layout(attn, self.head_dim)
            alive[(i, "kv_group")] = groups
            if not self.kv_groups or groups < 2:
                continue
            params = 2 * per_group * self.head_dim * hidden + 2 * self.head_dim * hidden
            f, inv, w = balance(factors[q["o_proj"]]), inverses[q["o_proj"]], attn.o_proj.weight.data.float()
            for g in range(groups):
                cols = o_columns_of_group(g, per_group, self.head_dim).to(w.device)
                out.append(Structure(i, "kv_group", g, columns_cost(w, f.g.to(w.device), inv.a_inv.to(w.device), cols),
                                     params))
        return out, alive

    def remove(self, chosen: list[Structure], inverses: dict[str, Inverses], names: list[dict[str, str]]) -> None:
        """Apply the OBS updates for ``chosen`` and slice the modules so the layers really shrink."""
        for i, layer in enumerate(self.layers):
            neurons = sorted(s.index for s in chosen if s.layer == i and s.kind == "neuron")
            groups = sorted(s.index for s in chosen if s.layer == i and s.kind == "kv_group")
            q = names[i]
            if neurons:
                mlp = layer.mlp
                dev = mlp.down_proj.weight.device
                idx = torch.tensor(neurons, device=dev)
                mlp.down_proj.weight.data.copy_(
                    remove_columns(mlp.down_proj.weight.data.float(), inverses[q["down_proj"]].a_inv.to(dev), idx)
                    .to(mlp.down_proj.weight.dtype))
                width = mlp.down_proj.in_features
                keep_mlp_neurons(mlp, torch.tensor([j for j in range(width) if j not in set(neurons)]))
            if groups:
                attn = layer.self_attn
                dev = attn.o_proj.weight.device
                total, per_group = kv_group_layout(attn, self.head_dim)
                q_rows = torch.cat([o_columns_of_group(g, per_group, self.head_dim) for g in groups]).to(dev)
                attn.o_proj.weight.data.copy_(
                    remove_columns(attn.o_proj.weight.data.float(), inverses[q["o_proj"]].a_inv.to(dev), q_rows)
                    .to(attn.o_proj.weight.dtype))
                keep_kv_groups(attn, torch.tensor([g for g in range(total) if g not in set(groups)]), self.head_dim)


__all__ = ["StructuredState", "invert"]
