"""A quantize stage followed by the vllm export writes a compressed-tensors checkpoint, not dense weights."""

from __future__ import annotations

import json

from compressor.api import StageContext


def test_rtn_then_vllm_export_writes_compressed_tensors(tmp_path):
    from compressor.testing import tiny_llama
    from compressor_exporters.vllm.exporter import VllmExporter
    from compressor_methods.quantize.methods import RTN as RtnMethod

    handle = tiny_llama(layers=2, hidden=128, heads=4, kv_heads=2, ffn=256, vocab=256)
    method = RtnMethod()
    method.apply(handle, method.Options(scheme="W8A8"), StageContext())
    exporter = VllmExporter()
    details = exporter.export(handle, tmp_path, exporter.Options())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert details["scheme"] == "W8A8"
