"""Quantization done by an exporter is measured against the full-precision original, not cancelled out.

The issue's acceptance runs: SmolLM2 exported by ONNX with `quantize: int8` and by GGUF with `outtype: Q4_0`,
each verified against the original exported at full precision by the same exporter. The
`verify.reference: same_options` switch is checked on a tiny model (tests/unit/test_cli_build.py).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

pytestmark = pytest.mark.slow
runner = CliRunner()
FAST = ["--eval-samples", "8", "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=32",
        "--set", "verify.latency.new_tokens=8", "--set", "verify.generate_tokens=8"]
# the lm_eval evaluator in the export's runtime (8 shakespeare_mc items: the GGUF build reports it against its
# reference; ONNX Runtime's agreement with lm-eval's transformers backend is tests/integration/test_lm_eval_runtimes.py,
# so the ONNX build, the slowest test of the run, does not repeat it)
EVALUATE = ["--evaluator", "lm_eval", "-V", "limit=8", "-V", "max_length=128", "-V", "batch_size=256"]
# README, "Quantization in ONNX Runtime": int8 (reduce_range) +79.4% on 8 eval windows (42.56 -> 76.36)
ONNX_INT8_PPL_PCT = 79.4


def _build(out, *args):
    return runner.invoke(app, ["build", "--model", "smollm2-135m", "--out", str(out), *FAST, *args])


def test_onnx_int8_fails_a_perplexity_budget_against_the_fp32_reference(tmp_path):
    out = tmp_path / "out"
    result = _build(out, "--export", "onnx", "-E", "quantize=int8", "--max-ppl-increase", "10")
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["onnx"]
    assert v["reference"]["mode"] == "full_precision"
    assert v["reference"]["options"]["quantize"] == "none" and v["reference"]["options"]["dtype"] == "float32"
    assert v["reference"]["differs_in"]["quantize"] == {"compressed": "int8", "reference": "none"}
    pct = v["metrics"]["ppl_increase_pct"]
    assert pct == pytest.approx(ONNX_INT8_PPL_PCT, abs=5.0), pct
    budget = v["budgets"][0]
    assert budget["name"] == "max_ppl_increase_pct" and budget["status"] == "fail"
    assert v["metrics"]["size_ratio"] < 0.4  # the int8 graph against the fp32 one
    assert "quantize: none (compressed: int8)" in (out / "report.md").read_text()


def _assert_task_accuracy_reported(v):
    """Both models' shakespeare_mc accuracy, measured in the export's runtime, with a paired drop."""
    task = v["metrics"]["tasks"]["shakespeare_mc.acc"]
    assert task["items"] == 8 and task["paired"] and task["drop_ci"][0] <= task["drop"] <= task["drop_ci"][1]
    assert 0 <= task["original"] <= 1 and 0 <= task["compressed"] <= 1


def test_gguf_q4_0_fails_a_tight_kl_budget_against_the_f16_reference(tmp_path):
    out = tmp_path / "out"
    result = _build(out, "--export", "gguf", "-E", "outtype=Q4_0", "--max-kl", "0.02", *EVALUATE)
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["gguf"]
    assert v["reference"]["options"]["outtype"] == "F16"
    assert v["metrics"]["kl"] > 0.02 and v["metrics"]["ppl_increase_pct"] > 3
    assert v["budgets"][0]["status"] == "fail"
    _assert_task_accuracy_reported(v)
