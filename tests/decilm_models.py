"""Tiny and real models whose layers differ in size, for the DeciLM (vLLM per-layer sizes) tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.decilm_loading import make_attention_noop, make_ffn_noop
from compressor.model import ModelHandle
from compressor.testing import tiny_llama, tiny_tokenizer
from compressor_methods._width import keep_kv_groups, keep_mlp_neurons

# head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (not 16)
TINY = dict(layers=5, hidden=128, heads=4, kv_heads=2, ffn=128)


def keep_first_neurons(model: ModelHandle, index: int, width: int) -> None:
    """Narrow layer ``index``'s FFN to its first ``width`` neurons."""
    keep_mlp_neurons(model.layers[index].mlp, torch.arange(width))


def keep_first_kv_head_only(model: ModelHandle, index: int) -> None:
    """Layer ``index`` keeps all its query heads but only KV head 0, which they now all share."""
    attn = model.layers[index].self_attn
    hd = model.head_dim
    heads = attn.q_proj.out_features // hd
    for name in ("k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, hd, bias=old.bias is not None, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:hd])
            if old.bias is not None:
                new.bias.copy_(old.bias[:hd])
        setattr(attn, name, new)
    attn.num_key_value_groups = heads


def drop_kv_group(model: ModelHandle, index: int, group: int) -> None:
    """Remove KV group ``group`` of layer ``index`` with its query heads (a per-layer query-head cut)."""
    attn = model.layers[index].self_attn
    kv = attn.k_proj.out_features // model.head_dim
    keep_kv_groups(attn, torch.tensor([g for g in range(kv) if g != group]), model.head_dim)


def nonuniform_tiny(tie: bool = False, seed: int = 0, tokenizer: Any = "tiny") -> ModelHandle:
    """5 layers: FFN 96 in layer 1, one KV head in layer 2, no attention in 3, no FFN in 4."""
    tok = tiny_tokenizer() if tokenizer == "tiny" else tokenizer
    vocab = len(tok) if tok is not None else 256
    model = tiny_llama(vocab=vocab, seed=seed, tie=tie, tokenizer=tok, **TINY)
    keep_first_neurons(model, 1, 96)
    keep_first_kv_head_only(model, 2)
    make_attention_noop(model.layers[3])
    make_ffn_noop(model.layers[4])
    return model
