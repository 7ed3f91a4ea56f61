"""The genai_config.json an ONNX export writes is accepted by onnxruntime-genai, which then decodes like PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.testing import tiny_llama, tiny_tokenizer
from compressor.torch_runtime import TorchRuntime


@pytest.fixture
def og(needs_onnxruntime_genai):
    """The onnxruntime_genai module (required: a missing one skips, or fails under COMPRESSOR_REQUIRE_RUNTIMES=1)."""
    import onnxruntime_genai

    return onnxruntime_genai


def test_onnxruntime_genai_loads_the_export_and_matches_pytorch(og, tmp_path):
    from compressor_exporters.onnx.exporter import OnnxExporter

    tok = tiny_tokenizer()
    handle = tiny_llama(layers=3, hidden=128, heads=4, kv_heads=2, ffn=128, vocab=len(tok), tokenizer=tok)
    handle.drop_layers([1])  # a depth-pruned model is still uniform, so it gets a genai config
    exporter = OnnxExporter()
    details = exporter.export(handle, tmp_path, exporter.Options())
    assert (tmp_path / "genai_config.json").is_file() and details["genai_config"]
    model = og.Model(str(tmp_path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16, do_sample=False)
    generator = og.Generator(model, params)
    prompt = [5, 6, 7, 8]
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    generated = [int(t) for t in generator.get_sequence(0)][len(prompt):]
    expected = TorchRuntime(handle.model).generate([prompt], len(generated))[0]
    assert len(generated) == 12 and generated == expected
