"""The README's torchrun command on the real SmolLM2: 2 gloo ranks give one process's perplexity within 0.1%."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# small calibration so that the two builds take under a minute each on 2 cores; the split is 2 + 2 windows
ARGS = ["-m", "smollm2-135m", "--method", "sparsegpt", "--sparsity", "0.5", "-e", "transformers",
        "--calib-samples", "4", "--calib-seq-len", "256", "--no-verify", "-q"]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _perplexity(export: Path, windows) -> float:
    from compressor.model_loading import load_model
    from compressor.torch_runtime import perplexity

    return perplexity(load_model(str(export), hash_files=False).model, windows)


def test_torchrun_two_ranks_match_one_process_perplexity(tmp_path, eval_windows, smollm2_original):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun gives each rank; the same for the single run
    one = subprocess.run([sys.executable, "-m", "compressor", "build", *ARGS, "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "-m", "compressor", "build", *ARGS,
                          "-o", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=900)
    assert two.returncode == 0, two.stderr
    stage = json.loads((tmp_path / "two" / "report.json").read_text())["stages"][0]["details"]
    assert stage["calibration"]["ranks"] == 2 and stage["calibration"]["samples"] == 4
    windows = eval_windows[:8, :256]
    ppl_one = _perplexity(tmp_path / "one" / "transformers", windows)
    ppl_two = _perplexity(tmp_path / "two" / "transformers", windows)
    from compressor.torch_runtime import perplexity

    dense = perplexity(smollm2_original.model, windows)
    assert ppl_one > dense * 1.02  # the pruning did something the comparison can see
    assert abs(ppl_two / ppl_one - 1) < 1e-3, (ppl_one, ppl_two)

