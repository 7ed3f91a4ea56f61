"""The four supported families (Llama 3, Mistral, Qwen2, Qwen3) in every exporter's real runtime.

Tiny random models from a transformers config (no download), with random norm weights and biases
(`compressor.testing.tiny_family`). Each export is opened in its runtime's worker process (vLLM,
llama.cpp through llama-cpp-python, ONNX Runtime) and must give transformers' next-token
log-probabilities within the stated tolerance, the same top-1 token at every position, and the
same first 8 greedy tokens. `test_the_tolerance_catches_mishandled_tensors` shows that a dropped,
unpermuted or wrongly permuted q/k tensor moves the log-probabilities far beyond that tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compressor.api import RuntimeSettings
from compressor.runtime_process import open_isolated
from compressor.testing import FAMILIES, random_windows, tiny_family, tiny_tokenizer
from compressor.torch_runtime import TorchRuntime

PROMPTS = [[1, 72, 101, 108, 108, 111], [1, 200, 33, 7]]
GREEDY = 8
# max |log p(target)| difference: F32 GGUF and fp32 ONNX/vLLM agree with transformers to ~1e-5 here
TOLERANCE = {"onnx": 1e-3, "vllm": 1e-3, "gguf": 5e-3}
# what each family must be written as in llama.cpp (its own architecture, never another family's)
GGUF_ARCH = {"llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _exporter(fmt: str):
    if fmt == "onnx":
        from compressor_exporters.onnx import OnnxExporter, OnnxOptions

        return OnnxExporter(), OnnxOptions()
    if fmt == "gguf":
        from compressor_exporters.gguf import GgufExporter, GgufOptions

        return GgufExporter(), GgufOptions(outtype="F32")
    from compressor_exporters.vllm import VllmExporter, VllmOptions

    return VllmExporter(), VllmOptions(dtype="float32", start_timeout_s=400)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, tiny_family(request.param, tokenizer=tiny_tokenizer())


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "vllm"])
def test_family_runs_in_each_runtime_like_transformers(family, fmt, tmp_path, request):
    name, model = family
    if fmt == "gguf":
        request.getfixturevalue("needs_llama_cpp")
    if fmt == "vllm":
        request.getfixturevalue("needs_vllm")
    exporter, options = _exporter(fmt)
    exporter.check_model(model, options)
    details = exporter.export(model, tmp_path, options)
    if fmt == "gguf":
        assert details["arch"] == GGUF_ARCH[name]
    windows = random_windows(2, 20, model.config.vocab_size, seed=3).numpy()
    reference = TorchRuntime(model.model)
    want, want_tokens = reference.score(windows, top_k=5), reference.generate(PROMPTS, GREEDY)
    with open_isolated(exporter, tmp_path, options, RuntimeSettings(device="cpu", max_len=64, threads=2)) as rt:
        got, got_tokens = rt.score(windows, top_k=5), rt.generate(PROMPTS, GREEDY)
    assert np.abs(got.target_logprobs - want.target_logprobs).max() < TOLERANCE[fmt]
    np.testing.assert_array_equal(got.topk_ids[..., 0], want.topk_ids[..., 0])
    assert got_tokens == want_tokens


def _mutated(model, mutate) -> np.ndarray:
    clone = copy.deepcopy(model.model)
    with torch.no_grad():
        for layer in clone.model.layers:
            mutate(layer.self_attn)
    windows = random_windows(2, 20, model.config.vocab_size, seed=3).numpy()
    return TorchRuntime(clone).score(windows, top_k=5).target_logprobs


def _interleave_rows(linear, head_dim: int) -> None:
    """Permute each head's rows from halves to interleaved pairs (what Llama's GGUF layout does)."""
    rows = linear.weight.shape[0]
    order = torch.arange(rows).view(-1, 2, head_dim // 2).transpose(1, 2).reshape(-1)
    linear.weight.copy_(linear.weight[order])
    if linear.bias is not None:
        linear.bias.copy_(linear.bias[order])


def test_the_tolerance_catches_mishandled_tensors():
    """Dropped q/k biases or q/k norms, or a wrong RoPE permutation, move log-probs ≫ every tolerance."""
    qwen2 = tiny_family("qwen2", tokenizer=tiny_tokenizer())
    qwen3 = tiny_family("qwen3", tokenizer=tiny_tokenizer())
    windows = random_windows(2, 20, qwen2.config.vocab_size, seed=3).numpy()
    base2 = TorchRuntime(qwen2.model).score(windows, top_k=5).target_logprobs
    base3 = TorchRuntime(qwen3.model).score(windows, top_k=5).target_logprobs
    limit = 10 * max(TOLERANCE.values())
    dropped_bias = _mutated(qwen2, lambda a: (a.q_proj.bias.zero_(), a.k_proj.bias.zero_()))
    assert np.abs(dropped_bias - base2).max() > limit
    permuted = _mutated(qwen2, lambda a: (_interleave_rows(a.q_proj, qwen2.head_dim),
                                          _interleave_rows(a.k_proj, qwen2.head_dim)))
    assert np.abs(permuted - base2).max() > limit
    only_bias_permuted = _mutated(qwen2, lambda a: a.q_proj.bias.copy_(a.q_proj.bias.flip(0)))
    assert np.abs(only_bias_permuted - base2).max() > limit
    dropped_norms = _mutated(qwen3, lambda a: (a.q_norm.weight.fill_(1.0), a.k_norm.weight.fill_(1.0)))
    assert np.abs(dropped_norms - base3).max() > limit


CHAIN = """prune:
  - {method: layer_drop, options: {layers: 1}}
  - {method: magnitude, options: {structure: width, width_fraction: 0.25}}
  - {method: wanda, options: {sparsity: 0.5}}
"""


def test_family_goes_through_compress_build(family, tmp_path):
    """One depth, one width and one sparsity method per family, chained in one build (each stage works on
    what the one before left), exported to ONNX (which checks itself against PyTorch) and to a transformers
    directory that stock transformers reloads with the expected sizes and sparsity."""
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from compressor.cli import app

    name, model = family
    source = tmp_path / name
    model.save_hf(source)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(CHAIN)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--recipe", str(recipe), "--model", str(source), "--out", str(out),
                                      "--export", "onnx", "--export", "transformers", "--calib-samples", "2",
                                      "--calib-seq-len", "16", "--no-verify"])
    assert result.exit_code == 0, result.output
    reloaded = AutoModelForCausalLM.from_pretrained(out / "transformers")
    assert type(reloaded).__name__ == type(model.model).__name__
    assert reloaded.config.num_hidden_layers == model.num_layers - 1
    assert reloaded.config.intermediate_size == 96
    for layer in reloaded.model.layers:
        for lin in (layer.self_attn.q_proj, layer.mlp.down_proj):
            zeros = float((lin.weight == 0).float().mean())
            assert 0.45 <= zeros <= 0.55, zeros


@pytest.mark.parametrize("fmt", ["vllm", "gguf"])
def test_per_layer_sizes_of_a_qwen_model_are_refused_before_any_work(fmt, tmp_path):
    """vLLM's per-layer form (DeciLM) and GGUF's (`deci`) are Llama-only: exit 2 at preflight, naming onnx."""
    from typer.testing import CliRunner

    from compressor.cli import app
    from compressor.errors import ExitCode

    source = tmp_path / "qwen2"
    tiny_family("qwen2", tokenizer=tiny_tokenizer()).save_hf(source)
    result = CliRunner().invoke(app, ["build", "--model", str(source), "--out", str(tmp_path / "out"), "--method",
                                      "surgeon", "-O", "structure=structured", "--export", fmt, "--no-verify",
                                      "--dry-run"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "per-layer sizes" in result.stderr and "export onnx" in result.stderr


def _windowed_mistral(window: int):
    model = tiny_family("mistral", tokenizer=tiny_tokenizer())
    model.model.config.sliding_window = window
    for layer in model.model.model.layers:
        layer.self_attn.sliding_window = window
    return model


@pytest.mark.parametrize("fmt", ["onnx", "vllm"])
def test_mistral_sliding_window_is_honoured_past_the_window(fmt, tmp_path, request):
    """With an 8-token window and 24-token windows, the export must attend as transformers does (not fully)."""
    if fmt == "vllm":
        request.getfixturevalue("needs_vllm")
    model = _windowed_mistral(8)
    windows = random_windows(2, 24, model.config.vocab_size, seed=3).numpy()
    want = TorchRuntime(model.model).score(windows, top_k=5).target_logprobs
    full = TorchRuntime(tiny_family("mistral", tokenizer=tiny_tokenizer()).model).score(windows, top_k=5)
    assert np.abs(full.target_logprobs - want).max() > 0.1, "the window must matter in this test"
    exporter, options = _exporter(fmt)
    exporter.export(model, tmp_path, options)
    with open_isolated(exporter, tmp_path, options, RuntimeSettings(device="cpu", max_len=64, threads=2)) as rt:
        got = rt.score(windows, top_k=5).target_logprobs
    assert np.abs(got - want).max() < TOLERANCE[fmt]


def test_gguf_refuses_a_sliding_window_shorter_than_verify_and_caps_its_context(tmp_path):
    from typer.testing import CliRunner

    from compressor.cli import app
    from compressor.errors import ExitCode
    from compressor_exporters.gguf.writer import write_gguf

    model = _windowed_mistral(16)
    source = tmp_path / "mistral"
    model.save_hf(source)
    args = ["build", "--model", str(source), "--out", str(tmp_path / "out"), "--export", "gguf", "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--eval-seq-len", "32"])
    assert result.exit_code == ExitCode.USAGE and "sliding window of 16 tokens" in result.stderr, result.output
    details = write_gguf(model, tmp_path / "m.gguf", "F32")
    assert details["context_length"] == 16 and details["sliding_window_capped"] == 16


@pytest.mark.parametrize("name", ["mistral", "qwen2"])
def test_layer_drop_of_a_windowed_config_loads_in_vllm(name, tmp_path, needs_vllm):
    """After a layer drop, the per-layer window settings still describe the layers (Mistral: an 8-token window,
    scored past it; Qwen2: max_window_layers renumbered), and vLLM runs the export as transformers does."""
    model = tiny_family(name, layers=4, tokenizer=tiny_tokenizer())
    if name == "mistral":
        model.config.sliding_window = 8
    else:  # as Qwen2.5 ships: the window switched off, max_window_layers still set
        model.config.use_sliding_window, model.config.sliding_window, model.config.max_window_layers = False, 8, 2
    model.drop_layers([1])
    model.sync_config()
    if name == "qwen2":
        assert model.config.max_window_layers == 1
    windows = random_windows(2, 24, model.config.vocab_size, seed=3).numpy()
    want = TorchRuntime(model.model).score(windows, top_k=5).target_logprobs
    exporter, options = _exporter("vllm")
    exporter.export(model, tmp_path, options)
    with open_isolated(exporter, tmp_path, options, RuntimeSettings(device="cpu", max_len=64, threads=2)) as rt:
        got = rt.score(windows, top_k=5).target_logprobs
    assert np.abs(got - want).max() < TOLERANCE["vllm"]


def test_vllm_refuses_a_qwen2_with_windows_in_some_layers_only(tmp_path):
    from typer.testing import CliRunner

    from compressor.cli import app

    model = tiny_family("qwen2", layers=4, tokenizer=tiny_tokenizer())
    model.config.use_sliding_window, model.config.sliding_window, model.config.max_window_layers = True, 8, 2
    model.save_hf(tmp_path / "m")
    result = CliRunner().invoke(app, ["build", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "out"),
                                      "--method", "magnitude", "--export", "vllm", "--no-verify"])
    assert result.exit_code == 2, result.output
    assert "vLLM" in result.output and "cannot load" in result.output and "onnx" in result.output
    assert not (tmp_path / "out").exists()


def test_removing_a_kv_group_keeps_each_kept_rows_bias_qwen2():
    """Qwen2's q/k/v biases follow their rows when a KV group (a KV head and its query heads) is removed:
    every kept head computes exactly what it computed before, bias included."""
    from compressor.api import StageContext
    from compressor_methods.magnitude import Magnitude

    model = tiny_family("qwen2", layers=2, tokenizer=tiny_tokenizer())
    attn = model.layers[0].self_attn
    x = torch.randn(5, model.hidden_size)
    before = {n: getattr(attn, n)(x).detach() for n in ("q_proj", "k_proj", "v_proj")}
    Magnitude().apply(model, Magnitude.Options(structure="width", width_fraction=0.0, remove_kv_groups=1),
                      StageContext())
    attn = model.layers[0].self_attn
    hd = model.head_dim
    assert attn.k_proj.out_features == hd and attn.q_proj.out_features == 2 * hd  # 2 KV groups -> 1
    for name in ("q_proj", "k_proj", "v_proj"):
        after = getattr(attn, name)(x).detach()
        heads_before = before[name].reshape(5, -1, hd)
        heads_after = after.reshape(5, -1, hd)
        for h in range(heads_after.shape[1]):  # each kept head is one of the old heads, bias and all
            assert min(float((heads_after[:, h] - heads_before[:, g]).abs().max())
                       for g in range(heads_before.shape[1])) < 1e-6, (name, h)
        assert getattr(attn, name).bias is not None
