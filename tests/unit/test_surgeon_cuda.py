"""LLM Surgeon on CUDA gives what it gives on the CPU (run on a GPU machine: pytest -m gpu)."""

from __future__ import annotations

import copy

import pytest
import torch

from compressor.api import StageContext
from compressor.testing import random_windows, tiny_llama
from compressor_methods.surgeon import Surgeon, SurgeonOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("options", [{"sparsity": 0.5}, {"pattern": "2:4"},
                                     {"structure": "structured", "sparsity": 0.3, "kv_groups": True}])
@pytest.mark.parametrize("factors_on", ["cpu", "device"])
def test_cuda_matches_cpu(options, factors_on):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    windows = random_windows(8, 32, 256, seed=3).numpy()
    cpu = tiny_llama(layers=3, seed=7)
    gpu = copy.deepcopy(cpu)
    opts = {**options, "shots": 2, "max_correlate": 128}
    ctx = StageContext(calibration_loader=lambda: windows, log=lambda m: None)
    want = Surgeon().apply(cpu, SurgeonOptions(**opts), ctx)
    got = Surgeon().apply(gpu, SurgeonOptions(**opts, device="cuda", factors_on=factors_on), ctx)
    assert next(gpu.model.parameters()).device.type == "cpu"  # the model goes back where it was
    assert got["shots"][0]["loss_before"] == pytest.approx(want["shots"][0]["loss_before"], rel=1e-4)
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=0.02)
    assert got.get("peak_cuda_bytes", 0) > 0
    if "layer_sizes" in want:
        assert sum(s["intermediate_size"] for s in got["layer_sizes"]) == pytest.approx(
            sum(s["intermediate_size"] for s in want["layer_sizes"]), rel=0.05)
    else:
        assert got["achieved_sparsity"] == pytest.approx(want["achieved_sparsity"], abs=0.002)
