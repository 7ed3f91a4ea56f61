"""The `onnx` exporter on the real SmolLM2: a depth-pruned export runs in ONNX Runtime like PyTorch.

One export (26 layers, float32, about 1-2 minutes on 2 cores) is shared with the ONNX latency check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from compressor.api import RuntimeSettings
from compressor.metrics import perplexity_from_scores, top1_agreement
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.onnx import OnnxExporter, OnnxOptions

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "To be, or not to be, that is"]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def pruned_export(smollm2_original, smollm2_onnx_pruned):
    """The session's 26-layer float32 export, with the same pruned model in PyTorch to compare with."""
    import copy

    from compressor.model import ModelHandle

    model = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer,
                        smollm2_original.source)
    dest, details, dropped = smollm2_onnx_pruned
    model.drop_layers(dropped)
    return model, dest, OnnxExporter(), OnnxOptions(), details


def test_export_validates_and_describes_26_layers(pruned_export):
    model, dest, _, _, details = pruned_export
    assert details["layers"] == 26 and details["kv_heads"] == [3] * 26 and details["head_dim"] == 64
    assert details["validation"]["max_abs_diff"] <= 1e-3
    genai = json.loads((dest / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["num_hidden_layers"] == 26 and genai["num_key_value_heads"] == 3
    assert (dest / "tokenizer.json").is_file()


def test_pruned_export_generates_the_same_16_greedy_tokens(pruned_export):
    model, dest, ex, opts, _ = pruned_export
    prompts = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    want = TorchRuntime(model.model).generate(prompts, NEW_TOKENS)
    with ex.open_runtime(dest, opts, RuntimeSettings()) as rt:
        got = rt.generate(prompts, NEW_TOKENS)
    assert [len(g) for g in got] == [NEW_TOKENS] * len(PROMPTS)
    assert got == want


def test_pruned_export_scores_like_pytorch(pruned_export, eval_windows):
    model, dest, ex, opts, _ = pruned_export
    windows = eval_windows[:2, :256]
    want = TorchRuntime(model.model, batch_size=2).score(windows, top_k=5)
    with ex.open_runtime(dest, opts, RuntimeSettings()) as rt:
        got = rt.score(windows, top_k=5)
    assert np.abs(got.target_logprobs - want.target_logprobs).max() < 1e-3
    assert top1_agreement(want, got) > 0.99
    assert abs(perplexity_from_scores(got) / perplexity_from_scores(want) - 1) < 1e-4
