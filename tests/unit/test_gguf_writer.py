"""The GGUF writer on tiny random Llamas, read back with gguf.GGUFReader (no llama.cpp needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compressor.api import Kind, RuntimeSettings
from compressor.errors import ExportError, RuntimeUnavailableError
from compressor.testing import tiny_llama, tiny_tokenizer
from compressor_exporters.gguf import GgufExporter, GgufOptions
from compressor_exporters.gguf.tensors import encode_tensor, permute_for_norm_rope
from compressor_exporters.gguf.writer import plan_layers, write_gguf

gguf = pytest.importorskip("gguf")


def _fields(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _hf_shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape))  # GGUF stores dims innermost-first


def narrow_layer(handle, index: int, ffn: int | None = None, kv_heads: int | None = None,
                 heads: int | None = None) -> None:
    """Shrink one layer's FFN width and/or head counts by slicing its nn.Linear modules."""
    layer = handle.layers[index]
    hd = handle.head_dim
    with torch.no_grad():
        if ffn is not None:
            mlp = layer.mlp
            for name in ("gate_proj", "up_proj"):
                old = getattr(mlp, name)
                new = nn.Linear(old.in_features, ffn, bias=False)
                new.weight.copy_(old.weight[:ffn])
                setattr(mlp, name, new)
            old = mlp.down_proj
            new = nn.Linear(ffn, old.out_features, bias=False)
            new.weight.copy_(old.weight[:, :ffn])
            mlp.down_proj = new
        attn = layer.self_attn
        if kv_heads is not None:
            for name in ("k_proj", "v_proj"):
                old = getattr(attn, name)
                new = nn.Linear(old.in_features, kv_heads * hd, bias=False)
                new.weight.copy_(old.weight[:kv_heads * hd])
                setattr(attn, name, new)
        if heads is not None:
            old = attn.q_proj
            attn.q_proj = nn.Linear(old.in_features, heads * hd, bias=False)
            attn.q_proj.weight.copy_(old.weight[:heads * hd])
            old = attn.o_proj
            attn.o_proj = nn.Linear(heads * hd, old.out_features, bias=False)
            attn.o_proj.weight.copy_(old.weight[:, :heads * hd])
        spec = handle.layer_spec(index)
        attn.num_key_value_groups = spec.num_heads // spec.num_kv_heads


def test_tiny_llama_round_trips_through_the_reader(tmp_path):
    model = tiny_llama()  # untied: output.weight must be written
    details = write_gguf(model, tmp_path / "m.gguf", "F32")
    fields, tensors = _fields(tmp_path / "m.gguf")
    assert details["arch"] == "llama" and fields["general.architecture"] == "llama"
    cfg = model.config
    assert fields["llama.block_count"] == 4
    assert fields["llama.embedding_length"] == cfg.hidden_size
    assert fields["llama.feed_forward_length"] == cfg.intermediate_size
    assert fields["llama.attention.head_count"] == cfg.num_attention_heads
    assert fields["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert fields["llama.attention.key_length"] == fields["llama.rope.dimension_count"] == model.head_dim
    assert fields["llama.context_length"] == cfg.max_position_embeddings
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert fields["tokenizer.ggml.model"] == "none" and fields["llama.vocab_size"] == cfg.vocab_size
    assert len(tensors) == 2 + 1 + 4 * 9
    assert _hf_shape(tensors["token_embd.weight"]) == (cfg.vocab_size, cfg.hidden_size)
    assert _hf_shape(tensors["output.weight"]) == (cfg.vocab_size, cfg.hidden_size)
    assert _hf_shape(tensors["blk.3.attn_k.weight"]) == (cfg.num_key_value_heads * model.head_dim, cfg.hidden_size)
    assert _hf_shape(tensors["blk.0.ffn_down.weight"]) == (cfg.hidden_size, cfg.intermediate_size)
    lin = model.linears(2)
    got_q = np.asarray(tensors["blk.2.attn_q.weight"].data).reshape(lin["q_proj"].weight.shape)
    np.testing.assert_array_equal(got_q, permute_for_norm_rope(lin["q_proj"].weight.detach().numpy(), 4))
    got_v = np.asarray(tensors["blk.2.attn_v.weight"].data).reshape(lin["v_proj"].weight.shape)
    np.testing.assert_array_equal(got_v, lin["v_proj"].weight.detach().numpy())


def test_tied_embeddings_omit_output_weight(tmp_path):
    details = write_gguf(tiny_llama(tie=True), tmp_path / "m.gguf", "F16")
    _, tensors = _fields(tmp_path / "m.gguf")
    assert details["tied_embeddings"] and "output.weight" not in tensors
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay F32


def _rope_rotate_half(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _rope_interleaved(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    return out


def test_permutation_turns_hf_rope_into_norm_rope():
    rng = np.random.default_rng(0)
    heads, hd, hidden = 3, 8, 12
    w = rng.normal(size=(heads * hd, hidden))
    x = rng.normal(size=hidden)
    hf = _rope_rotate_half((w @ x).reshape(heads, hd), pos=5)
    norm = _rope_interleaved((permute_for_norm_rope(w, heads) @ x).reshape(heads, hd), pos=5)
    # Attention scores are dot products per head; the permutation only reorders dims within a head.
    q2 = rng.normal(size=(heads * hd, hidden)) @ x
    hf_q = _rope_rotate_half(q2.reshape(heads, hd), pos=9)
    norm_q = _rope_interleaved((permute_for_norm_rope(q2[:, None], heads)[:, 0]).reshape(heads, hd), pos=9)
    np.testing.assert_allclose((hf * hf_q).sum(-1), (norm * norm_q).sum(-1), rtol=1e-10)
    assert not np.allclose(hf, norm)


def test_nonuniform_model_is_written_as_deci_with_per_layer_arrays(tmp_path):
    model = tiny_llama()
    narrow_layer(model, 1, ffn=64)
    narrow_layer(model, 2, kv_heads=1, heads=2)
    assert not model.is_uniform()
    details = write_gguf(model, tmp_path / "m.gguf", "F32")
    fields, tensors = _fields(tmp_path / "m.gguf")
    assert details["arch"] == fields["general.architecture"] == "deci"
    assert list(fields["deci.feed_forward_length"]) == [128, 64, 128, 128]
    assert list(fields["deci.attention.head_count"]) == [4, 4, 2, 4]
    assert list(fields["deci.attention.head_count_kv"]) == [2, 2, 1, 2]
    assert fields["deci.attention.key_length"] == fields["deci.attention.value_length"] == 16
    assert _hf_shape(tensors["blk.1.ffn_gate.weight"]) == (64, 64)
    assert _hf_shape(tensors["blk.2.attn_q.weight"]) == (32, 64)
    assert _hf_shape(tensors["blk.2.attn_k.weight"]) == (16, 64)


class _NoFFN(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


class _NoAttention(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def test_removed_ffn_becomes_a_zero_ffn_and_removed_attention_in_layer0_a_zero_attention(tmp_path):
    model = tiny_llama()
    model.layers[1].mlp = _NoFFN()
    model.layers[0].self_attn = _NoAttention()
    model.layers[2].self_attn = _NoAttention()
    arch, layers = plan_layers(model)
    assert arch == "deci"
    assert (layers[1].ffn, layers[1].zero_ffn) == (32, True)
    assert (layers[0].heads, layers[0].kv_heads, layers[0].zero_attention) == (1, 1, True)
    assert layers[2].heads == 0 and not layers[2].zero_attention
    details = write_gguf(model, tmp_path / "m.gguf", "F32")
    fields, tensors = _fields(tmp_path / "m.gguf")
    assert details["zero_ffn_layers"] == [1] and details["zero_attention_layers"] == [0]
    assert list(fields["deci.attention.head_count"]) == [1, 4, 0, 4]
    assert not np.asarray(tensors["blk.1.ffn_down.weight"].data).any()
    assert not np.asarray(tensors["blk.0.attn_output.weight"].data).any()
    assert "blk.2.attn_q.weight" not in tensors and "blk.2.attn_norm.weight" not in tensors


@pytest.mark.parametrize("outtype", ["Q8_0", "Q4_0", "Q4_1", "BF16"])
def test_quantized_types_and_fallback_for_rows_not_divisible_by_32(tmp_path, outtype):
    model = tiny_llama()
    narrow_layer(model, 3, ffn=48)  # ffn_down rows have 48 weights: no 32-block quant type takes them
    details = write_gguf(model, tmp_path / "m.gguf", outtype)
    _, tensors = _fields(tmp_path / "m.gguf")
    want = gguf.GGMLQuantizationType[outtype]
    assert tensors["blk.0.ffn_down.weight"].tensor_type == want
    if outtype == "BF16":
        assert details["fallback_tensors"] == []
    else:
        assert details["fallback_tensors"] == ["blk.3.ffn_down.weight"]
        assert tensors["blk.3.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    deq = gguf.quants.dequantize(np.asarray(tensors["blk.0.ffn_up.weight"].data), want)
    orig = model.linears(0)["up_proj"].weight.detach().numpy()
    err = np.abs(deq.reshape(orig.shape) - orig).max()
    assert err < (0.02 if outtype.startswith("Q4") else 0.003) * np.abs(orig).max() * 10


def test_encode_keeps_1d_in_f32():
    enc = encode_tensor(np.ones(64, np.float32), "Q4_0")
    assert enc.type_name == "F32" and enc.data.dtype == np.float32


def test_hf_tokenizer_is_written_as_gpt2_bpe(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(vocab=len(tok) + 5, tokenizer=tok)  # 5 extra embedding rows get [PAD] tokens
    details = write_gguf(model, tmp_path / "m.gguf", "F32")
    fields, _ = _fields(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = list(fields["tokenizer.ggml.tokens"])
    assert len(tokens) == model.config.vocab_size and details["padded_tokens"] == 5
    assert tokens[:3] == ["<pad>", "<s>", "</s>"] and tokens[-1] == "[PAD4]"
    assert tokens[3:len(tok)] == [tok.convert_ids_to_tokens(i) for i in range(3, len(tok))]
    types = list(fields["tokenizer.ggml.token_type"])
    assert types[1] == gguf.TokenType.CONTROL and types[10] == gguf.TokenType.NORMAL
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2


def test_options_and_benefits():
    with pytest.raises(ValueError):
        GgufOptions(outtype="Q3_XX")
    with pytest.raises(ValueError):
        GgufOptions(bogus=1)
    ex = GgufExporter()
    table = ex.benefits(GgufOptions(outtype="F32"))
    assert table[Kind.DEPTH].speed and table[Kind.NONUNIFORM].size
    assert not table[Kind.UNSTRUCTURED].speed and not table[Kind.SEMI_STRUCTURED].size
    assert not table[Kind.RUNTIME_QUANT].size
    assert ex.benefits(GgufOptions(outtype="Q4_K_M"))[Kind.RUNTIME_QUANT].size


def test_check_model_refuses_heads_not_a_multiple_of_kv_heads():
    model = tiny_llama()
    layer = model.layers[1].self_attn
    layer.q_proj = nn.Linear(64, 3 * 16, bias=False)
    with pytest.raises(ExportError, match="multiple"):
        GgufExporter().check_model(model, GgufOptions())


def test_exporter_is_registered_through_its_entry_point():
    from compressor.plugin_manager import load_registry

    assert load_registry().exporter("gguf") is GgufExporter


def test_missing_llama_cpp_raises_runtime_unavailable(tmp_path, monkeypatch):
    import sys

    write_gguf(tiny_llama(), tmp_path / "model.gguf", "F16")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(RuntimeUnavailableError, match="llama.cpp is not available") as err:
        GgufExporter().open_runtime(tmp_path, GgufOptions(), RuntimeSettings())
    assert "install_llama_cpp.sh" in err.value.hint


def test_k_quant_needs_llama_cpp(monkeypatch):
    from compressor_exporters.gguf import runtime

    monkeypatch.setattr(runtime, "llama_cpp_version", lambda: None)  # as on a machine without the build
    with pytest.raises(ExportError, match="llama-cpp-python"):
        GgufExporter().check_model(tiny_llama(), GgufOptions(outtype="Q4_K_M"))
