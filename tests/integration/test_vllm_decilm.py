"""Per-layer sizes in vLLM: DeciLM exports of a tiny and of the real SmolLM2 run like PyTorch float32.

Two vLLM engines are started (about 30-90 s each on 2 busy cores). vLLM is only ever
imported in the runtime's worker process (compressor.runtime_process), never in pytest's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compressor.api import RuntimeSettings
from compressor.metrics import perplexity_from_scores, top1_agreement
from compressor.runtime_process import open_isolated
from compressor.testing import random_windows
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.vllm import VllmExporter, VllmOptions
from decilm_models import keep_first_kv_head_only, keep_first_neurons, nonuniform_tiny

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.usefixtures("needs_vllm")]

# SmolLM2 (30 layers, FFN 1536, 3 KV heads): FFN widths differ per layer, one layer shares one KV
# head among its 9 query heads, one layer has no FFN; quality does not matter here
FFN_WIDTHS = {2: 1024, 9: 640, 17: 1200, 26: 384}
ONE_KV_HEAD = 12
NO_FFN = 20
PROMPTS = ["The capital of France is", "To be, or not to be, that is"]
NEW_TOKENS = 12
MUST_MATCH = 8  # greedy tokens that must agree exactly; later ones may flip at near-ties


def _open(artifact, max_len: int = 256):
    return open_isolated(VllmExporter(), artifact, VllmOptions(dtype="float32", start_timeout_s=400),
                         RuntimeSettings(device="cpu", max_len=max_len))


def _export(model, dest) -> dict:
    ex, opts = VllmExporter(), VllmOptions(dtype="float32")
    ex.check_model(model, opts)
    return ex.export(model, dest, opts)


def test_tiny_nonuniform_model_runs_in_vllm_like_pytorch(tmp_path):
    model = nonuniform_tiny()  # FFN 96 in layer 1, 1 KV head in 2, no attention in 3, no FFN in 4
    _export(model, tmp_path)
    prompts = [[1, 72, 101, 108, 108, 111], [1, 200, 33, 7]]
    windows = random_windows(3, 24, len(model.tokenizer), seed=11).numpy()
    want_tokens = TorchRuntime(model.model).generate(prompts, 10)
    want = TorchRuntime(model.model).score(windows, top_k=5)
    with _open(tmp_path, max_len=64) as rt:
        got_tokens = rt.generate(prompts, 10)
        got = rt.score(windows, top_k=5)
        info = rt.describe()
    assert info["dtype"] == "float32" and info["runtime"] == "vllm"
    assert got_tokens == want_tokens
    np.testing.assert_allclose(got.target_logprobs, want.target_logprobs, atol=1e-3)
    np.testing.assert_array_equal(got.topk_ids[..., 0], want.topk_ids[..., 0])


def test_smollm2_with_per_layer_sizes_generates_like_pytorch(smollm2, tmp_path, eval_windows):
    for index, width in FFN_WIDTHS.items():
        keep_first_neurons(smollm2, index, width)
    keep_first_kv_head_only(smollm2, ONE_KV_HEAD)
    from compressor.decilm_loading import make_ffn_noop

    make_ffn_noop(smollm2.layers[NO_FFN])
    assert not smollm2.is_uniform()
    details = _export(smollm2, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["tie_word_embeddings"]
    widths = [b["ffn"].get("intermediate_size", 0) for b in config["block_configs"]]
    assert widths == [FFN_WIDTHS.get(i, 0 if i == NO_FFN else 1536) for i in range(30)] == details["ffn_widths"]
    assert details["kv_heads"][ONE_KV_HEAD] == 1 and details["kv_heads"][0] == 3
    prompt_ids = [list(smollm2.tokenizer(p)["input_ids"]) for p in PROMPTS]
    torch_rt = TorchRuntime(smollm2.model)
    want = torch_rt.generate(prompt_ids, NEW_TOKENS)
    windows = eval_windows[:2, :128]
    want_scores = torch_rt.score(windows, top_k=10)
    with _open(tmp_path) as rt:
        got = rt.generate(prompt_ids, NEW_TOKENS)
        scores = rt.score(windows, top_k=10)
    for g, w in zip(got, want, strict=True):
        assert len(g) == NEW_TOKENS and g[:MUST_MATCH] == w[:MUST_MATCH], f"vLLM {g} vs PyTorch {w}"
    ppl_vllm, ppl_torch = perplexity_from_scores(scores), perplexity_from_scores(want_scores)
    assert math.isfinite(ppl_vllm) and abs(ppl_vllm / ppl_torch - 1) < 0.01, (ppl_vllm, ppl_torch)
    assert top1_agreement(want_scores, scores) > 0.98
