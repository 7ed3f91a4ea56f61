"""The transformers exporter (and the vLLM exporter's shared HF writer) on tiny random Llamas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from compressor.api import Kind, RuntimeSettings
from compressor.errors import ExportError, RuntimeUnavailableError
from compressor.testing import random_windows, tiny_llama, tiny_tokenizer
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.transformers_dir import TransformersExporter, TransformersOptions
from compressor_exporters.vllm import VllmExporter, VllmOptions


def _export(model, dest, **options):
    ex = TransformersExporter()
    opts = TransformersOptions(**options)
    ex.check_model(model, opts)
    return ex, opts, ex.export(model, dest, opts)


def _weight_names(dest) -> set[str]:
    names = set()
    for f in dest.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names.update(st.keys())
    return names


def test_export_reload_gives_identical_logits(tiny, tmp_path):
    ex, opts, details = _export(tiny, tmp_path)
    assert details["dtype"] == "float32" and details["layers"] == 4
    ids = random_windows(2, 24, 256, seed=1)
    with ex.open_runtime(tmp_path, opts, RuntimeSettings()) as rt:
        assert isinstance(rt, TorchRuntime)
        reloaded = rt.model(ids, use_cache=False).logits
        scores = rt.score(ids.numpy(), top_k=3)
    assert torch.equal(reloaded, tiny.logits(ids))
    ref = TorchRuntime(tiny.model).score(ids.numpy(), top_k=3)
    np.testing.assert_array_equal(scores.topk_ids, ref.topk_ids)
    np.testing.assert_array_equal(scores.target_logprobs, ref.target_logprobs)


def test_layer_dropped_model_exports_with_a_consistent_config(tiny, tmp_path):
    tiny.drop_layers([1, 2])
    ex, opts, details = _export(tiny, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 == details["layers"]
    layer_ids = {int(n.split(".")[2]) for n in _weight_names(tmp_path) if n.startswith("model.layers.")}
    assert layer_ids == {0, 1}
    ids = random_windows(2, 16, 256, seed=2)
    with ex.open_runtime(tmp_path, opts, RuntimeSettings()) as rt:
        assert len(rt.model.model.layers) == 2
        assert torch.equal(rt.model(ids, use_cache=False).logits, tiny.logits(ids))
        # the reloaded short model also decodes with a KV cache exactly like the in-memory one
        assert rt.generate([[5, 6, 7]], 6) == TorchRuntime(tiny.model).generate([[5, 6, 7]], 6)


def test_bfloat16_export_stores_bfloat16_and_stays_close(tiny, tmp_path):
    ex, opts, details = _export(tiny, tmp_path, dtype="bfloat16")
    with safe_open(str(next(tmp_path.glob("*.safetensors"))), "pt") as st:
        assert st.get_tensor("model.layers.0.mlp.up_proj.weight").dtype == torch.bfloat16
    assert next(tiny.model.parameters()).dtype == torch.float32, "export must not change the caller's model"
    ids = random_windows(1, 16, 256, seed=3)
    with ex.open_runtime(tmp_path, opts, RuntimeSettings()) as rt:
        assert next(rt.model.parameters()).dtype == torch.bfloat16
        got = torch.log_softmax(rt.model(ids, use_cache=False).logits.float(), -1)
    want = torch.log_softmax(tiny.logits(ids), -1)
    assert (got - want).abs().max() < 0.1


def test_nonuniform_model_is_refused(tiny, tmp_path):
    mlp = tiny.layers[1].mlp
    mlp.gate_proj = torch.nn.Linear(64, 96, bias=False)
    mlp.up_proj = torch.nn.Linear(64, 96, bias=False)
    mlp.down_proj = torch.nn.Linear(96, 64, bias=False)
    with pytest.raises(ExportError, match="same size"):
        TransformersExporter().check_model(tiny, TransformersOptions())
    VllmExporter().check_model(tiny, VllmOptions())  # the vllm exporter writes per-layer sizes as DeciLM


def test_bad_artifact_raises_runtime_unavailable(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeUnavailableError, match="transformers could not load"):
        TransformersExporter().open_runtime(tmp_path, TransformersOptions(), RuntimeSettings())


def test_benefits_tables():
    t = TransformersExporter().benefits(TransformersOptions())
    v = VllmExporter().benefits(VllmOptions())
    for table in (t, v):
        assert table[Kind.DEPTH].speed and table[Kind.DEPTH].size
        assert table[Kind.WIDTH].speed and table[Kind.WIDTH].size
        assert not table[Kind.UNSTRUCTURED].speed and not table[Kind.UNSTRUCTURED].size
        assert not table[Kind.SEMI_STRUCTURED].speed and not table[Kind.SEMI_STRUCTURED].size
    assert "36799" in v[Kind.SEMI_STRUCTURED].note
    for kind in (Kind.W8A8, Kind.W4A16, Kind.W8A16):
        assert v[kind].speed and v[kind].size
        assert not t[kind].speed


def test_entry_points_register_both_exporters():
    from compressor.plugin_manager import load_registry

    registry = load_registry()
    assert registry.exporter("transformers") is TransformersExporter
    assert registry.exporter("vllm") is VllmExporter


def test_options_are_validated():
    from pydantic import ValidationError

    assert VllmOptions().dtype == "bfloat16" and TransformersOptions().dtype == "float32"
    with pytest.raises(ValidationError):
        VllmOptions(dtype="int8")
    with pytest.raises(ValidationError):
        VllmOptions(kv_cache_space_gib=0)
    with pytest.raises(ValidationError):
        TransformersOptions(quantize=True)


# -- the vLLM exporter's writer and worker start-up (no vLLM engine needed) ---------------------------

def test_vllm_export_writes_weights_config_and_tokenizer(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(layers=3, vocab=len(tok), tokenizer=tok)
    model.drop_layers([2])
    ex = VllmExporter()
    details = ex.export(model, tmp_path, VllmOptions())
    names = set(details["files"])
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["architectures"] == ["LlamaForCausalLM"]
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert details["weight_bytes"] < model.num_parameters() * 4 * 0.6  # bf16: about half of fp32


def test_vllm_worker_start_failure_is_a_verify_error_naming_the_cause(tmp_path):
    """A directory that is no HF model makes the worker refuse it before vLLM is imported; the error says why."""
    from compressor.errors import VerifyError
    from compressor.runtime_process import open_isolated

    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(VerifyError) as info:
        open_isolated(VllmExporter(), tmp_path, VllmOptions(start_timeout_s=120), RuntimeSettings())
    message = str(info.value)
    assert "has no config.json" in message and "could not load" in message
    assert info.value.hint == "pass a directory written by the vllm exporter"  # the runtime's own hint
