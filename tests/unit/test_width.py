"""Width (structured) mode: modules really shrink, the config matches, stock transformers reloads it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.api import StageContext
from compressor.testing import random_windows, tiny_llama
from compressor_methods._width import keep_kv_groups, keep_mlp_neurons
from compressor_methods.magnitude import Magnitude
from compressor_methods.sparsegpt import SparseGPT
from compressor_methods.wanda import Wanda

IDS = random_windows(6, 32, 256)
CTX = StageContext(calibration_loader=lambda: IDS.numpy(), log=lambda s: None)


def test_keep_mlp_neurons_equals_zeroing_the_removed_neurons():
    handle = tiny_llama(layers=1)
    mlp = handle.layers[0].mlp
    x = torch.randn(3, 5, 64)
    keep = torch.arange(0, 128, 2)
    with torch.no_grad():
        masked = mlp.down_proj.weight.clone()
        masked[:, 1::2] = 0
        expected = torch.nn.functional.linear(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), masked)
        keep_mlp_neurons(mlp, keep)
        torch.testing.assert_close(mlp(x), expected)
    assert mlp.gate_proj.out_features == 64 and mlp.down_proj.in_features == 64


def test_keep_kv_groups_keeps_query_heads_with_their_kv_head():
    handle = tiny_llama(layers=1, heads=4, kv_heads=2)
    attn = handle.layers[0].self_attn
    q_rows = attn.q_proj.weight[32:].clone()  # heads 2,3 read KV head 1 (head_dim 16)
    keep_kv_groups(attn, torch.tensor([1]), head_dim=16)
    assert torch.equal(attn.q_proj.weight, q_rows)
    assert attn.k_proj.out_features == 16 and attn.o_proj.in_features == 32
    assert attn.num_key_value_groups == 2


@pytest.mark.parametrize("method", [Magnitude, Wanda, SparseGPT])
@pytest.mark.parametrize("kv_groups", [0, 1])
def test_width_model_matches_config_and_reloads_with_stock_transformers(method, kv_groups, tmp_path):
    handle = tiny_llama(layers=3, heads=4, kv_heads=2, ffn=128)
    details = method().apply(handle, method.Options(structure="width", width_fraction=0.25,
                                                    remove_kv_groups=kv_groups), CTX)
    assert details["intermediate_size"] == [128, 96]
    assert details["num_key_value_heads"] == [2, 2 - kv_groups]
    cfg = handle.config
    assert cfg.intermediate_size == 96 and cfg.num_key_value_heads == 2 - kv_groups
    assert cfg.num_attention_heads == 4 - 2 * kv_groups
    for i in range(3):
        lin = handle.linears(i)
        assert lin["gate_proj"].weight.shape == (96, 64) and lin["down_proj"].weight.shape == (64, 96)
        assert lin["q_proj"].out_features == cfg.num_attention_heads * 16
    assert details["parameters"][1] < details["parameters"][0]
    handle.save_hf(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS[:2]).logits, handle.model(IDS[:2]).logits)


def test_sparsegpt_width_compensation_beats_plain_removal():
    """On one layer's MLP, OBS-updated down_proj reconstructs the dense output better than just deleting."""
    from compressor.calibration import InputHessian
    from compressor_methods.sparsegpt.structured import obs_remove_column_groups

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 48, generator=g) @ torch.randn(48, 48, generator=g)
    w = torch.randn(16, 48, generator=g)
    h = InputHessian(48, torch.device("cpu"))
    h.update(x)
    updated, removed = obs_remove_column_groups(w, h.result(), [torch.tensor([j]) for j in range(48)], 12)
    plain = w.clone()
    plain[:, removed] = 0
    assert len(set(removed)) == 12 and (updated[:, removed] == 0).all()
    assert (x @ (w - updated).t()).norm() < (x @ (w - plain).t()).norm()
