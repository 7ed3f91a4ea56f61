"""The vllm exporter's DeciLM path (per-layer sizes) and compressor's own DeciLM loader, on tiny Llamas."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from compressor.api import Kind
from compressor.decilm_loading import NoOpAttention, NoOpMLP, load_decilm_dir, make_attention_noop
from compressor.errors import ExportError, ModelLoadError, UnsupportedModelError
from compressor.model_loading import load_model
from compressor.testing import random_windows, tiny_llama
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.vllm import VllmExporter, VllmOptions
from compressor_exporters.vllm.decilm import plan_decilm, write_decilm_dir
from compressor_exporters.vllm.decilm_config import DeciLMConfig
from decilm_models import TINY, drop_kv_group, nonuniform_tiny

VOCAB = 262  # the tiny byte-level tokenizer (259 bytes and specials, 3 merges)


def _tensors(dest) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with safe_open(str(dest / "model.safetensors"), "pt") as st:
        return {k: (tuple(st.get_slice(k).get_shape()), st.get_tensor(k).dtype) for k in st.keys()}


def _export(model, dest, **options):
    ex, opts = VllmExporter(), VllmOptions(dtype="float32", **options)
    ex.check_model(model, opts)
    return ex.export(model, dest, opts)


def test_config_has_one_block_per_layer_with_exact_sizes(tmp_path):
    model = nonuniform_tiny()
    details = _export(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert config["num_attention_heads"] == TINY["heads"] and config["head_dim"] == 32
    assert config["num_hidden_layers"] == 5 and len(config["block_configs"]) == 5
    blocks = config["block_configs"]
    # vLLM derives KV heads as num_attention_heads // n_heads_in_group
    kv = [None if b["attention"]["no_op"] else config["num_attention_heads"] // b["attention"]["n_heads_in_group"]
          for b in blocks]
    assert kv == [2, 2, 1, None, 2]
    assert [b["attention"]["no_op"] for b in blocks] == [False, False, False, True, False]
    assert [b["ffn"]["no_op"] for b in blocks] == [False, False, False, False, True]
    assert [b["ffn"].get("intermediate_size") for b in blocks] == [128, 96, 128, 128, None]
    assert all("ffn_mult" not in b["ffn"] for b in blocks)
    assert details["kv_heads"] == [2, 2, 1, 0, 2] and details["ffn_widths"] == [128, 96, 128, 128, 0]
    assert details["format"].startswith("decilm") and details["tokenizer"]
    assert (tmp_path / "configuration_decilm.py").is_file() and (tmp_path / "tokenizer.json").is_file()
    # what vLLM's DeciLMForCausalLM reads, as attributes, through the config class the worker registers
    parsed = DeciLMConfig.from_dict(config)
    assert parsed.block_configs[2].attention.n_heads_in_group == 4 and parsed.block_configs[3].attention.no_op
    assert parsed.block_configs[1].ffn.intermediate_size == 96 and not hasattr(parsed.block_configs[1].ffn, "ffn_mult")
    assert json.loads(parsed.to_json_string())["block_configs"] == blocks


def test_only_existing_weights_are_written_with_their_shapes(tmp_path):
    _export(nonuniform_tiny(), tmp_path)
    t = _tensors(tmp_path)
    assert not [n for n in t if n.startswith(("model.layers.3.self_attn", "model.layers.3.input_layernorm"))]
    assert not [n for n in t if n.startswith(("model.layers.4.mlp", "model.layers.4.post_attention_layernorm"))]
    assert "model.layers.3.mlp.down_proj.weight" in t and "model.layers.4.self_attn.q_proj.weight" in t
    assert t["model.layers.1.mlp.gate_proj.weight"][0] == (96, 128)
    assert t["model.layers.1.mlp.down_proj.weight"][0] == (128, 96)
    assert t["model.layers.2.self_attn.k_proj.weight"][0] == (32, 128)
    assert t["model.layers.2.self_attn.q_proj.weight"][0] == (128, 128)
    assert t["lm_head.weight"][0] == (VOCAB, 128)
    assert {dtype for _, dtype in t.values()} == {torch.float32}
    assert not [n for n in t if "rotary" in n]


def test_host_loader_round_trips_logits_and_sizes(tmp_path):
    model = nonuniform_tiny()
    _export(model, tmp_path)
    loaded = load_decilm_dir(tmp_path)
    assert loaded.layer_specs() == model.layer_specs()
    assert isinstance(loaded.layers[3].self_attn, NoOpAttention) and isinstance(loaded.layers[4].mlp, NoOpMLP)
    ids = random_windows(2, 20, VOCAB, seed=3)
    torch.testing.assert_close(loaded.logits(ids), model.logits(ids), rtol=0, atol=1e-5)
    # cached greedy decoding through the no-op layers gives the same tokens too
    prompts = [[1, 40, 41, 42], [1, 99, 7]]
    assert TorchRuntime(loaded.model).generate(prompts, 6) == TorchRuntime(model.model).generate(prompts, 6)
    assert loaded.tokenizer is not None and len(loaded.tokenizer) == VOCAB


def test_load_model_dispatches_decilm_dirs_and_hashes_them(tmp_path):
    model = nonuniform_tiny()
    _export(model, tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.source.kind == "hf-dir" and loaded.source.sha256
    assert not loaded.is_uniform() and loaded.layer_specs() == model.layer_specs()
    ids = random_windows(1, 12, VOCAB, seed=4)
    torch.testing.assert_close(loaded.logits(ids), model.logits(ids), rtol=0, atol=1e-5)


def test_loader_never_runs_code_from_the_directory(tmp_path):
    _export(nonuniform_tiny(), tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "configuration_decilm.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    load_model(str(tmp_path))
    assert not marker.exists()


def test_tied_embeddings_write_no_lm_head(tmp_path):
    model = nonuniform_tiny(tie=True)
    _export(model, tmp_path)
    assert "lm_head.weight" not in _tensors(tmp_path)
    loaded = load_decilm_dir(tmp_path)
    ids = random_windows(1, 10, VOCAB, seed=5)
    torch.testing.assert_close(loaded.logits(ids), model.logits(ids), rtol=0, atol=1e-5)


def test_bfloat16_export(tmp_path):
    model = nonuniform_tiny()
    details = VllmExporter().export(model, tmp_path, VllmOptions())  # the default dtype: bfloat16
    assert details["dtype"] == "bfloat16"
    assert {dtype for _, dtype in _tensors(tmp_path).values()} == {torch.bfloat16}
    loaded = load_decilm_dir(tmp_path, dtype="bfloat16")
    ids = random_windows(1, 10, VOCAB, seed=6)
    got = torch.log_softmax(loaded.logits(ids).float(), -1)
    assert (got - torch.log_softmax(model.logits(ids), -1)).abs().max() < 0.1


def test_layer0_without_attention_is_refused(tmp_path):
    model = nonuniform_tiny()
    make_attention_noop(model.layers[0])
    with pytest.raises(ExportError, match="layer 0") as err:
        VllmExporter().check_model(model, VllmOptions())
    assert err.value.hint
    with pytest.raises(ExportError, match="layer 0"):
        write_decilm_dir(model, tmp_path, "float32")


def test_per_layer_query_head_cut_is_refused_naming_the_layers():
    model = nonuniform_tiny()
    drop_kv_group(model, 1, group=0)  # layer 1: 2 query heads, 1 KV head
    assert model.layer_spec(1).num_heads == 2
    with pytest.raises(ExportError, match=r"layers 1 \(2\)") as err:
        VllmExporter().check_model(model, VllmOptions())
    assert "pad_query_heads" in err.value.hint


def test_query_heads_zero_padded_on_request_compute_the_same(tmp_path):
    model = nonuniform_tiny()
    drop_kv_group(model, 1, group=0)
    details = _export(model, tmp_path, pad_query_heads=True)
    assert details["padded_query_heads"] == {"1": {"real": 2, "written": 4}}
    assert "no faster" in details["padding_note"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["block_configs"][1]["attention"]["n_heads_in_group"] == 4  # 1 KV head serves all 4 slots
    t = _tensors(tmp_path)
    assert t["model.layers.1.self_attn.q_proj.weight"][0] == (128, 128)
    assert t["model.layers.1.self_attn.o_proj.weight"][0] == (128, 128)
    assert t["model.layers.1.self_attn.k_proj.weight"][0] == (32, 128)
    assert details["written_parameters"] > details["parameters"]
    loaded = load_decilm_dir(tmp_path)
    assert loaded.layer_spec(1).num_heads == 4  # padded heads are real modules now
    ids = random_windows(2, 16, VOCAB, seed=7)
    torch.testing.assert_close(loaded.logits(ids), model.logits(ids), rtol=0, atol=1e-5)


def test_padding_with_two_kv_groups_keeps_each_group_in_place(tmp_path):
    """8 heads, 4 KV heads; layer 1 keeps groups 0, 2, 3 with 2 heads each: padding interleaves per group."""
    from decilm_models import keep_first_neurons

    model = tiny_llama(layers=3, hidden=256, heads=8, kv_heads=4, ffn=64, vocab=64)
    keep_first_neurons(model, 2, 32)
    drop_kv_group(model, 1, group=1)  # 6 query heads over 3 KV heads: 3 does not divide 8
    with pytest.raises(ExportError, match="do not divide"):
        plan_decilm(model, pad_query_heads=True)
    model = tiny_llama(layers=3, hidden=256, heads=8, kv_heads=4, ffn=64, vocab=64)
    for g in (3, 1):
        drop_kv_group(model, 1, group=g)  # 4 query heads over KV heads 0 and 2
    plan = plan_decilm(model, pad_query_heads=True)
    assert plan.padded == {1: (4, 2)} and plan.blocks[1].n_heads_in_group == 4
    write_decilm_dir(model, tmp_path, "float32", pad_query_heads=True)
    ids = random_windows(2, 12, 64, seed=8)
    torch.testing.assert_close(load_decilm_dir(tmp_path).logits(ids), model.logits(ids), rtol=0, atol=1e-5)


def test_uniform_models_stay_stock_llama(tiny, tmp_path):
    details = VllmExporter().export(tiny, tmp_path, VllmOptions(dtype="float32"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama" and "block_configs" not in config
    assert "format" not in details or "decilm" not in details["format"]


def test_nonuniform_benefits_speed_and_size():
    b = VllmExporter().benefits(VllmOptions())[Kind.NONUNIFORM]
    assert b.speed and b.size and "DeciLM" in b.note


def test_loader_refuses_weights_that_do_not_match_the_blocks(tmp_path):
    _export(nonuniform_tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_configs"][1]["ffn"]["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_decilm_dir(tmp_path)
    config["block_configs"][1]["ffn"]["intermediate_size"] = 96
    config["block_configs"][0]["attention"] = {"no_op": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="layer 0"):
        load_model(str(tmp_path))
    config["block_configs"] = config["block_configs"][:3]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="one entry per layer"):
        load_decilm_dir(tmp_path)
