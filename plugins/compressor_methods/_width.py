"""Structured width surgery shared by magnitude, Wanda and SparseGPT.

Removes whole MLP neurons (rows of gate/up, columns of down) and whole KV groups of
attention (a KV head with the query heads that read it, and the matching o_proj columns),
so modules really shrink. Methods remove the same number in every layer and call
``ModelHandle.sync_config()`` at the end, which gives a standard, smaller Llama config.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.api import UsageError


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new, smaller nn.Linear holding the selected output rows / input columns."""
    w = linear.weight.data
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if linear.bias is not None:
        b = linear.bias.data
        new.bias.data.copy_(b.index_select(0, rows.to(b.device)) if rows is not None else b)
    new.requires_grad_(False)
    return new


def neurons_to_remove(intermediate_size: int, fraction: float) -> int:
    """Number of MLP neurons removed per layer for ``fraction`` (at least one kept)."""
    return min(int(round(intermediate_size * fraction)), intermediate_size - 1)


def keep_mlp_neurons(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep only MLP neurons ``keep`` (sorted indices): rows of gate/up, columns of down."""
    keep = torch.sort(keep).values
    mlp.gate_proj = _sliced(mlp.gate_proj, rows=keep)
    mlp.up_proj = _sliced(mlp.up_proj, rows=keep)
    mlp.down_proj = _sliced(mlp.down_proj, cols=keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


def kv_group_layout(attn: nn.Module, head_dim: int) -> tuple[int, int]:
    """Return (number of KV groups, query heads per group) of an attention module."""
    kv = attn.k_proj.out_features // head_dim
    heads = attn.q_proj.out_features // head_dim
    if kv == 0 or heads % kv:
        raise UsageError(f"attention with {heads} query heads and {kv} KV heads has no valid grouping",
                         hint="disable attention-group removal (remove_kv_groups: 0)")
    return kv, heads // kv


def o_columns_of_group(group: int, heads_per_group: int, head_dim: int) -> torch.Tensor:
    """The o_proj input columns (= q_proj output rows) that belong to KV group ``group``."""
    width = heads_per_group * head_dim
    return torch.arange(group * width, (group + 1) * width)


def keep_kv_groups(attn: nn.Module, keep: torch.Tensor, head_dim: int) -> None:
    """Keep only KV groups ``keep``: their K/V heads, their query heads, and the matching o_proj columns."""
    kv, per_group = kv_group_layout(attn, head_dim)
    keep = torch.sort(keep).values
    q_rows = torch.cat([o_columns_of_group(int(g), per_group, head_dim) for g in keep])
    kv_rows = torch.cat([torch.arange(int(g) * head_dim, (int(g) + 1) * head_dim) for g in keep])
    attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced(attn.o_proj, cols=q_rows)
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = per_group  # unchanged ratio: GQA stays valid


def group_scores(column_scores: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum per-column scores of o_proj over the columns of each KV group."""
    return column_scores.reshape(groups, -1).sum(-1)


def lowest(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (removed = the ``count`` lowest scores, kept = the rest), both sorted."""
    order = torch.sort(scores.float().cpu(), stable=True).indices
    return torch.sort(order[:count]).values, torch.sort(order[count:]).values
