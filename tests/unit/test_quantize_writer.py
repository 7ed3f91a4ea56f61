"""The compressed-tensors writer: configs compressed-tensors validates, exact integer round trips, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from compressor.api import StageContext
from compressor.errors import ExportError
from compressor.testing import random_windows, tiny_llama, tiny_tokenizer
from compressor_exporters.compressed_tensors_writer import (read_quantization_config, supports,
                                                            write_compressed_tensors)
from compressor_methods.quantize import RTN, QuantizeOptions
from compressor_methods.quantize.params import QUANT_ATTR


def _quantized(scheme: str, **options):
    tok = tiny_tokenizer()
    handle = tiny_llama(vocab=len(tok), tokenizer=tok)
    RTN().apply(handle, QuantizeOptions(scheme=scheme, **options), StageContext(log=lambda s: None))
    return handle


@pytest.mark.parametrize("scheme,fmt,bits,strategy,group", [("W4A16", "pack-quantized", 4, "group", 64),
                                                            ("W8A16", "pack-quantized", 8, "group", 64),
                                                            ("W8A8", "int-quantized", 8, "channel", None)])
def test_written_config_validates_with_compressed_tensors(tmp_path, scheme, fmt, bits, strategy, group):
    handle = _quantized(scheme)
    details = write_compressed_tensors(handle, tmp_path)
    assert details["format"] == fmt and details["scheme"] == scheme and details["compressed_tensors"] == "0.17.0"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(details["files"])
    assert details["bytes"] == sum((tmp_path / f).stat().st_size for f in details["files"])
    raw = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert raw["quant_method"] == "compressed-tensors" and raw["sparsity_config"] == {}  # vLLM refuses targets
    config = read_quantization_config(tmp_path)
    assert config.format == fmt and config.quantization_status == "compressed" and config.ignore == ["lm_head"]
    (group_scheme,) = config.config_groups.values()
    assert group_scheme.targets == ["Linear"]
    w = group_scheme.weights
    assert (w.num_bits, w.type, w.symmetric, w.strategy, w.group_size, w.dynamic) == (bits, "int", True, strategy,
                                                                                      group, False)
    a = group_scheme.input_activations
    if scheme == "W8A8":
        assert (a.num_bits, a.strategy, a.dynamic, a.symmetric) == (8, "token", True, True)
    else:
        assert a is None
    # the caller's model is untouched: still a plain fp32 model with its integer parameters attached
    lin = handle.model.model.layers[0].mlp.down_proj
    assert lin.weight.dtype == torch.float32 and hasattr(lin, QUANT_ATTR) and not hasattr(lin, "weight_packed")


def test_w4a16_reloads_in_transformers_with_the_fake_quantized_numerics(tmp_path):
    from transformers import AutoModelForCausalLM

    handle = _quantized("W4A16")
    write_compressed_tensors(handle, tmp_path, dtype="float32")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_slice("model.layers.0.mlp.down_proj.weight_packed").get_dtype() == "I32"
    assert "model.layers.0.mlp.down_proj.weight" not in names and "lm_head.weight" in names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = random_windows(2, 16, 256)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, handle.logits(ids))  # scales are bf16-exact: bit-identical


def test_w8a8_int8_weights_times_scales_equal_the_fake_quantized_weights(tmp_path):
    handle = _quantized("W8A8")
    write_compressed_tensors(handle, tmp_path, dtype="bfloat16")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        for i in range(handle.num_layers):
            for short, lin in handle.linears(i).items():
                prefix = next(n for n, m in handle.model.named_modules() if m is lin)
                q = f.get_tensor(f"{prefix}.weight")
                scale = f.get_tensor(f"{prefix}.weight_scale")
                assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and scale.shape == (lin.out_features, 1)
                assert torch.equal(q.float() * scale.float(), lin.weight), short


def test_unquantized_model_is_refused(tmp_path):
    handle = tiny_llama(tokenizer=tiny_tokenizer())
    assert not supports(handle)
    with pytest.raises(ExportError, match="no quantization"):
        write_compressed_tensors(handle, tmp_path)


def test_weights_changed_after_quantization_are_refused(tmp_path):
    handle = _quantized("W4A16")
    with torch.no_grad():
        handle.layers[1].self_attn.o_proj.weight.mul_(0.9)  # e.g. a prune stage after the quantize stage
    with pytest.raises(ExportError, match="no longer on the quantization grid"):
        write_compressed_tensors(handle, tmp_path)


def test_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(ExportError, match="unknown dtype"):
        write_compressed_tensors(_quantized("W4A16"), tmp_path, dtype="int8")
